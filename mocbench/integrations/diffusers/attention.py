"""One stream self-attention layer of a diffusers model, answered by a mocbench backend.

The model's own processor computes q, k, v (projections, norms, RoPE: all the model's code) and
calls ``scaled_dot_product_attention``; :mod:`.processor` hands that call here. Tensor legend:
``q, k, v, out`` are ``(B, H, L, D)`` (SDPA's layout, the backends' too).

The call becomes a :class:`~mocbench.TokenLayout`: latent frames and tokens per frame from the
transformer's input (see :mod:`.specs`), caption length ``L - video tokens``, placement from the
model spec, ``shots`` equal runs of frames. The backend then runs ``prepare`` (routing) and
``forward`` (attention), and the stats of *that* plan are recorded (never a second routing).

Masks: a key-padding mask (``(B, 1, 1, L)``, ``(B, L)``, or ``(B, H, 1, L)`` equal over heads; bool or
0/-inf float) that hides only caption tokens (HunyuanVideo's) is handled exactly: every group of
samples with the same valid tokens runs un-padded, with a layout of its real caption length; padded
query rows are zeros (no valid token attends them, so the model's output does not depend on them;
Mochi's own processor does the same).
Any other mask, attention dropout, ``is_causal``, grouped-query heads or cross-attention is refused
with the reason (``UnsupportedError``); nothing falls back to another attention.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mocbench.backend import AttentionBackend, Plan, UnsupportedError
from mocbench.layout import VIDEO, TokenLayout
from mocbench.stats import AttentionStats, sum_stats

# on_call(layer name, q, k, v, plan, out): after every backend call (validation, per-layer fidelity)
OnCall = Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor, Plan, torch.Tensor], None]


@functools.lru_cache(maxsize=256)
def stream_layout(placement: str, shots: int, frames: int, tokens_per_frame: int, text_tokens: int) -> TokenLayout:
    """The layout of one stream; cached, so chunk tables are built once per shape, not per layer and call."""
    if frames % shots:
        raise ValueError(f"shots={shots} must divide the stream's {frames} latent frames")
    if placement == "none" and text_tokens:
        raise ValueError(f"this model's self-attention stream is video only, but the call has {text_tokens} tokens "
                         f"beyond the video's {frames} x {tokens_per_frame}")
    if shots == 1:
        return TokenLayout.single_shot(text_tokens=text_tokens, frames=frames, tokens_per_frame=tokens_per_frame,
                                       text_placement="front" if placement == "none" else placement)
    return TokenLayout.multi_shot(text_tokens=[text_tokens], frames=[frames // shots] * shots,
                                  tokens_per_frame=tokens_per_frame,
                                  text_placement="front" if placement == "none" else placement)


@dataclass
class LayerRecord:
    """What one layer's calls have cost so far: one stats entry per backend call (a call per sample group)."""

    stats: list[AttentionStats] = field(default_factory=list)
    prepare_s: float = 0.0
    forward_s: float = 0.0

    def total(self) -> AttentionStats:
        return sum_stats(self.stats)


