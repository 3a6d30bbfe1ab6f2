"""The ``moc`` backend: Mixture of Contexts attention (moc-spec §3-7).

``prepare`` builds the anchor structure (cached per layout) and routes every query; it is
the step that benchmarks time apart from attention. ``forward`` runs the selected
implementation on that plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mocbench.anchors import (
    AnchorStructure,
    QueryClasses,
    build_anchor_structure,
    query_classes,
    structure_bytes,
)
from mocbench.backend import AttentionBackend, Capabilities, Plan
from mocbench.backends.moc.accounting import analytic_pairs, measured_pairs, measured_pairs_bytes
from mocbench.backends.moc.block_density import analytic_block_density, measured_block_density
from mocbench.backends.moc.impl import run_impl
from mocbench.backends.moc.impls import AUTO_ORDER, IMPLS, NOTES, resolve_impl
from mocbench.backends.moc.measured import measured_note
from mocbench.backends.moc.params import MoCParams
from mocbench.backends.moc.reference import moc_mask
from mocbench.backends.moc.routing import route, routing_bytes
from mocbench.backends.moc.sizes import moc_sizes
from mocbench.backends.moc.tiles import QueryTiles, count_tiles, query_tiles
from mocbench.layout import TokenLayout
from mocbench.registry import register_backend
from mocbench.stats import AttentionStats, routing_cost
from mocbench.workspace import layout_bytes


@dataclass
class MoCPlan(Plan):
    structure: AnchorStructure | None = None
    selected: torch.Tensor | None = None  # (B, H, L, K) chunk indices, -1 = empty slot
    impl: str = "reference"  # the implementation this plan was prepared for
    impl_state: Any = None  # index structures built by that implementation's prepare step


@register_backend("moc", family="moc", params=MoCParams, caps=Capabilities(),
                  description="Mixture of Contexts: anchors + top-k routed chunks per query")
class MoCBackend(AttentionBackend):
    """Mixture of Contexts: mandatory anchors plus top-k content-aligned chunks per query."""

    def __init__(self, params: MoCParams):
        if params.impl != "auto":
            resolve_impl(params.impl, "cpu")  # an unknown name is refused here, naming the accepted ones
        super().__init__(params)
        self._generators: dict[torch.device, torch.Generator] = {}

    def _more_reasons(self, *, device, dtype, head_dim, requires_grad, layout) -> list[str]:
        """The reasons of the implementation ``impl`` selects (for ``auto``: of every candidate)."""
        if device is None:
            return []
        dev = torch.device(device).type
        try:
            impl = resolve_impl(self.params.impl, dev, dtype=dtype, head_dim=head_dim, requires_grad=requires_grad)
        except ValueError as exc:
            return [str(exc)]
        return impl.not_supported_reasons(device=device, dtype=dtype, head_dim=head_dim, requires_grad=requires_grad)

    @classmethod
    def implementations(cls, devices: list[str]) -> list[dict]:
        rows = []
        for name, impl in IMPLS.items():
            order = [f"{dev} #{AUTO_ORDER[dev].index(name) + 1}" for dev in AUTO_ORDER if name in AUTO_ORDER[dev]]
            usable = [dev for dev in devices if dev in impl.caps.devices]
            reasons = impl.not_supported_reasons(device=usable[0], build=False) if usable else \
                [f"impl {name!r}: needs {' or '.join(impl.caps.devices)}"]
            note = NOTES[name]() if name in NOTES and not reasons else None
            rows.append({"impl": name, "devices": ",".join(impl.caps.devices), "auto_order": ", ".join(order) or
                         "opt-in", "available": not reasons, "reasons": reasons, "note": note,
                         "measured": measured_note(name, impl.caps.devices), "description": impl.description})
        return rows

    def implementation(self, device) -> str:
        """The MoC implementation ``impl`` runs on ``device`` (for ``auto``: the first that is available), with
        the kernel behind it where an impl declares one (``varlen(fa2)``, ``varlen(fa3)``)."""
        try:
            return resolve_impl(self.params.impl, torch.device(device).type).label(device)
        except ValueError:
            return "auto (none for this device)"

    def structure(self, layout: TokenLayout) -> AnchorStructure:
        """The ``Q x C`` anchor/candidate tables routing needs (runtime only; ``estimate`` never builds them)."""
        p = self.params
        return build_anchor_structure(layout, p.chunking, text_anchor=p.text_anchor,
                                      local_anchor=p.resolved_local_anchor(layout), causal=p.causal)

    def query_classes(self, layout: TokenLayout) -> QueryClasses:
        p = self.params
        return query_classes(layout, p.chunking, text_anchor=p.text_anchor,
                             local_anchor=p.resolved_local_anchor(layout))

    def tiles(self, layout: TokenLayout) -> QueryTiles | None:
        """The query tiles of tile routing (moc-spec §9; cached on the layout); None for per-token routing."""
        tile = self.params.resolved_tile
        return None if tile is None else query_tiles(layout, self.params.chunking, tile)

    def _num_routing_tiles(self, layout: TokenLayout) -> int | None:
        """T from the layout alone (no per-token work); None for per-token routing."""
        tile = self.params.resolved_tile
        return None if tile is None else count_tiles(layout, self.params.chunking, tile)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.params.seed)
        return self._generators[device]

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> MoCPlan:
        B, H, _, D = q.shape
        p = self.params
        structure = self.structure(layout)
        regularise = training and (p.p_drop_off > 0 or p.p_drop_in > 0)
        gen = (generator or self._generator(q.device)) if regularise else None
        selected = route(
            q.detach(), k.detach(), structure, p.top_k, tiles=self.tiles(layout),
            p_drop_off=p.p_drop_off if training else 0.0,
            p_drop_in=p.p_drop_in if training else 0.0,
            n_drop_in=p.n_drop_in if training else 0, generator=gen,
        )
        impl = resolve_impl(p.impl, q.device.type, dtype=q.dtype, head_dim=D,
                            requires_grad=q.requires_grad and torch.is_grad_enabled())
        plan = MoCPlan(layout, B, H, D, q.device, scale=scale, structure=structure, selected=selected, impl=impl.name)
        if impl.prepare is not None:
            plan.impl_state = impl.prepare(plan)
        return plan

    def forward(self, q, k, v, plan: MoCPlan) -> torch.Tensor:
        if self.params.impl not in ("auto", plan.impl):
            raise ValueError(f"this plan was prepared for impl {plan.impl!r} but this backend runs "
                             f"impl {self.params.impl!r}; prepare the plan with this backend")
        return run_impl(IMPLS[plan.impl], q, k, v, plan)

    def _pattern(self, plan: MoCPlan) -> torch.Tensor:
        return moc_mask(plan)

    def _routing_flops(self, B, H, L, C, D, tiles: int | None) -> tuple[int, int]:
        if self.params.top_k == 0:
            return 0, 0
        return routing_cost(B, H, L, C, D, query_tiles=tiles, tile=self.params.resolved_tile or 1)

    def plan_stats(self, plan: MoCPlan) -> AttentionStats:
        L, C = plan.layout.num_tokens, plan.structure.num_chunks
        tiles = self.tiles(plan.layout)
        r, pool = self._routing_flops(plan.batch, plan.heads, L, C, plan.head_dim,
                                      None if tiles is None else tiles.num_tiles)
        return AttentionStats(plan.batch, plan.heads, L, plan.head_dim, measured_pairs(plan.structure, plan.selected),
                              routing_flops=r, pooling_flops=pool, num_chunks=C)

    def plan_block_density(self, plan: MoCPlan, block_shape) -> float:
        return measured_block_density(plan.layout, plan.structure, plan.selected, block_shape)

    def estimate_block_density(self, layout, block_shape) -> float | None:
        p = self.params
        classes = self.query_classes(layout)
        return analytic_block_density(layout, classes, top_k=p.top_k, causal=p.causal, tile=p.resolved_tile,
                                      block_shape=block_shape, structure=lambda: self.structure(layout))

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        classes = self.query_classes(layout)
        L, C = layout.num_tokens, classes.num_chunks
        pairs = round(analytic_pairs(classes, self.params.top_k, causal=self.params.causal)) * batch * heads
        r, pool = self._routing_flops(batch, heads, L, C, head_dim, self._num_routing_tiles(layout))
        return AttentionStats(batch, heads, L, head_dim, pairs, routing_flops=r, pooling_flops=pool, num_chunks=C)

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """The layout's tables and the ``Q x C`` anchor structure (host; cached on the layout), the plan's
        ``selected`` (B, H, L, K) int64, and the largest of what runs one after another: routing's
        scores and temporaries, the measured pair count, the implementation's index state, forward and
        backward (``MoCImpl.workspace``). K, C, Q and the anchor groups come from the layout alone."""
        p = self.params
        dev = torch.device(device)
        s = moc_sizes(self.query_classes(layout), top_k=p.top_k, causal=p.causal, batch=batch, heads=heads,
                      head_dim=head_dim, dtype=dtype, device=str(dev), requires_grad=requires_grad,
                      tiles=self._num_routing_tiles(layout) or 0)
        impl = resolve_impl(p.impl, dev.type)
        host = 0  # the layout's and the anchor structure's tables live on the host: counted on CPU only
        if s.on_cpu:
            host = layout_bytes(s.tokens) + structure_bytes(classes=s.classes, chunks=s.chunks, shots=s.shots,
                                                            tokens=s.tokens)
        return host + s.pairs * 8 + max(routing_bytes(s), measured_pairs_bytes(s), impl.workspace(s))
