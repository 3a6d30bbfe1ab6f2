"""``apply_backend`` / ``use_backend``: put a registry backend into a diffusers video transformer.

Every stream self-attention module named by the model's spec gets a wrapper of its own processor
(:mod:`.processor`); a forward pre-hook on the transformer reads the latent video's shape, so each
call knows its frames and tokens per frame. :meth:`BackendHandle.remove` puts the original processor
objects back and removes the hooks, so the model computes exactly what it did before (bit for bit).
Stats come from the plans that ran: per layer, and summed over layers and calls (:func:`sum_stats`).
With ``fidelity=True`` each layer's output is also compared with the model's dense attention on the same
inputs (:mod:`.fidelity`; one extra dense call per layer call): :meth:`BackendHandle.fidelity`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mocbench.backend import AttentionBackend, UnsupportedError
from mocbench.integrations.diffusers.attention import LayerRecord, OnCall, StreamAttention
from mocbench.integrations.diffusers.fidelity import Fidelity, FidelityMeter, dense_attention
from mocbench.integrations.diffusers.processor import StreamProcessor, wrap_processor
from mocbench.integrations.diffusers.specs import ModelSpec, spec_for
from mocbench.registry import get_backend
from mocbench.stats import AttentionStats, sum_stats


class BackendHandle:
    """A backend applied to a transformer: :meth:`stats`, :meth:`per_layer`, :meth:`fidelity`, :meth:`remove`."""

    def __init__(self, transformer: torch.nn.Module, spec: ModelSpec, backend: AttentionBackend, *, shots: int,
                 timing: bool, on_call: OnCall | None, fidelity: bool = False):
        self.transformer, self.spec, self.backend, self.shots = transformer, spec, backend, shots
        self._grid: tuple[int, int] | None = None
        self._records: dict[str, LayerRecord] = {}
        self._meters: dict[str, FidelityMeter] | None = {} if fidelity else None
        self._originals: dict[str, tuple[torch.nn.Module, Any]] = {}
        self._hooks: list = []
        self._timing, self._on_call = timing, on_call

    # ------------------------------------------------------------------ install / remove
    def _install(self, modules: dict[str, torch.nn.Module]) -> None:
        for index, (name, module) in enumerate(modules.items()):
            record = self._records[name] = LayerRecord()
            if self._meters is not None:
                self._meters[name] = FidelityMeter()
            attention = StreamAttention(name, self.backend.for_layer(index), placement=self.spec.text_placement, shots=self.shots,
                                        grid=self._current_grid, record=record, timing=self._timing,
                                        on_call=self._after_call if self._meters is not None else self._on_call)
            self._originals[name] = (module, module.processor)
            _set_processor(module, wrap_processor(module.processor, attention))
        self._hooks.append(self.transformer.register_forward_pre_hook(self._read_grid, with_kwargs=True))
        self._hooks.append(self.transformer.register_forward_hook(self._forget_grid, always_call=True))

    def remove(self) -> None:
        """Restore the model's own processors and drop the hooks (idempotent); stats stay readable."""
        for module, original in self._originals.values():
            _set_processor(module, original)
        self._originals.clear()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def active(self) -> bool:
        return bool(self._originals)

    def _after_call(self, layer, q, k, v, plan, out) -> None:
        self._meters[layer].add(out, dense_attention(q, k, v, plan.scale))
        if self._on_call is not None:
            self._on_call(layer, q, k, v, plan, out)

    # ------------------------------------------------------------------ geometry
    def _read_grid(self, module, args, kwargs) -> None:
        self._grid = self.spec.grid_of_call(module.config, args, kwargs)

    def _forget_grid(self, module, args, output) -> None:
        self._grid = None

    def _current_grid(self) -> tuple[int, int]:
        if self._grid is None:
            raise RuntimeError(f"a {self.spec.name} attention layer ran outside a call of the transformer the backend "
                               f"was applied to, so its video shape is unknown; call the transformer itself")
        return self._grid

    # ------------------------------------------------------------------ results
    @property
    def layers(self) -> list[str]:
        """Names of the modules that run the backend, in model order."""
        return list(self._records)

    def per_layer(self) -> dict[str, AttentionStats]:
        """Per module that has run: its calls' stats summed (pairs, FLOPs; sparsity over its calls)."""
        return {name: r.total() for name, r in self._records.items() if r.stats}

    def stats(self) -> AttentionStats:
        """All calls of all layers as one ``AttentionStats``: ``sparsity = 1 - sum(pairs) / sum(B*H*L^2)``."""
        parts = [s for r in self._records.values() for s in r.stats]
        if not parts:
            raise RuntimeError(f"no attention call has run with backend {self.backend.name!r} yet: call the "
                               f"transformer first")
        return sum_stats(parts)

    def fidelity(self) -> dict[str, Fidelity]:
        """Per layer that has run: relative L2 and cosine of its output against the model's dense attention on the
        same q, k, v, over all its calls (:mod:`.fidelity`); only with ``apply_backend(..., fidelity=True)``."""
        if self._meters is None:
            raise RuntimeError("fidelity() needs apply_backend(..., fidelity=True) (one extra dense call per layer "
                               "call)")
        return {name: m.result() for name, m in self._meters.items() if m.calls}

    def times(self) -> dict[str, float]:
        """Seconds spent in the backend's ``prepare`` (routing) and ``forward`` (attention), summed over calls;
        only with ``apply_backend(..., timing=True)`` (which synchronises CUDA around each step)."""
        if not self._timing:
            raise RuntimeError("times() needs apply_backend(..., timing=True)")
        return {"prepare_s": sum(r.prepare_s for r in self._records.values()),
                "forward_s": sum(r.forward_s for r in self._records.values())}

    def reset_stats(self) -> None:
        """Forget recorded calls (e.g. after warm-up)."""
        for r in self._records.values():
            r.stats.clear()
            r.prepare_s = r.forward_s = 0.0
        for m in (self._meters or {}).values():
            m.reset()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"BackendHandle({self.backend.label} in {self.spec.name}, {len(self._records)} layers, {state})"


