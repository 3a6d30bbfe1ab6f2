"""Held-out flow-matching loss of a checkpoint with a given attention backend (deterministic).

The validation split of the checkpoint's own data (ShapeShots seeds disjoint from training, or the
held-out clips of a folder source) is scored at fixed timesteps with fixed noise: noise for video
``i`` comes from a CPU generator seeded with ``noise_seed + i``, and every video is scored at every
timestep in ``TIMESTEPS``. Same checkpoint + backend -> the same number, so backends are compared
on identical inputs; the sampling (EMA) weights are used, as for the samples.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mocbench.tasks.flow import flow_loss
from mocbench.tasks.lightning_module import load_task
from mocbench.tasks.train import build_datamodule, torch_threads

TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # t = 1 is pure noise


@torch.no_grad()
def validation_loss(checkpoint: str | Path, backend: str, backend_params: dict | None = None, *,
                    num: int | None = None, noise_seed: int = 1234, batch_size: int = 8,
                    timesteps: tuple[float, ...] = TIMESTEPS) -> dict[str, float]:
    """``{"val_loss": mean, "val_loss_t0.1": ..., ...}`` over the held-out set at ``timesteps``."""
    overrides = [f"backend.name={backend}"] + [f"backend.params.{k}={v}" for k, v in (backend_params or {}).items()]
    task = load_task(str(checkpoint), overrides)  # the same overrides `mocbench sample` applied
    with torch_threads(task.cfg.threads):
        task.eval()
        dm = build_datamodule(task.cfg)
        dm.setup()
        items = [dm.val_set[i] for i in range(min(num or len(dm.val_set), len(dm.val_set)))]
        if not items:
            raise ValueError("val_loss: the checkpoint's data config has an empty validation split (data.val_size)")
        model = task.sampling_model
        per_t = {t: 0.0 for t in timesteps}
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            x0 = torch.stack([it["video"] for it in chunk])
            text = torch.stack([task.tokenizer.encode_shots(it["captions"], task.cfg.data.text_tokens) for it in chunk])
            noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(noise_seed + start + j))
                                 for j in range(len(chunk))])
            for t in timesteps:
                t_b = torch.full((len(chunk),), t)
                loss = flow_loss(lambda x, tt, text=text: task.velocity(model, x, tt, text), x0, t_b, noise)
                per_t[t] += float(loss) * len(chunk)
    out = {f"val_loss_t{t:g}": v / len(items) for t, v in per_t.items()}
    out["val_loss"] = sum(out.values()) / len(out)
    out["val_videos"] = len(items)
    return out


@torch.no_grad()
def loss_by_shot(task, x0: torch.Tensor, text: torch.Tensor, *, noise_seed: int = 1234, batch_size: int = 16,
                 timesteps: tuple[float, ...] = TIMESTEPS) -> list[float]:
    """Held-out flow loss per shot (mean over ``timesteps`` and videos) of a loaded task's sampling
    weights, on clean videos ``x0`` ``(N, S, F, 3, H, W)`` in [-1, 1] with caption ids ``text``
    ``(N, S, T)``; noise of video ``i`` seeded with ``noise_seed + i`` as in :func:`validation_loss`.
    With memory, later shots (which can look back at earlier ones) reach a lower loss."""
    model = task.sampling_model
    was_training = model.training
    model.eval()
    N, S = x0.shape[:2]
    total = torch.zeros(S, dtype=torch.float64)
    for start in range(0, N, batch_size):
        x = x0[start:start + batch_size]
        noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(noise_seed + start + j))
                             for j in range(len(x))])
        for t in timesteps:
            t_b = torch.full((len(x),), t)
            x_t = (1 - t) * x + t * noise
            v = task.velocity(model, x_t, t_b, text[start:start + batch_size])
            total += ((v.float() - (noise - x).float()) ** 2).mean(dim=(2, 3, 4, 5)).sum(0).double()
    model.train(was_training)
    return (total / (N * len(timesteps))).tolist()
