"""Index structures of the CPU MoC implementations (``gather`` and ``fused``), built once per plan.

* :class:`GatherIndex` depends on the layout only (cached on it): anchor groups stacked by
  shape, the chunk-sorted token order, and which chunks are only partly un-anchored.
* :class:`RoutedGroups` depends on the routing: every routed (query, chunk) pair grouped by
  (batch*head, chunk) and batched into padded buckets for ATen's fused flash kernel.

Legend: B batch, H heads, BH = B*H, L tokens, D head_dim, C chunks, G groups, n queries of a group,
m keys of a chunk, E routed (query, chunk) pairs, K routed slots per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.anchors import AnchorStructure
from mocbench.backends.moc.sizes import MoCSizes

# Above this many booleans the (BH, C+1, L) routed-membership map is replaced by a sort.
_HOT_MAP_MAX = 1 << 27
# Routed groups are batched into one flash call per bucket: same chunk size, query counts within
# this factor of the bucket's largest (padding waste <= 1 - 1/_BUCKET_SLACK).
_BUCKET_SLACK = 1.5
_BUCKET_MAX_GROUPS = 4096


@dataclass(frozen=True, eq=False)
class AnchorBucket:
    """Anchor groups of identical shape: queries ``q_idx_gn`` attend keys ``k_idx_gk``."""

    q_idx_gn: torch.Tensor  # (G, n) token positions of each group's queries
    k_idx_gk: torch.Tensor  # (G, nk) token positions of each group's anchor keys


@dataclass(frozen=True, eq=False)
class GatherIndex:
    """Everything the gather implementation needs that depends on the layout only (cached)."""

    buckets: tuple[AnchorBucket, ...]
    token_index_l: torch.Tensor  # (L,) positions sorted by chunk (chunk c = offsets[c]:offsets[c+1])
    offsets: tuple[int, ...]  # (C+1,) as Python ints
    partial_c: tuple[bool, ...]  # chunk is partly anchored for some query class
    token_class_l: torch.Tensor  # (L,) query class of every token
    shot_id_l: torch.Tensor  # (L,) shot of every token
    identity_order: bool  # chunks are contiguous and in stream order (token_index is arange)


def anchor_groups(structure: AnchorStructure, shot_id_l: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every anchor group in order, as (query positions, anchor key positions): one per shot
    (``local_anchor="shot"``: the shot's tokens; keys add the other shots' captions) or one per chunk
    (``"chunk"``: the chunk's tokens in stream order; keys add every caption). Each token is a query
    of exactly one group."""
    ct = structure.chunks
    text_l = ct.is_text[ct.chunk_id]
    text_idx = text_l.nonzero().flatten()
    groups = []
    if structure.local_anchor == "shot":
        for s in range(int(shot_id_l.max()) + 1):
            own = (shot_id_l == s).nonzero().flatten()
            keys = own
            if structure.text_anchor:  # captions of other shots (own caption is already in `own`)
                keys = torch.cat([own, text_idx[shot_id_l[text_idx] != s]])
            groups.append((own, keys))
    else:
        for c in range(ct.num_chunks):
            own = ct.token_index[int(ct.offsets[c]):int(ct.offsets[c + 1])]
            if not structure.text_anchor:
                keys = own
            elif bool(ct.is_text[c]):
                keys = text_idx  # a caption chunk is itself part of the text anchor
            else:
                keys = torch.cat([own, text_idx])
            groups.append((own, keys))
    return groups


def gather_index(layout, structure: AnchorStructure) -> GatherIndex:
    key = ("moc_gather_index", structure.chunks.rule, structure.text_anchor, structure.local_anchor)
    cache = layout._cache
    if key in cache:
        return cache[key]
    by_shape: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for own, keys in anchor_groups(structure, layout.shot_id):
        by_shape.setdefault((own.numel(), keys.numel()), []).append((own, keys))
    buckets = tuple(AnchorBucket(torch.stack([g[0] for g in gs]), torch.stack([g[1] for g in gs]))
                    for gs in by_shape.values())
    ct = structure.chunks
    unc = structure.uncovered
    partial = ((unc > 0) & (unc < ct.sizes[None, :])).any(0)
    out = GatherIndex(buckets, ct.token_index, tuple(int(x) for x in ct.offsets), tuple(partial.tolist()),
                      structure.token_class, layout.shot_id,
                      bool((ct.token_index == torch.arange(layout.num_tokens)).all()))
    cache[key] = out
    return out