def apply_backend(transformer: torch.nn.Module, backend: str | AttentionBackend, *, shots: int = 1,
                  timing: bool = False, fidelity: bool = False, on_call: OnCall | None = None,
                  **params) -> BackendHandle:
    """Run registry backend ``backend`` (a name, with ``params``; or a backend object) in every stream
    self-attention layer of ``transformer``; returns the handle (``remove()``, ``stats()``, ``per_layer()``).

    ``shots`` cuts the latent frames into that many equal shots (multi-shot layouts; the caption stays one
    global caption). ``timing=True`` records time spent in ``prepare`` and ``forward`` (:meth:`BackendHandle.times`).
    ``fidelity=True`` compares every layer call's output with the model's dense attention on the same inputs
    (:meth:`BackendHandle.fidelity`; costs one dense attention call per layer call, so do not time such forwards).
    ``on_call(layer, q, k, v, plan, out)`` is called after every backend call (e.g. to check each layer's output).
    """
    spec = spec_for(transformer)
    if isinstance(backend, AttentionBackend):
        if params:
            raise TypeError(f"pass params either to get_backend or here, not both: got a backend object and {params}")
    elif isinstance(backend, str):
        backend = get_backend(backend, **params)
    else:
        raise TypeError(f"backend must be a registry name or an AttentionBackend, got {type(backend).__name__}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an int >= 1, got {shots!r}")
    for flag, value in (("timing", timing), ("fidelity", fidelity)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    modules = {n: m for n, m in transformer.named_modules() if spec.matches_module(n)}
    if not modules:
        raise ValueError(f"{type(transformer).__name__} has no module matching spec {spec.name!r}'s self-attention "
                         f"patterns {spec.self_attention}")
    reasons = []
    for name, module in modules.items():
        proc = getattr(module, "processor", None)
        if proc is None:
            reasons.append(f"{name} has no attention processor")
        elif isinstance(proc, StreamProcessor):
            raise ValueError(f"{type(transformer).__name__} already runs mocbench backend {proc.attention.backend!r}; "
                             f"remove() that handle first")
        elif isinstance(proc, torch.nn.Module):
            reasons.append(f"{name}: processor {type(proc).__name__} holds weights (an nn.Module); not supported")
        else:
            dispatch = getattr(proc, "_attention_backend", None)
            if dispatch is not None and str(getattr(dispatch, "value", dispatch)) != "native":
                reasons.append(f"{name}: diffusers attention backend {str(getattr(dispatch, 'value', dispatch))!r} is "
                               f"set; mocbench answers the 'native' backend's SDPA call (reset_attention_backend())")
            if getattr(proc, "_parallel_config", None) is not None:
                reasons.append(f"{name}: context parallelism is enabled; not supported")
    if reasons:
        raise UnsupportedError(backend.name, reasons)
    handle = BackendHandle(transformer, spec, backend, shots=shots, timing=timing, on_call=on_call,
                           fidelity=fidelity)
    handle._install(modules)
    return handle


@contextlib.contextmanager
def use_backend(transformer: torch.nn.Module, backend: str | AttentionBackend, *, shots: int = 1,
                timing: bool = False, fidelity: bool = False, on_call: OnCall | None = None,
                **params) -> Iterator[BackendHandle]:
    """``with use_backend(transformer, "moc", top_k=2, causal=False) as h: ...``; removed on exit, even on error."""
    handle = apply_backend(transformer, backend, shots=shots, timing=timing, fidelity=fidelity, on_call=on_call,
                           **params)
    try:
        yield handle
    finally:
        handle.remove()


def _set_processor(module: torch.nn.Module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor
