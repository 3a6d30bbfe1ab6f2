"""The attention-backend protocol: capabilities, input validation, prepare/forward split.

Tensor legend: ``q, k, v, out`` are ``(B, H, L, D)`` = (batch, heads, tokens, head_dim),
the layout of ``torch.nn.functional.scaled_dot_product_attention``.

A backend object is built by the registry from a validated params dataclass. Its public API:

* ``backend(q, k, v, layout) -> out``            validate, ``prepare``, ``forward``
* ``backend.prepare(q, k, layout) -> plan``      routing / masks / indices (timed on its own)
* ``backend.forward(q, k, v, plan) -> out``      attention only
* ``backend.attention_pattern(q, k, layout)``    ``(B, H, L, L)`` bool, small sizes only
* ``backend.stats(q, k, layout)``                measured :class:`AttentionStats` (``block_shape=``: block density)
* ``backend.estimate(layout, head_dim=...)``     analytic :class:`AttentionStats`, no tensors (``block_shape=`` too)
* ``backend.workspace_bytes(layout, ...)``       bytes its working set needs (memory checks), no tensors
* ``backend.not_supported_reasons(...)``         why a device/dtype/shape is refused (empty: fine)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mocbench.blocks import check_block_shape, pattern_block_density
from mocbench.layout import TokenLayout
from mocbench.params import params_as_dict
from mocbench.stats import AttentionStats
from mocbench.workspace import fused_attention_bytes, layout_bytes

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Beyond this many booleans attention_pattern refuses (it is an inspection tool, not a kernel).
MAX_PATTERN_ELEMENTS = 1 << 30
# The default plan_block_density materialises the pattern only up to this many booleans.
MAX_BLOCK_PATTERN_ELEMENTS = 1 << 26


class UnsupportedError(ValueError):
    """A backend refused a call; ``reasons`` lists every reason (never silently served elsewhere)."""

    def __init__(self, backend: str, reasons: list[str]):
        self.backend = backend
        self.reasons = list(reasons)
        super().__init__(f"backend {backend!r} cannot run this call: " + "; ".join(reasons))


_DEPENDENCY_CACHE: dict[str, str | None] = {}


def dependency_problem(module: str) -> str | None:
    """None when ``module`` imports; otherwise a one-line reason. Imported lazily, cached."""
    if module not in _DEPENDENCY_CACHE:
        try:
            importlib.import_module(module)
            _DEPENDENCY_CACHE[module] = None
        except ModuleNotFoundError as exc:
            _DEPENDENCY_CACHE[module] = f"{exc.name or module} is not installed"
        except Exception as exc:  # a broken binary (wrong torch/CUDA build) can raise anything
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _DEPENDENCY_CACHE[module] = f"{module} fails to import ({type(exc).__name__}: {first[:160]})"
    return _DEPENDENCY_CACHE[module]


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a backend can run, declared up front (xformers-style) and explained on refusal."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    backward: bool = True
    backward_devices: tuple[str, ...] | None = None  # where the backward pass runs (None: every device)
    min_compute_capability: tuple[int, int] | None = None
    requires: tuple[str, ...] = ()
    exact: bool = True  # computes the spec's function (up to float rounding)
    # max abs error allowed against the float64 oracle, per input dtype
    tolerances: dict[torch.dtype, float] = field(
        default_factory=lambda: {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
    )

    def dependency_reasons(self) -> list[str]:
        return [r for r in (dependency_problem(m) for m in self.requires) if r]

    def reasons(
        self, *, device: torch.device | str | None, dtype: torch.dtype | None,
        head_dim: int | None, requires_grad: bool = False,
    ) -> list[str]:
        out = self.dependency_reasons()
        if device is not None:
            dev = torch.device(device)
            if dev.type not in self.devices:
                out.append(f"device {dev.type!r} not supported (supports {', '.join(self.devices)})")
            elif dev.type == "cuda":
                if not torch.cuda.is_available():
                    out.append("CUDA is not available on this machine")
                elif self.min_compute_capability is not None:
                    cc = torch.cuda.get_device_capability(dev)
                    if cc < self.min_compute_capability:
                        need = ".".join(map(str, self.min_compute_capability))
                        out.append(f"needs compute capability >= {need}, device has {cc[0]}.{cc[1]}")
        if dtype is not None and dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            out.append(f"dtype {str(dtype).removeprefix('torch.')} not supported (supports {names})")
        if head_dim is not None:
            if self.max_head_dim is not None and head_dim > self.max_head_dim:
                out.append(f"head_dim {head_dim} > max {self.max_head_dim}")
            if head_dim % self.head_dim_multiple:
                out.append(f"head_dim {head_dim} is not a multiple of {self.head_dim_multiple}")
        if requires_grad and not self.backward:
            out.append("no backward pass (inputs require grad)")
        elif requires_grad and device is not None and self.backward_devices is not None \
                and torch.device(device).type not in self.backward_devices:
            out.append(f"no backward pass on {torch.device(device).type} (inputs require grad; backward runs on "
                       f"{', '.join(self.backward_devices)})")
        return out


@dataclass
class Plan:
    """What ``prepare`` computed for one call. Backend families extend it."""

    layout: TokenLayout
    batch: int
    heads: int
    head_dim: int
    device: torch.device
    scale: float | None = None  # softmax scale; None = 1/sqrt(head_dim)

    @property
    def softmax_scale(self) -> float:
        """The scale actually used: ``scale``, or 1/sqrt(head_dim) when it is None."""
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, layout: TokenLayout) -> None:
    """Validate tensors at the boundary; every message names the bad value."""
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"layout must be a mocbench.TokenLayout, got {type(layout).__name__}")
    named = {"q": q, "k": k} if v is None else {"q": q, "k": k, "v": v}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    for name, t in named.items():
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}; MoC is self-attention")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if q.shape[2] != layout.num_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but the layout has {layout.num_tokens} ({layout.describe()})")


def check_matches_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan) -> None:
    """``forward(q, k, v, plan)`` on tensors the plan was not prepared for is refused, naming both shapes
    (a plan's indices are sized for its batch, heads and tokens; fast kernels would read out of range)."""
    check_qkv(q, k, v, plan.layout)
    want = (plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim)
    if tuple(q.shape) != want:
        raise ValueError(f"q has shape {tuple(q.shape)} but the plan was prepared for (batch, heads, tokens, "
                         f"head_dim) = {want}; prepare a plan for these tensors")
    if q.device != plan.device:
        raise ValueError(f"q is on {q.device} but the plan was prepared on {plan.device}")


class AttentionBackend:
    """Base class. Subclasses set ``family`` and implement ``prepare``, ``forward``,
    ``_pattern`` and ``_count_pairs``/``estimate``; the registry sets ``name`` and ``Params``."""

    name: ClassVar[str] = "?"
    family: ClassVar[str] = "?"
    Params: ClassVar[type]
    default_capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, params: Any):
        self.params = params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every backend's ``estimate`` (built-in or third-party) checks its arguments here, in one
        # place: a negative head_dim or a zero batch would otherwise give negative FLOPs or a
        # division by zero deep in the accounting.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("estimate")
        if own is not None and not getattr(own, "_checks_args", False):
            cls.estimate = _checked_estimate(own)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in params_as_dict(self.params).items())
        return f"{self.name}({args})"

    @property
    def label(self) -> str:
        """Short display name: the backend name plus the params that differ from their defaults."""
        changed = [f"{k}={v}" for k, v in params_as_dict(self.params).items()
                   if v != _field_default(type(self.params), k)]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def for_layer(self, index: int) -> AttentionBackend:
        """The backend that attention layer ``index`` (0-based, in model order) of a model runs. The same
        backend for every layer, except in families whose rule changes with depth (VMoBA cycles its
        partition with the layer index): the model classes and the diffusers integration call this once
        per layer."""
        return self

    # ------------------------------------------------------------------ capabilities
    @property
    def capabilities(self) -> Capabilities:
        """May depend on params (e.g. which SDPA kernel); defaults to the class declaration."""
        return self.default_capabilities

    @property
    def tolerance(self) -> dict[torch.dtype, float]:
        return self.capabilities.tolerances

    def not_supported_reasons(
        self, q: torch.Tensor | None = None, *, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, head_dim: int | None = None, requires_grad: bool | None = None,
        layout: TokenLayout | None = None,
    ) -> list[str]:
        """Every reason this backend refuses the call; empty when it can run it."""
        if q is not None:
            device = q.device if device is None else device
            dtype = q.dtype if dtype is None else dtype
            head_dim = q.shape[-1] if head_dim is None else head_dim
            requires_grad = q.requires_grad if requires_grad is None else requires_grad
        reasons = self.capabilities.reasons(device=device, dtype=dtype, head_dim=head_dim,
                                            requires_grad=bool(requires_grad))
        return reasons + self._more_reasons(device=device, dtype=dtype, head_dim=head_dim,
                                            requires_grad=bool(requires_grad), layout=layout)

    def _more_reasons(self, *, device, dtype, head_dim, requires_grad: bool, layout) -> list[str]:
        """Reasons beyond the declared capabilities (e.g. the implementation a param selects); by default
        what :meth:`check_layout` says of ``layout``."""
        if layout is None:
            return []
        try:
            self.check_layout(layout)
        except ValueError as exc:
            return [str(exc)]
        return []

    def check_layout(self, layout: TokenLayout) -> None:
        """Raise ValueError when ``layout`` lacks what this backend needs (e.g. frame geometry)."""

    @classmethod
    def implementations(cls, devices: list[str]) -> list[dict]:
        """Rows describing the implementations a param selects between (for ``mocbench backends``),
        each ``{impl, devices, auto_order, available, reasons, note, description}``; [] when there is
        one. Must not compile or allocate anything."""
        return []

    def implementation(self, device: torch.device | str) -> str:
        """The name of the implementation this backend runs on ``device`` ("" when it has only one);
        written into every result row."""
        return ""

    def check_supported(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, layout: TokenLayout) -> None:
        check_qkv(q, k, v, layout)
        grad = any(t is not None and t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled()
        reasons = self.not_supported_reasons(q, requires_grad=grad, layout=layout)
        if reasons:
            raise UnsupportedError(self.name, reasons)

    # ------------------------------------------------------------------ computation
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, *,
                 scale: float | None = None, training: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Attention output ``(B, H, L, D)``. ``training=True`` enables training-only regularisers."""
        self.check_supported(q, k, v, layout)
        _check_scale(scale)
        plan = self._prepare(q, k, layout, training=training, generator=generator, scale=scale)
        return self.forward(q, k, v, plan)

    def prepare(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, *, scale: float | None = None,
                training: bool = False, generator: torch.Generator | None = None) -> Plan:
        """Everything that depends on q/k but is not attention: routing, masks, index lists."""
        self.check_supported(q, k, None, layout)
        _check_scale(scale)
        return self._prepare(q, k, layout, training=training, generator=generator, scale=scale)

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> Plan:
        B, H, _, D = q.shape
        return Plan(layout, B, H, D, q.device, scale=scale)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ inspection
    def attention_pattern(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """``(B, H, L, L)`` bool, True where query i attends key j. Small sizes only."""
        check_qkv(q, k, None, layout)
        B, H, L, _ = q.shape
        if B * H * L * L > MAX_PATTERN_ELEMENTS:
            raise ValueError(
                f"attention_pattern would materialise {B}x{H}x{L}x{L} booleans; "
                f"it is for small inspection cases (<= {MAX_PATTERN_ELEMENTS} elements). Use stats() for counts."
            )
        with torch.no_grad():
            plan = self._prepare(q, k, layout, training=False, generator=None)
            return self._pattern(plan)

    def _pattern(self, plan: Plan) -> torch.Tensor:
        raise NotImplementedError

    def stats(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, *,
              block_shape: tuple[int, int] | None = None) -> AttentionStats:
        """Measured accounting for these inputs (routing included), without any L x L tensor; with
        ``block_shape=(bq, bk)`` also the block density of the plan (moc-spec §10)."""
        check_qkv(q, k, None, layout)
        bs = None if block_shape is None else check_block_shape(block_shape)
        with torch.no_grad():
            plan = self._prepare(q, k, layout, training=False, generator=None)
            stats = self.plan_stats(plan)
            if bs is not None:
                stats = dataclasses.replace(stats, block_shape=bs, block_density=self.plan_block_density(plan, bs))
            return stats

    def plan_stats(self, plan: Plan) -> AttentionStats:
        raise NotImplementedError

    def plan_block_density(self, plan: Plan, block_shape: tuple[int, int]) -> float | None:
        """Block density of a plan (moc-spec §10). This default counts the blocks of the materialised
        pattern, so it answers only at inspection sizes (B*H*L^2 <= ``MAX_BLOCK_PATTERN_ELEMENTS``) and None
        (not measured) beyond; backends override it with a computation that needs no L x L tensor."""
        L = plan.layout.num_tokens
        if plan.batch * plan.heads * L * L > MAX_BLOCK_PATTERN_ELEMENTS:
            return None
        return pattern_block_density(self._pattern(plan), block_shape)

    def estimate(self, layout: TokenLayout, *, head_dim: int, batch: int = 1, heads: int = 1) -> AttentionStats:
        """Analytic accounting from the layout and params alone (moc-spec §7); every subclass's ``estimate``
        also takes ``block_shape=(bq, bk)`` and then reports :meth:`estimate_block_density` (§10)."""
        raise NotImplementedError

    def estimate_block_density(self, layout: TokenLayout, block_shape: tuple[int, int]) -> float | None:
        """Block density from the layout and params alone, where they determine it (moc-spec §10); None
        otherwise ("depends on routing"), never a guess. This default determines nothing."""
        return None

    def workspace_bytes(self, layout: TokenLayout, *, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                        device: str = "cpu", requires_grad: bool = False) -> int:
        """Upper bound of the bytes one ``prepare`` + ``forward`` (+ backward, with ``requires_grad``)
        allocates on ``device`` beyond q, k, v, the output, ``grad_out`` and the gradients; from sizes
        alone, no tensors (:mod:`mocbench.workspace`). This default is a fused flash-style kernel plus the
        layout's per-token tables; a backend that materialises more (masks, scores, routing) overrides it."""
        return (fused_attention_bytes(batch, heads, layout.num_tokens, head_dim, dtype, requires_grad=requires_grad)
                + layout_bytes(layout.num_tokens))


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


def _check_scale(scale: float | None) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float > 0 or None (1/sqrt(head_dim)), got {scale!r}")


def _checked_estimate(estimate):
    """``estimate`` with its arguments checked first (see ``AttentionBackend.__init_subclass__``)."""

    @functools.wraps(estimate)
    def checked(self, layout: TokenLayout, *, head_dim: int, batch: int = 1, heads: int = 1,
                block_shape: tuple[int, int] | None = None) -> AttentionStats:
        check_estimate_args(layout, head_dim, batch, heads)
        bs = None if block_shape is None else check_block_shape(block_shape)
        stats = estimate(self, layout, head_dim=head_dim, batch=batch, heads=heads)
        if bs is not None:
            stats = dataclasses.replace(stats, block_shape=bs, block_density=self.estimate_block_density(layout, bs))
        return stats

    checked._checks_args = True
    return checked


def check_estimate_args(layout: TokenLayout, head_dim: int, batch: int, heads: int) -> None:
    """The arguments of ``estimate``: a TokenLayout and positive ints (bools refused)."""
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"layout must be a mocbench.TokenLayout, got {type(layout).__name__}")
    for name, value in (("head_dim", head_dim), ("batch", batch), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
