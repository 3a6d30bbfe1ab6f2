"""Block density (moc-spec §10): the work a block-sparse kernel with ``bq x bk`` tiles must do.

``block_density(bq, bk)`` is the fraction of the ``ceil(L/bq) x ceil(L/bk)`` blocks of the query x key
grid (blocks from position 0, stream order) holding at least one attended pair, averaged over batch and
heads; ``1 - block_density`` is the sparsity a GPU can turn into speed, while ``sparsity`` is the work the
method asks for.

Every pattern here is described by *runs*: stretches ``[start, stop)`` of stream positions that share a
group (a shot, a chunk, a frame). A query block and a key block are related when some query group
present in the first relates to some key group present in the second. Presence is a sparse list of
``(block, group)`` pairs, and the grid is filled by joining the query pairs with the key pairs on the group
(through a sparse relation when the groups differ), so the work is proportional to the incidences, never
to ``QB x groups`` or ``L x L``. Only the ``(QB, KB)`` bool grid is dense.

Legend: L tokens, QB/KB query/key blocks, G groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DEFAULT_BLOCK_SHAPE = (128, 128)
JOIN_CHUNK = 1 << 20  # (query block, key block) candidates expanded at a time


def check_block_shape(block_shape: object) -> tuple[int, int]:
    """``(bq, bk)``: two ints >= 1 (query rows, key columns of a block)."""
    if isinstance(block_shape, (tuple, list)) and len(block_shape) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in block_shape):
        return int(block_shape[0]), int(block_shape[1])
    raise ValueError(f"block_shape must be two ints >= 1 (query rows, key columns of a block), e.g. (128, 128); "
                     f"got {block_shape!r}")


def grid_shape(tokens: int, block_shape: tuple[int, int]) -> tuple[int, int]:
    """(QB, KB) = (ceil(L / bq), ceil(L / bk))."""
    return -(-tokens // block_shape[0]), -(-tokens // block_shape[1])


def presence(start: torch.Tensor, stop: torch.Tensor, group: torch.Tensor, block: int) -> torch.Tensor:
    """(n, 2) int64 distinct ``(block, group)`` pairs: the blocks each run ``[start, stop)`` of ``group`` meets."""
    keep = stop > start
    start, stop, group = start[keep], stop[keep], group[keep]
    first, last = start // block, (stop - 1) // block
    count = last - first + 1
    run = torch.repeat_interleave(torch.arange(count.numel()), count)
    offset = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    return torch.unique(torch.stack([first[run] + offset, group[run]], dim=1), dim=0)


def related_blocks(q_pairs: torch.Tensor, k_pairs: torch.Tensor, grid: tuple[int, int],
                   relation: torch.Tensor | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """(QB, KB) bool: a query block meets a group that ``relation`` relates to a group the key block meets
    (``relation=None``: the same group; else a (Gq, Gk) bool matrix or an (n, 2) list of related (gq, gk)
    pairs). Pairs from :func:`presence` (or any ``(block, group)`` list, duplicates allowed). ``rows=(q0,
    q1)``: only query blocks q0..q1-1, as a (q1 - q0, KB) band (see :func:`banded_density`)."""
    device = q_pairs.device
    if rows is not None:
        q0, q1 = rows
        q_pairs = q_pairs[(q_pairs[:, 0] >= q0) & (q_pairs[:, 0] < q1)] - torch.tensor([q0, 0], device=device)
        grid = (q1 - q0, grid[1])
    out = torch.zeros(grid, dtype=torch.bool, device=device)
    if relation is not None:  # (query block, query group) -> (query block, related key group)
        if relation.dtype == torch.bool:
            n_q_groups, rel = relation.shape[0], relation.to(device).nonzero()  # (gq, gk), sorted by gq
        else:
            rel = relation.to(device)
            rel = rel[torch.argsort(rel[:, 0], stable=True)]
            n_q_groups = int(rel[:, 0].max()) + 1 if rel.numel() else 0
        q_pairs = _join(q_pairs, rel, max(n_q_groups, int(q_pairs[:, 1].max()) + 1 if q_pairs.numel() else 0))
        if q_pairs.numel() == 0:
            return out
        q_pairs = torch.unique(q_pairs, dim=0)
    n_groups = int(max(int(q_pairs[:, 1].max()) if q_pairs.numel() else -1,
                       int(k_pairs[:, 1].max()) if k_pairs.numel() else -1)) + 1
    for qk in _join_chunks(q_pairs, k_pairs.to(device), n_groups):
        out[qk[:, 0], qk[:, 1]] = True
    return out


def key_columns(start: torch.Tensor, stop: torch.Tensor, block: int, num_blocks: int) -> torch.Tensor:
    """(KB,) bool: key blocks meeting any of the runs (keys every query attends)."""
    out = torch.zeros(num_blocks, dtype=torch.bool)
    out[presence(start, stop, torch.zeros_like(start), block)[:, 0]] = True
    return out


def banded_density(band: Callable[[int, int], torch.Tensor], grid: tuple[int, int],
                   max_cells: int = 1 << 24) -> float:
    """The density of a (QB, KB) grid built band by band: ``band(q0, q1)`` gives rows q0..q1-1, and at most
    about ``max_cells`` booleans exist at once (a 4M-token layout's 128-grid has 10^9 cells)."""
    QB, KB = grid
    step = max(1, max_cells // max(KB, 1))
    return sum(int(band(q0, min(QB, q0 + step)).sum()) for q0 in range(0, QB, step)) / (QB * KB)


def density(grid: torch.Tensor) -> float:
    """The fraction of True blocks of a (..., QB, KB) bool grid (averaged over leading dims)."""
    return float(grid.sum()) / grid.numel()


def pattern_block_density(pattern: torch.Tensor, block_shape: tuple[int, int]) -> float:
    """Block density of a materialised (B, H, L, L) bool pattern (inspection sizes only)."""
    B, H, L, _ = pattern.shape
    bq, bk = block_shape
    QB, KB = grid_shape(L, block_shape)
    padded = torch.zeros(B, H, QB * bq, KB * bk, dtype=torch.bool, device=pattern.device)
    padded[..., :L, :L] = pattern
    return density(padded.view(B, H, QB, bq, KB, bk).any(dim=5).any(dim=3))


def _join(a: torch.Tensor, b: torch.Tensor, n_groups: int) -> torch.Tensor:
    """All ``(a[:, 0], b[:, 1])`` with ``a[:, 1] == b[:, 0]`` (one tensor; see :func:`_join_chunks`)."""
    parts = list(_join_chunks(a, b.flip(1), n_groups))
    return torch.cat(parts) if parts else a.new_zeros(0, 2)


def _join_chunks(a: torch.Tensor, b: torch.Tensor, n_groups: int):
    """Yield ``(a_block, b_block)`` pairs of a and b entries sharing a group (column 1 of each), at most
    about ``JOIN_CHUNK`` at a time."""
    if a.numel() == 0 or b.numel() == 0:
        return
    order = torch.argsort(b[:, 1], stable=True)
    b_block = b[order, 0]
    per_group = torch.bincount(b[:, 1], minlength=n_groups)
    first = torch.cumsum(per_group, 0) - per_group
    n = per_group[a[:, 1]]
    ends = torch.cumsum(n, 0)
    i = 0
    while i < a.shape[0]:
        j = max(i + 1, int(torch.searchsorted(ends, int(ends[i] - n[i]) + JOIN_CHUNK, right=True)))
        a_i, n_i = a[i:j], n[i:j]
        rep = torch.repeat_interleave(torch.arange(j - i, device=a.device), n_i)
        within = torch.arange(int(n_i.sum()), device=a.device) - torch.repeat_interleave(
            torch.cumsum(n_i, 0) - n_i, n_i)
        yield torch.stack([a_i[rep, 0], b_block[first[a_i[rep, 1]] + within]], dim=1)
        i = j
