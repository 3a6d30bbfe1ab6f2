"""Full-depth figures from a shallower model: per-block cost measured, the missing blocks extrapolated.

The CPU configs run a model at full width but with a few of its blocks. While it runs, forward hooks on
every block (:class:`BlockClock`, synchronised on CUDA) measure the seconds spent in each block list —
HunyuanVideo's dual- and single-stream blocks apart — as a fraction ``f_k`` of the whole forward, and::

    extrapolated_model_ms = model_ms * (1 + sum_k f_k * (N_k / n_k - 1))

with ``n_k`` blocks of list ``k`` measured and ``N_k`` at full depth (the rest of the forward —
embeddings, output head — is counted once). Attention and routing time scale with the number of stream
attention layers (one per block, all of the same shape). These are estimates from per-block cost, not
measurements: their columns are named ``extrapolated_*`` and the tables say so.
"""

from __future__ import annotations

import statistics
import time

import torch


class BlockClock:
    """Seconds spent inside the blocks of each named ``ModuleList`` of ``model`` while active (a context)."""

    def __init__(self, model: torch.nn.Module, lists: dict[str, str], device: str | torch.device):
        self.model, self.lists, self.device = model, lists, torch.device(device)
        self.seconds = {key: 0.0 for key in lists}
        self._hooks: list = []
        self._start = 0.0

    def __enter__(self) -> BlockClock:
        for key, attr in self.lists.items():
            for block in getattr(self.model, attr):
                self._hooks.append(block.register_forward_pre_hook(self._begin))
                self._hooks.append(block.register_forward_hook(lambda m, a, o, key=key: self._end(key)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _begin(self, module, args) -> None:
        self._start = self._now()

    def _end(self, key: str) -> None:
        self.seconds[key] += self._now() - self._start


def full_depth(arch: dict, lists: dict[str, str]) -> dict[str, int]:
    """Blocks per depth key of the architecture config (its full depth)."""
    return {key: int(arch[key]) for key in lists if key in arch}


def extrapolate(model_ms: float, fractions: list[dict[str, float]], measured: dict[str, int],
                full: dict[str, int]) -> tuple[float | None, str]:
    """``(full-depth ms, "")``, or ``(None, why not)``; ``fractions`` are per-forward ``{key: f_k}``."""
    if measured == full:
        return None, "measured at full depth"
    missing = [k for k in full if full[k] > measured.get(k, 0) == 0]
    if missing:
        return None, f"no block of {missing} was measured, so their cost is unknown"
    if not fractions:
        return None, "no per-block timing was recorded"
    factor = 1.0
    for key, n_full in full.items():
        n = measured.get(key, 0)
        if n:
            factor += statistics.median(f[key] for f in fractions) * (n_full / n - 1)
    return model_ms * factor, ""
