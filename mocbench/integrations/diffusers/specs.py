"""Model specs: what mocbench must know about a diffusers video transformer to run a backend in it.

A :class:`ModelSpec` names the transformer classes it serves and says

* where the caption sits in the stream that self-attention sees: ``"front"`` (CogVideoX: text then
  video), ``"back"`` (HunyuanVideo, Mochi: video then text, text padded per sample) or ``"none"``
  (Wan and the models built on its code: video only; text enters by cross-attention, which stays the
  model's own);
* the axes of the latent video the transformer takes (``"BFCHW"`` or ``"BCFHW"``) and its patch sizes
  ``(p_t, p_h, p_w)`` read from the model's config, so the stream's frames and tokens per frame follow
  from the input shape (frame-major, row-major: the order every built-in model flattens its patches);
  or ``"tokens"``: the transformer takes patch tokens ``(B, L, C)`` and the grid as its ``num_frames``,
  ``height``, ``width`` keyword arguments (LTX-Video; divided by the patch sizes, ``(1, 1, 1)`` there);
* which attention modules run self-attention over the whole stream (``*`` in a pattern is a layer
  index): only those get the backend.

Built-in specs cover CogVideoX, ConsisID and EasyAnimate (caption first), HunyuanVideo and Mochi (caption
last), Wan (plus SkyReels-V2, which shares Wan's attention code), Allegro, Cosmos and LTX-Video (video only);
:func:`register_model` adds others.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

TextPlacement = Literal["front", "back", "none"]
TEXT_PLACEMENTS = ("front", "back", "none")
INPUT_AXES = ("BFCHW", "BCFHW", "tokens")
GRID_ARGUMENTS = ("num_frames", "height", "width")  # input_axes="tokens": the forward's grid keyword arguments


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """How a family of diffusers video transformers lays out its attention stream (see module doc)."""

    name: str
    classes: tuple[str, ...]
    text_placement: TextPlacement
    input_axes: Literal["BFCHW", "BCFHW", "tokens"]
    patch_sizes: Callable[[Any], tuple[int, int, int]]  # model config -> (p_t, p_h, p_w)
    self_attention: tuple[str, ...]  # module-name patterns; "*" stands for a layer index
    input_name: str = "hidden_states"  # forward argument holding the latent video (else the first positional)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelSpec name must be a non-empty string, got {self.name!r}")
        if isinstance(self.classes, str) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"ModelSpec classes must be a non-empty tuple of class names, got {self.classes!r}")
        if self.text_placement not in TEXT_PLACEMENTS:
            raise ValueError(f"ModelSpec text_placement must be one of {TEXT_PLACEMENTS}, got {self.text_placement!r}")
        if self.input_axes not in INPUT_AXES:
            raise ValueError(f"ModelSpec input_axes must be one of {INPUT_AXES}, got {self.input_axes!r}")
        if not callable(self.patch_sizes):
            raise TypeError(f"ModelSpec patch_sizes must be a function config -> (p_t, p_h, p_w), "
                            f"got {self.patch_sizes!r}")
        if isinstance(self.self_attention, str) or not self.self_attention:
            raise ValueError(f"ModelSpec self_attention must be a non-empty tuple of module-name patterns, "
                             f"got {self.self_attention!r}")

    def matches_module(self, module_name: str) -> bool:
        """Whether ``module_name`` (from ``named_modules()``) is a stream self-attention module."""
        return any(re.fullmatch(p, module_name) for p in self._patterns())

    def _patterns(self) -> list[str]:
        return [r"\d+".join(re.escape(part) for part in pattern.split("*")) for pattern in self.self_attention]

    def grid_of_call(self, config: Any, args: tuple, kwargs: dict) -> tuple[int, int]:
        """``(latent frames, tokens per frame)`` of a call of the transformer with ``args`` / ``kwargs``."""
        if self.input_axes == "tokens":
            missing = [k for k in GRID_ARGUMENTS if k not in kwargs]
            if missing:
                raise ValueError(f"{self.name}: the transformer call has no keyword argument(s) {missing}; its token "
                                 f"grid comes from {', '.join(GRID_ARGUMENTS)}")
            f, h, w = (int(kwargs[k]) for k in GRID_ARGUMENTS)
            p_t, p_h, p_w = (int(p) for p in self.patch_sizes(config))
            return self._checked(f // p_t, (h // p_h) * (w // p_w), f"grid (num_frames, height, width) = {(f, h, w)}",
                                 (p_t, p_h, p_w))
        video = kwargs[self.input_name] if self.input_name in kwargs else (args[0] if args else None)
        if not hasattr(video, "shape"):
            raise TypeError(f"{self.name}: the transformer call has no {self.input_name!r} tensor to read the video "
                            f"shape from")
        return self.video_grid(config, tuple(video.shape))

    def video_grid(self, config: Any, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(latent frames, tokens per frame)`` of the stream for a latent video of ``shape``."""
        if len(shape) != 5:
            raise ValueError(f"{self.name}: the transformer's {self.input_name} must be a 5-D latent video "
                             f"({self.input_axes}), got shape {tuple(shape)}")
        sizes = dict(zip(self.input_axes, shape))
        p_t, p_h, p_w = (int(p) for p in self.patch_sizes(config))
        return self._checked(sizes["F"] // p_t, (sizes["H"] // p_h) * (sizes["W"] // p_w),
                             f"a latent video of shape {tuple(shape)} ({self.input_axes})", (p_t, p_h, p_w))

    def _checked(self, frames: int, tokens_per_frame: int, what: str, patches: tuple[int, int, int]) -> tuple[int, int]:
        if frames < 1 or tokens_per_frame < 1:
            raise ValueError(f"{self.name}: {what} with patch sizes (p_t, p_h, p_w) = {patches} has no patches")
        return frames, tokens_per_frame


