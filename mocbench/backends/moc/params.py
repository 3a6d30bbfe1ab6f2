"""Parameters of the ``moc`` backend (moc-spec §3-6), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mocbench.chunking import ChunkRule
from mocbench.layout import TokenLayout

DEFAULT_TILE = 128  # one query tile per 128 positions: the q-block of flash-style kernels


@dataclass(frozen=True, kw_only=True)
class MoCParams:
    """``top_k`` routed chunks per query on top of the mandatory anchors.

    ``local_anchor=None`` picks the spec's default from the layout: ``"shot"`` for multi-shot
    streams, ``"chunk"`` for single-shot ones (where ``"shot"`` would make attention dense).
    ``p_drop_off``/``p_drop_in``/``n_drop_in`` are training-only regularisers drawn from a
    generator seeded by ``seed``. ``impl`` picks the implementation (``"auto"``: the fastest
    exact one for the tensors' device and dtype).

    ``routing="token"`` (the paper's) selects chunks per query; ``routing="tile"`` (moc-spec §9) once
    per query tile of at most ``tile`` positions (default 128), by the tile's mean query, so the
    attended set is tile-shaped for block-sparse kernels. ``tile`` is only accepted with ``"tile"``.
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
    routing: Literal["token", "tile"] = "token"
    tile: int | None = None  # None: DEFAULT_TILE with routing="tile"

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.routing not in ("token", "tile"):
            raise ValueError(f"routing must be 'token' or 'tile', got {self.routing!r}")
        if self.tile is not None:
            if isinstance(self.tile, bool) or not isinstance(self.tile, int):
                raise TypeError(f"tile must be an int >= 1, got {self.tile!r}")
            if self.routing != "tile":
                raise ValueError(f"tile={self.tile} only applies with routing='tile' (routing is "
                                 f"{self.routing!r}); drop tile or set routing='tile'")
            if self.tile < 1:
                raise ValueError(f"tile must be an int >= 1 (query positions per routing tile), got {self.tile}")
        ChunkRule.parse(self.chunking)
        for name in ("p_drop_off", "p_drop_in"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.n_drop_in < 0:
            raise ValueError(f"n_drop_in must be >= 0, got {self.n_drop_in}")

    @property
    def resolved_tile(self) -> int | None:
        """Positions per query tile (None: per-token routing)."""
        if self.routing != "tile":
            return None
        return DEFAULT_TILE if self.tile is None else self.tile

    def resolved_local_anchor(self, layout: TokenLayout) -> str:
        if self.local_anchor is not None:
            return self.local_anchor
        return "shot" if layout.num_shots > 1 else "chunk"
