"""Real diffusers video transformers from architecture configs, with random weights and random inputs.

An architecture config (``configs/models/*.json``) is a diffusers model config: ``"_class_name"`` plus
the constructor's hyper-parameters (keys starting with ``_`` are notes). :func:`build_transformer`
builds that class with random weights (seeded; nothing is downloaded), optionally shallower, directly in
the target dtype on the target device (never float32 first: CogVideoX-5B would need 20 GB more for that),
keeping the modules diffusers keeps in float32 (``_keep_in_fp32_modules``) in float32 as ``from_pretrained``
does. :data:`BLOCK_LISTS` names each built-in model's block lists per depth key (full-depth extrapolation).
:func:`random_inputs` draws the forward arguments of a built-in model at a given latent shape:
``frames, height, width`` are *latent* sizes (after the VAE, before patching), ``text_tokens`` the
caption length, ``text_valid`` the real caption length per sample (the rest is padding; HunyuanVideo
and Mochi mask it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mocbench.integrations.diffusers.specs import spec_for

DEPTH_KEYS = ("num_layers", "num_single_layers")  # HunyuanVideo has dual- and single-stream layers
# per built-in spec: depth key -> the ModuleList of the blocks it counts (each block has one stream self-attention)
BLOCK_LISTS: dict[str, dict[str, str]] = {
    "cogvideox": {"num_layers": "transformer_blocks"},
    "hunyuan_video": {"num_layers": "transformer_blocks", "num_single_layers": "single_transformer_blocks"},
    "mochi": {"num_layers": "transformer_blocks"},
    "wan": {"num_layers": "blocks"},
}


def load_architecture(path: str | Path) -> dict[str, Any]:
    """The config dict of ``path``; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"architecture config {str(path)!r} does not exist")
    try:
        arch = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"architecture config {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(arch, dict) or not isinstance(arch.get("_class_name"), str):
        raise TypeError(f"architecture config {str(path)!r} needs a '_class_name' (a diffusers model class)")
    return arch


def build_transformer(arch: dict[str, Any], *, depth: dict[str, int] | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``arch``'s diffusers class with random weights (``torch.manual_seed(seed)``; the values depend on the
    device they are drawn on), created in ``dtype`` on ``device``, in eval mode.

    ``depth`` overrides ``num_layers`` / ``num_single_layers`` (shallower models at full width)."""
    import diffusers

    name = arch["_class_name"]
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise TypeError(f"'_class_name' {name!r} is not a diffusers model class (diffusers {diffusers.__version__})")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
    kwargs = {k: v for k, v in arch.items() if not k.startswith("_")}
    kwargs.update(check_depth(name, kwargs, depth))
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype, on device: no float32 copy ever exists
    try:
        with torch.device(device):
            model = cls(**kwargs)
    finally:
        torch.set_default_dtype(default)
    if dtype != torch.float32:
        _keep_in_fp32(model)
    return model.eval()


def check_depth(name: str, arch_kwargs: dict[str, Any], depth: dict[str, int] | None) -> dict[str, int]:
    """``depth`` after checking that every key is a depth key of this architecture and every value an int >= 0."""
    for key, value in (depth or {}).items():
        if key not in DEPTH_KEYS or key not in arch_kwargs:
            have = [k for k in DEPTH_KEYS if k in arch_kwargs]
            raise ValueError(f"depth override {key!r} does not apply to {name}; it has {have}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an int >= 0, got {value!r}")
    return dict(depth or {})


def _keep_in_fp32(model: torch.nn.Module) -> None:
    """Parameters and buffers of ``_keep_in_fp32_modules`` back in float32, matched as ``from_pretrained``
    matches them (a module name among the dotted name's parts)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for module_name, module in model.named_modules():
        for tensor_name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            full = f"{module_name}.{tensor_name}" if module_name else tensor_name
            if tensor.is_floating_point() and any(k in full.split(".") for k in keep):
                tensor.data = tensor.data.to(torch.float32)


def random_inputs(model: torch.nn.Module, *, batch: int, frames: int, height: int, width: int, text_tokens: int,
                  text_valid: list[int] | None = None, timestep: int = 500, seed: int = 0,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Seeded forward arguments of a built-in model at latent ``(frames, height, width)``."""
    spec = spec_for(model)
    if spec.name not in _INPUTS:
        raise ValueError(f"random inputs are built for {sorted(_INPUTS)}, not spec {spec.name!r}")
    for key, value in (("batch", batch), ("frames", frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    if isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens must be an int >= 1, got {text_tokens!r}")
    valid = [text_tokens] * batch if text_valid is None else list(text_valid)
    if len(valid) != batch or not all(isinstance(n, int) and 0 <= n <= text_tokens for n in valid):
        raise ValueError(f"text_valid needs one int in [0, {text_tokens}] per sample (batch={batch}), got {text_valid}")
    if valid != [text_tokens] * batch and spec.name not in ("hunyuan_video", "mochi"):
        raise ValueError(f"text_valid (caption padding) applies to HunyuanVideo and Mochi, not {spec.name}")
    p_t, p_h, p_w = spec.patch_sizes(model.config)
    for key, size, p in (("frames", frames, p_t), ("height", height, p_h), ("width", width, p_w)):
        if size % p:
            raise ValueError(f"latent {key}={size} must be a multiple of the patch size {p} of {spec.name}")
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(text_tokens)[None, :] < torch.tensor(valid)[:, None]).long()
    shape = {"batch": batch, "frames": frames, "height": height, "width": width, "text_tokens": text_tokens}
    inputs = _INPUTS[spec.name](model.config, g, mask=mask, **shape)
    inputs["timestep"] = torch.full((batch,), timestep, dtype=torch.long)
    return {k: _to(v, dtype, device) for k, v in inputs.items()}


def _to(value, dtype, device):
    if isinstance(value, tuple):
        return tuple(_to(v, dtype, device) for v in value)
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    return value


def _cogvideox(config, g, *, mask, batch, frames, height, width, text_tokens) -> dict:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    out = {"hidden_states": torch.randn(batch, frames, config.in_channels, height, width, generator=g),
           "encoder_hidden_states": torch.randn(batch, text_tokens, config.text_embed_dim, generator=g)}
    if config.use_rotary_positional_embeddings:
        p_t = config.patch_size_t or 1
        grid = (height // config.patch_size, width // config.patch_size)
        out["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=((0, 0), grid), grid_size=grid,
            temporal_size=frames // p_t)
    return out


def _hunyuan_video(config, g, *, mask, batch, frames, height, width, text_tokens) -> dict:
    out = {"hidden_states": torch.randn(batch, config.in_channels, frames, height, width, generator=g),
           "encoder_hidden_states": torch.randn(batch, text_tokens, config.text_embed_dim, generator=g),
           "encoder_attention_mask": mask,
           "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g)}
    if config.guidance_embeds:
        out["guidance"] = torch.full((batch,), 6000.0)  # distilled guidance scale 6.0, x1000 as the pipeline does
    return out


def _mochi(config, g, *, mask, batch, frames, height, width, text_tokens) -> dict:
    return {"hidden_states": torch.randn(batch, config.in_channels, frames, height, width, generator=g),
            "encoder_hidden_states": torch.randn(batch, text_tokens, config.text_embed_dim, generator=g),
            "encoder_attention_mask": mask}


def _wan(config, g, *, mask, batch, frames, height, width, text_tokens) -> dict:
    return {"hidden_states": torch.randn(batch, config.in_channels, frames, height, width, generator=g),
            "encoder_hidden_states": torch.randn(batch, text_tokens, config.text_dim, generator=g)}


_INPUTS: dict[str, Callable[..., dict]] = {
    "cogvideox": _cogvideox, "hunyuan_video": _hunyuan_video, "mochi": _mochi, "wan": _wan,
}