class StreamAttention:
    """Answers the SDPA calls of one stream self-attention module (``name``) with ``backend``."""

    def __init__(self, name: str, backend: AttentionBackend, *, placement: str, shots: int,
                 grid: Callable[[], tuple[int, int]], record: LayerRecord, timing: bool = False,
                 on_call: OnCall | None = None):
        self.name, self.backend, self.placement, self.shots = name, backend, placement, shots
        self.grid, self.record, self.timing, self.on_call = grid, record, timing, on_call

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False, *, training: bool = False) -> torch.Tensor:
        q, k, v = query, key, value
        self._refuse_unsupported(q, k, v, dropout_p, is_causal, enable_gqa)
        frames, tokens_per_frame = self.grid()
        B, _, L, _ = q.shape
        video = frames * tokens_per_frame
        if L < video:
            raise ValueError(f"layer {self.name}: the attention call has {L} tokens, fewer than the latent video's "
                             f"{frames} frames x {tokens_per_frame} tokens; is this module's spec right?")
        full = stream_layout(self.placement, self.shots, frames, tokens_per_frame, L - video)
        valid = None if attn_mask is None else self._valid_keys(attn_mask, B, q.shape[1], full)
        if valid is None or bool(valid.all()):
            return self._run(q, k, v, full, scale, training)
        out = q.new_zeros(q.shape)
        groups, group_of = torch.unique(valid.cpu(), dim=0, return_inverse=True)
        for g, keep in enumerate(groups):
            rows = (group_of == g).nonzero().squeeze(1).to(q.device)
            keep_idx = keep.nonzero().squeeze(1).to(q.device)
            layout = stream_layout(self.placement, self.shots, frames, tokens_per_frame, len(keep_idx) - video)
            qg, kg, vg = (t.index_select(0, rows).index_select(2, keep_idx) for t in (q, k, v))
            og = self._run(qg, kg, vg, layout, scale, training)
            out = out.index_copy(0, rows, q.new_zeros((len(rows), *q.shape[1:])).index_copy(2, keep_idx, og))
        return out

    def _run(self, q, k, v, layout: TokenLayout, scale, training: bool) -> torch.Tensor:
        t0 = self._clock(q)
        plan = self.backend.prepare(q, k, layout, scale=scale, training=training)
        t1 = self._clock(q)
        out = self.backend.forward(q, k, v, plan)
        t2 = self._clock(q)
        self.record.stats.append(self.backend.plan_stats(plan))
        if self.timing:
            self.record.prepare_s += t1 - t0
            self.record.forward_s += t2 - t1
        if self.on_call is not None:
            self.on_call(self.name, q, k, v, plan, out)
        return out

    def _clock(self, q: torch.Tensor) -> float:
        if self.timing and q.device.type == "cuda":
            torch.cuda.synchronize(q.device)
        return time.perf_counter() if self.timing else 0.0

    def _refuse_unsupported(self, q, k, v, dropout_p, is_causal, enable_gqa) -> None:
        reasons = []
        if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
            reasons.append(f"not self-attention over one stream: q, k, v have shapes {tuple(q.shape)}, "
                           f"{tuple(k.shape)}, {tuple(v.shape)} (grouped-query heads and cross-attention are refused;"
                           f" enable_gqa={enable_gqa})")
        if dropout_p:
            reasons.append(f"attention dropout (dropout_p={dropout_p}); only 0.0 is supported")
        if is_causal:
            reasons.append("is_causal=True; a backend's pattern is defined by its layout and params, not a causal mask")
        if reasons:
            raise UnsupportedError(self.backend.name, [f"layer {self.name}: {r}" for r in reasons])

    def _valid_keys(self, mask: torch.Tensor, batch: int, heads: int, layout: TokenLayout) -> torch.Tensor:
        """``(B, L)`` bool of the keys a key-padding ``mask`` lets every query see; refuses any other mask."""
        L = layout.num_tokens
        m = mask[:, None, None, :] if mask.dim() == 2 else mask
        if m.dim() != 4 or m.shape[0] not in (1, batch) or m.shape[1] not in (1, heads) or m.shape[2] != 1 \
                or m.shape[3] != L:
            raise UnsupportedError(self.backend.name, [
                (f"layer {self.name}: attention mask of shape {tuple(mask.shape)}; only a key-padding mask of shape "
                 f"(B, 1, 1, L), (B, H, 1, L) or (B, L) with B={batch}, H={heads}, L={L} is supported")])
        if not bool((m == m[:, :1]).all()):
            raise UnsupportedError(self.backend.name, [
                f"layer {self.name}: the attention mask differs between heads; only key-padding masks are supported"])
        m = m[:, :1]
        if m.dtype == torch.bool:
            valid = m
        else:
            valid = m == 0
            if not bool((valid | (m == float("-inf"))).all()):
                raise UnsupportedError(self.backend.name, [
                    (f"layer {self.name}: a float attention mask with values other than 0 and -inf is an attention "
                     "bias, not padding; only key-padding masks are supported")])
        valid = valid.reshape(-1, L).expand(batch, L)
        is_video = (layout.modality == VIDEO).to(valid.device)
        if bool((~valid & is_video).any()):
            raise UnsupportedError(self.backend.name, [
                f"layer {self.name}: the attention mask hides video tokens; only padding of the caption is supported"])
        return valid