def gather_index_bytes(s: MoCSizes) -> int:
    """:func:`gather_index` (cached on the layout): stacked query and key indices of the anchor groups
    (twice while stacking), per-shot member lists, the partly-anchored test over the ``Q x C``
    table, the identity-order test."""
    return 2 * (s.tokens + s.anchor_keys) * 8 + 3 * s.classes * s.chunks + 3 * s.tokens * 8


# ----------------------------------------------------------------------------- routed groups
@dataclass(frozen=True, eq=False)
class RoutedBucket:
    """Routed groups of one chunk size, padded to ``n`` queries: one batched flash call."""

    n: int
    q_rows_p: torch.Tensor  # (G*n,) query row (bh*L + i) of every padded slot; BH*L = zero row
    k_rows_gm: torch.Tensor  # (G, m) rows of the chunk-sorted keys (bh*L + position) of each group


@dataclass(frozen=True, eq=False)
class RoutedGroups:
    """Routed (query, chunk) pairs grouped by (bh, chunk), laid out in a padded buffer of P rows.

    Groups of wholly un-anchored chunks are batched in ``buckets`` (equal chunk size, similar
    query counts, padded); groups of partly anchored chunks are ``pieces`` ``(bh, c, rows_n)``
    computed one by one with a mask, placed after the buckets. ``inv_rk[r, k]`` is the buffer
    position of row r's k-th routed pair (P: none).
    """

    buckets: tuple[RoutedBucket, ...]
    pieces: tuple[tuple[int, int, torch.Tensor], ...]
    num_slots: int  # P
    inv_rk: torch.Tensor  # (BH*L, K)


