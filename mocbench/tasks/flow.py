"""Rectified flow (flow matching): the training loss and the Euler / Heun ODE samplers.

Convention: ``x_t = (1 - t) x_0 + t * noise`` with ``t`` in ``[0, 1]``; ``t = 0`` is data and
``t = 1`` is noise. The model predicts the velocity ``v = noise - x_0``; sampling integrates
``dx/dt = v`` from ``t = 1`` to ``t = 0``. Classifier-free guidance mixes the conditional and
unconditional (``<null>`` caption) velocities: ``v_u + w (v_c - v_u)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t_b) -> v
T_MIN = 0.05  # x-prediction divides by t; clamp it near the data end (as JiT does)


def velocity_from_output(out: torch.Tensor, x_t: torch.Tensor, t_b: torch.Tensor, prediction: str) -> torch.Tensor:
    """The velocity implied by the network output: ``v`` itself, or ``(x_t - x0_hat) / t`` for
    ``x``-prediction. Predicting the clean video (Li & He, "Back to Basics", 2025) works far better
    than predicting v or noise when a pixel patch has about as many values as the model is wide."""
    if prediction == "v":
        return out
    if prediction == "x":
        t = t_b.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype).clamp(min=T_MIN)
        return (x_t - out) / t
    raise ValueError(f"prediction must be 'x' or 'v', got {prediction!r}")


def sample_timesteps(batch: int, kind: str, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """``(B,)`` training times: ``logit_normal`` (``sigmoid(N(mean, std))``, SD3; ``mean > 0`` favours
    noisier times, as JiT does for pixel-space models) or ``uniform``."""
    if kind == "uniform":
        return torch.rand(batch, generator=generator).to(device)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator)).to(device)
    raise ValueError(f"timestep sampling must be 'logit_normal' or 'uniform', got {kind!r}")


def flow_loss(model_v: Velocity, x0: torch.Tensor, t_b: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and true velocity at ``x_t``."""
    t = t_b.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    x_t = (1 - t) * x0 + t * noise
    v = model_v(x_t, t_b)
    return torch.mean((v.float() - (noise - x0).float()) ** 2)


def guided(cond: Velocity, uncond: Velocity | None, guidance: float) -> Velocity:
    """The CFG velocity; plain ``cond`` when ``guidance == 1`` or there is no ``uncond``."""
    if uncond is None or guidance == 1.0:
        return cond
    return lambda x, t: uncond(x, t) + guidance * (cond(x, t) - uncond(x, t))


@torch.no_grad()
def integrate(velocity: Velocity, noise: torch.Tensor, steps: int, sampler: str = "euler") -> torch.Tensor:
    """Solve the flow ODE from ``noise`` (t=1) to data (t=0) in ``steps`` uniform steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sampler not in ("euler", "heun"):
        raise ValueError(f"sampler must be 'euler' or 'heun', got {sampler!r}")
    B = noise.shape[0]
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t  # negative
        v = velocity(x, t.expand(B))
        x_euler = x + dt * v
        if sampler == "heun" and i < steps - 1:  # trapezoid correction (not at t=0)
            v2 = velocity(x_euler, t_next.expand(B))
            x = x + dt * 0.5 * (v + v2)
        else:
            x = x_euler
    return x
