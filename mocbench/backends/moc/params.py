"""Parameters of the ``moc`` backend (moc-spec §3-6), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mocbench.chunking import ChunkRule
from mocbench.layout import TokenLayout


@dataclass(frozen=True, kw_only=True)
class MoCParams:
    """``top_k`` routed chunks per query on top of the mandatory anchors.

    ``local_anchor=None`` picks the spec's default from the layout: ``"shot"`` for multi-shot
    streams, ``"chunk"`` for single-shot ones (where ``"shot"`` would make attention dense).
    ``p_drop_off``/``p_drop_in``/``n_drop_in`` are training-only regularisers drawn from a
    generator seeded by ``seed``. ``impl`` picks the implementation (``"auto"``: the fastest
    exact one for the tensors' device and dtype).
    """

    top_k: int = 5
    chunking: str = "frame"
    text_anchor: bool = True
    local_anchor: Literal["shot", "chunk"] | None = None
    causal: bool = True
    p_drop_off: float = 0.0
    p_drop_in: float = 0.0
    n_drop_in: int = 1
    seed: int = 0
    impl: str = "auto"

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        ChunkRule.parse(self.chunking)
        for name in ("p_drop_off", "p_drop_in"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.n_drop_in < 0:
            raise ValueError(f"n_drop_in must be >= 0, got {self.n_drop_in}")

    def resolved_local_anchor(self, layout: TokenLayout) -> str:
        if self.local_anchor is not None:
            return self.local_anchor
        return "shot" if layout.num_shots > 1 else "chunk"