def routed_groups(selected_bhlk: torch.Tensor, idx: GatherIndex, num_chunks: int) -> RoutedGroups:
    """Group the routing ``selected`` (B, H, L, K) by (bh, chunk); duplicates and -1 are dropped."""
    B, H, L, K = selected_bhlk.shape
    BH, C = B * H, num_chunks
    sel = selected_bhlk.reshape(BH, L, K)
    if BH * (C + 1) * L <= _HOT_MAP_MAX:  # membership map (BH, C+1, L); row C collects the -1 slots
        hot_bcl = torch.zeros(BH, C + 1, L, dtype=torch.bool)
        hot_bcl.scatter_(1, torch.where(sel < 0, C, sel).transpose(1, 2), True)
        hot_bcl[:, C] = False
        counts_g = hot_bcl[:, :C].sum(-1, dtype=torch.int64).flatten()
        flat_e = hot_bcl.view(-1).nonzero().squeeze(1)
        rows_e = flat_e // ((C + 1) * L) * L + flat_e % L
        rank_e = torch.cumsum(hot_bcl, 1, dtype=torch.int32).view(-1)[flat_e] - 1  # slot within its row
    else:  # long streams: sort (bh, c, i, slot) keys instead of materialising the map
        bh_l = torch.arange(BH).view(BH, 1, 1)
        i_l = torch.arange(L).view(1, L, 1)
        key_e = ((((bh_l * C + sel) * L + i_l) * K) + torch.arange(K)).flatten()
        key_e = torch.sort(key_e[sel.flatten() >= 0]).values
        first = torch.ones_like(key_e, dtype=torch.bool)
        first[1:] = key_e[1:] // K != key_e[:-1] // K  # drop duplicate (bh, c, i)
        key_e, rank_e = key_e[first] // K, key_e[first] % K
        counts_g = torch.bincount(key_e // L, minlength=BH * C)
        rows_e = key_e // (C * L) * L + key_e % L
    bounds = [0] + torch.cumsum(counts_g, 0).tolist()
    # Bucket the groups: same chunk size, query counts within _BUCKET_SLACK of the bucket's largest.
    full, partial = [], []
    for g in range(BH * C):
        if bounds[g + 1] > bounds[g]:
            (partial if idx.partial_c[g % C] else full).append((bounds[g + 1] - bounds[g], g))
    full.sort(key=lambda t: (idx.offsets[t[1] % C + 1] - idx.offsets[t[1] % C], t[0]), reverse=True)
    pos_parts, buckets, base, j = [], [], 0, 0
    arange_m = {}
    while j < len(full):
        n_b, g0 = full[j]
        m = idx.offsets[g0 % C + 1] - idx.offsets[g0 % C]
        members = []
        while j < len(full) and full[j][0] * _BUCKET_SLACK >= n_b and len(members) < _BUCKET_MAX_GROUPS \
                and idx.offsets[full[j][1] % C + 1] - idx.offsets[full[j][1] % C] == m:
            members.append(full[j][1])
            j += 1
        slot_rows = torch.full((len(members), n_b), BH * L, dtype=torch.int64)
        for gi, g in enumerate(members):
            lo, hi = bounds[g], bounds[g + 1]
            slot_rows[gi, :hi - lo] = rows_e[lo:hi]
            pos_parts.append((lo, hi, base + gi * n_b))
        if m not in arange_m:
            arange_m[m] = torch.arange(m)
        starts = torch.tensor([g // C * L + idx.offsets[g % C] for g in members])
        buckets.append(RoutedBucket(n_b, slot_rows.flatten(), starts[:, None] + arange_m[m]))
        base += len(members) * n_b
    pieces = []
    for n, g in partial:
        lo, hi = bounds[g], bounds[g + 1]
        pieces.append((g // C, g % C, rows_e[lo:hi]))
        pos_parts.append((lo, hi, base))
        base += n
    E = rows_e.numel()
    pos_e = torch.empty(E, dtype=torch.int64)
    for lo, hi, start in pos_parts:
        pos_e[lo:hi] = torch.arange(start, start + hi - lo)
    inv_rk = torch.full((BH * L * K,), base, dtype=torch.int64)
    inv_rk[rows_e * K + rank_e] = pos_e
    return RoutedGroups(tuple(buckets), tuple(pieces), base, inv_rk.view(BH * L, K))


def partial_mask(idx: GatherIndex, structure: AnchorStructure, c: int, rows_n: torch.Tensor, L: int, dtype):
    """For a partly anchored chunk c: rows that route to some un-anchored key, and the additive
    mask (1, 1, n_keep, m) with -inf on the keys of c that are already anchors of each row."""
    ct = structure.chunks
    keys_m = idx.token_index_l[idx.offsets[c]:idx.offsets[c + 1]]
    cls_n = idx.token_class_l[rows_n % L]
    anchored_nm = torch.zeros(rows_n.numel(), keys_m.numel(), dtype=torch.bool)
    if structure.text_anchor:
        anchored_nm |= ct.is_text[ct.chunk_id[keys_m]][None, :]
    if structure.local_anchor == "shot":
        anchored_nm |= idx.shot_id_l[keys_m][None, :] == structure.class_shot[cls_n][:, None]
    else:
        anchored_nm |= ct.chunk_id[keys_m][None, :] == structure.class_chunk[cls_n][:, None]
    keep_n = ~anchored_nm.all(1)
    mask = torch.zeros(anchored_nm.shape, dtype=dtype).masked_fill_(anchored_nm, float("-inf"))
    return keep_n, mask[keep_n][None, None]


def routed_groups_bytes(s: MoCSizes) -> tuple[int, int]:
    """(peak while :func:`routed_groups` builds, what the result keeps). Building: the (BH, C+1, L)
    membership map with its int32 cumulative sum, or above ``_HOT_MAP_MAX`` the sort of int64 pair
    keys; the Python lists of groups (~40 bytes per (bh, chunk), ~150 per non-empty group). Kept:
    padded slot rows (P <= 1.5 E, plus partly anchored pieces), key rows, ``inv_rk`` (N, K)."""
    if not s.slots:
        return 0, 0
    E, BH, C, L = s.pairs, s.bh, s.chunks, s.tokens
    P = (3 * E) // 2 + (E if s.partial_chunks else 0)
    if BH * (C + 1) * L <= _HOT_MAP_MAX:
        tables = 5 * BH * (C + 1) * L + 4 * E * 8
    else:
        tables = 3 * E * 8 + 6 * E * 8 + E
    python = BH * C * 40 + min(BH * C, E) * 150
    kept = P * 8 + s.rows * 8 + E * 8
    return tables + BH * C * 8 + python + kept + 2 * E * 8, kept