def _same_patch(config) -> tuple[int, int, int]:  # patch_size_t: None or absent (ConsisID) is 1
    return (getattr(config, "patch_size_t", None) or 1, config.patch_size, config.patch_size)


def _spatial_patch(config) -> tuple[int, int, int]:
    return (1, config.patch_size, config.patch_size)


def _tuple_patch(config) -> tuple[int, int, int]:
    return tuple(config.patch_size)


def _grid_counts_patches(config) -> tuple[int, int, int]:  # LTX: num_frames/height/width are the token grid
    return (1, 1, 1)


_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Make ``spec`` known to :func:`apply_backend`; a name or class already registered needs ``replace=True``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model takes a ModelSpec, got {type(spec).__name__}")
    if not replace:
        if spec.name in _SPECS:
            raise ValueError(f"a model spec named {spec.name!r} is registered already (pass replace=True)")
        taken = {c: s.name for s in _SPECS.values() for c in s.classes}
        clash = sorted(c for c in spec.classes if c in taken)
        if clash:
            raise ValueError(f"classes {clash} already belong to spec {taken[clash[0]]!r} (pass replace=True)")
    else:
        for other in [s for s in _SPECS.values() if s.name != spec.name and set(s.classes) & set(spec.classes)]:
            del _SPECS[other.name]
    _SPECS[spec.name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """Every registered spec (built-ins first)."""
    return list(_SPECS.values())


def spec_for(transformer: Any) -> ModelSpec:
    """The spec serving ``transformer``'s class (or a base class of it); a clear error if there is none."""
    for cls in type(transformer).__mro__:
        for spec in _SPECS.values():
            if cls.__name__ in spec.classes:
                return spec
    known = ", ".join(c for s in _SPECS.values() for c in s.classes)
    raise ValueError(
        f"no mocbench model spec for {type(transformer).__name__}: mocbench must know its token order, input axes, "
        f"patch sizes and which attention modules see the whole stream. Register one with "
        f"mocbench.integrations.diffusers.register_model(ModelSpec(name=..., classes=({type(transformer).__name__!r},), "
        f"text_placement='front'|'back'|'none', input_axes='BCFHW'|'BFCHW'|'tokens', "
        f"patch_sizes=lambda config: (p_t, p_h, p_w), "
        f"self_attention=('blocks.*.attn1',))). Built-in: {known}"
    )


for _spec in (
    ModelSpec(name="cogvideox", classes=("CogVideoXTransformer3DModel",), text_placement="front",
              input_axes="BFCHW", patch_sizes=_same_patch, self_attention=("transformer_blocks.*.attn1",)),
    ModelSpec(name="hunyuan_video", classes=("HunyuanVideoTransformer3DModel",), text_placement="back",
              input_axes="BCFHW", patch_sizes=_same_patch,
              self_attention=("transformer_blocks.*.attn", "single_transformer_blocks.*.attn")),
    ModelSpec(name="mochi", classes=("MochiTransformer3DModel",), text_placement="back",
              input_axes="BCFHW", patch_sizes=_spatial_patch, self_attention=("transformer_blocks.*.attn1",)),
    ModelSpec(name="wan", classes=("WanTransformer3DModel", "SkyReelsV2Transformer3DModel"), text_placement="none",
              input_axes="BCFHW", patch_sizes=_tuple_patch, self_attention=("blocks.*.attn1",)),
    # CogVideoX's block with an identity-preserving face branch (separate modules, not attn1)
    ModelSpec(name="consisid", classes=("ConsisIDTransformer3DModel",), text_placement="front",
              input_axes="BFCHW", patch_sizes=_same_patch, self_attention=("transformer_blocks.*.attn1",)),
    # caption (and T5 caption, when given) concatenated in front of the video inside attn1; patches per frame
    ModelSpec(name="easyanimate", classes=("EasyAnimateTransformer3DModel",), text_placement="front",
              input_axes="BCFHW", patch_sizes=_spatial_patch, self_attention=("transformer_blocks.*.attn1",)),
    ModelSpec(name="allegro", classes=("AllegroTransformer3DModel",), text_placement="none",
              input_axes="BCFHW", patch_sizes=_same_patch, self_attention=("transformer_blocks.*.attn1",)),
    ModelSpec(name="cosmos", classes=("CosmosTransformer3DModel",), text_placement="none",
              input_axes="BCFHW", patch_sizes=_tuple_patch, self_attention=("transformer_blocks.*.attn1",)),
    # LTX-Video: packed patch tokens in, the rotary grid (frame-major) given as num_frames / height / width
    ModelSpec(name="ltx_video", classes=("LTXVideoTransformer3DModel",), text_placement="none",
              input_axes="tokens", patch_sizes=_grid_counts_patches, self_attention=("transformer_blocks.*.attn1",)),
):
    register_model(_spec)
