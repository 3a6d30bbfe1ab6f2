"""Progress lines while a training stage of ``mocbench memory`` runs: step, loss, speed and ETA.

A CPU training run takes minutes; without these lines the command is silent for all of them (the
Lightning progress bar is off in the shipped configs because it floods a log file). One line every
``interval_s`` seconds of wall time, one at the first step and one at the last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class TrainProgress(L.Callback):
    """Logs ``<prefix> step 400/1450 (28%)  loss 0.1423  5.8 it/s  ETA 3m01s`` through ``log``.

    The loss is the mean training loss of the steps since the previous line; speed and ETA are from
    the steps run in this process (a resumed run starts counting at its checkpoint's step)."""

    def __init__(self, prefix: str, log: Callable[[str], None], interval_s: float = 15.0):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.prefix, self._emit, self.interval_s = prefix, log, interval_s
        self._losses: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last = time.perf_counter()
        self._step0 = trainer.global_step
        self._losses = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss))
        step, total = trainer.global_step, trainer.max_steps
        now = time.perf_counter()
        first, last = step == self._step0 + 1, total > 0 and step >= total
        if not trainer.is_global_zero or not (first or last or now - self._last >= self.interval_s):
            return
        done = step - self._step0
        rate = done / max(now - self._t0, 1e-9)
        parts = [f"{self.prefix} step {step}/{total}" + (f" ({step / total:.0%})" if total > 0 else "")]
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4f}")
        parts.append(f"{rate:.1f} it/s")
        if total > 0:
            parts.append("done in " + _duration(now - self._t0) if last else "ETA " + _duration((total - step) / rate))
        self._emit("  ".join(parts))
        self._last, self._losses = now, []
