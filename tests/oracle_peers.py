"""Independent float64 oracles of the peer video families, written from docs/specs/*.md.

Like tests/oracle.py (whose per-token facts, chunker and masked softmax it reuses), nothing here imports
mocbench's backend code: patterns are built with plain Python loops over (query, key) pairs at tiny sizes,
routing with explicit float64 arithmetic. Every function returns what the spec defines: a (B, H, L, L)
bool pattern, or for VSA and SVG the output itself.

Shared caption rule (docs/specs/README.md): every query attends every caption token; a caption query
also attends every video token of its own shot; video x video pairs follow the family's rule.
"""

from __future__ import annotations

import math

import torch
from oracle import attend, chunks, tokens


def _caption_rule(layout, video_rule) -> torch.Tensor:
    """(L, L) pattern from a video rule ``video_rule(ti, tj)`` on two video tokens of one shot."""
    toks = tokens(layout)
    L = len(toks)
    m = torch.zeros(L, L, dtype=torch.bool)
    for i, ti in enumerate(toks):
        for j, tj in enumerate(toks):
            if tj.is_text:
                m[i, j] = True
            elif ti.is_text:
                m[i, j] = ti.shot == tj.shot
            else:
                m[i, j] = ti.shot == tj.shot and video_rule(ti, tj)
    return m


def _frames_of_shot(layout) -> dict[int, int]:
    return {seg.shot: seg.frames for seg in layout.segments if seg.kind == "video"}


def _triple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


# --------------------------------------------------------------------------- sliding tile (STA)
def sliding_tile_mask(layout, *, tile: str = "6,8,8", window: str = "3,3,3") -> torch.Tensor:
    """docs/specs/sliding_tile.md: tile b is attended iff, per axis, start <= b <= start + K - 1 with
    start = clamp(a - K//2, 0, max(n - K, 0))."""
    t, h, w = _triple(tile)
    K = _triple(window)
    H, W = layout.frame_shape
    frames = _frames_of_shot(layout)

    def rule(ti, tj):
        a = (ti.frame // t, ti.row // h, ti.col // w)
        b = (tj.frame // t, tj.row // h, tj.col // w)
        n = (math.ceil(frames[ti.shot] / t), math.ceil(H / h), math.ceil(W / w))
        for d in range(3):
            start = min(max(a[d] - K[d] // 2, 0), max(n[d] - K[d], 0))
            if not start <= b[d] <= start + K[d] - 1:
                return False
        return True

    return _caption_rule(layout, rule)


# --------------------------------------------------------------------------- radial
def radial_mask(layout, *, dense_frames: int = 1, decay: float = 1.0, min_width: int = 1,
                sink: bool = True) -> torch.Tensor:
    """docs/specs/radial.md, pair by pair."""
    P = layout.tokens_per_frame

    def rule(ti, tj):
        if sink and tj.frame == 0:
            return True
        d = abs(ti.frame - tj.frame)
        if d <= dense_frames:
            return True
        r = math.floor(math.log2(d)) + 1  # bit length of d
        decay_len = 2 ** (math.floor(math.log2(P)) + 1) / 2 ** r
        if decay_len < min_width and d % math.floor(min_width / decay_len) != 0:
            return False
        return abs(ti.patch - tj.patch) <= max(decay * decay_len, min_width)

    return _caption_rule(layout, rule)


# --------------------------------------------------------------------------- VMoBA
def vmoba_rule(layout, *, layer: int = 0, temporal_chunk: int = 1, spatial_chunk: str = "2,5",
               st_chunk: str = "1,2,5", **_ignored) -> str:
    """docs/specs/vmoba.md: the partition of layer ``layer`` as a chunking rule."""
    kind = layer % 3
    if kind == 0:
        return f"frames:{temporal_chunk}"
    if kind == 1:
        return f"cubes:{max(seg.frames for seg in layout.segments if seg.kind == 'video')},{spatial_chunk}"
    return f"cubes:{st_chunk}"


def _vmoba_choice(g: list[float], own: int, *, select: str, threshold: float, top_k: int) -> tuple[set[int], float]:
    """(selected blocks incl. own, decision margin) for one query's gates ``g`` over its shot's blocks."""
    C = len(g)
    others = [c for c in range(C) if c != own]
    if not others:
        return {own}, math.inf
    if select == "topk":
        ranked = sorted(others, key=lambda c: (-g[c], c))
        kk = min(top_k - 1, len(others))
        margin = g[ranked[kk - 1]] - g[ranked[kk]] if 0 < kk < len(ranked) else math.inf
        return {own, *ranked[:kk]}, margin
    lo, hi = min(g), max(g)
    spread = hi - lo if hi - lo > 1e-6 else 1.0
    gn = [(x - lo) / spread for x in g]
    total = sum(gn)
    if total == 0:
        return set(range(C)), math.inf
    share = threshold - gn[own] / total
    target = max(share, 0.0) * total
    ranked = sorted(others, key=lambda c: (-gn[c], c))
    # target == 0 (a clear clamp) makes the first comparison true in any precision: only |share| matters
    cum, chosen, margin = 0.0, len(ranked), abs(share)
    for n_taken, c in enumerate(ranked, start=1):
        cum += gn[c]
        if target > 0:
            margin = min(margin, abs(cum - target) / total)
        if cum >= target:
            chosen = n_taken
            break
    if chosen < len(ranked):
        margin = min(margin, gn[ranked[chosen - 1]] - gn[ranked[chosen]])
    return {own, *ranked[:chosen]}, margin


def vmoba_mask_and_margin(q, k, layout, *, select: str = "threshold", threshold: float = 0.25, top_k: int = 3,
                          **partition) -> tuple[torch.Tensor, float]:
    """(B, H, L, L) pattern and the smallest routing decision margin (for re-drawing near-ties)."""
    toks = tokens(layout)
    L = len(toks)
    ch = chunks(layout, vmoba_rule(layout, **partition))
    block_of = [0] * L
    for c, members in enumerate(ch):
        for t in members:
            block_of[t] = c
    base = _caption_rule(layout, lambda ti, tj: block_of[ti.pos] == block_of[tj.pos])  # captions + own block
    q64, k64 = q.detach().double(), k.detach().double()
    B, H = q.shape[:2]
    mask = base[None, None].repeat(B, H, 1, 1)
    margin = math.inf
    for i, ti in enumerate(toks):
        if ti.is_text:
            continue
        blocks = [c for c, m in enumerate(ch) if not toks[m[0]].is_text and toks[m[0]].shot == ti.shot]
        own = blocks.index(block_of[i])
        for b in range(B):
            for h in range(H):
                g = [float(q64[b, h, i] @ k64[b, h, ch[c]].mean(0)) for c in blocks]
                chosen, m = _vmoba_choice(g, own, select=select, threshold=threshold, top_k=top_k)
                margin = min(margin, m)
                for local in chosen:
                    mask[b, h, i, ch[blocks[local]]] = True
    return mask, margin


# --------------------------------------------------------------------------- VSA
def vsa(q, k, v, layout, *, cube: str = "4,4,4", top_k: int = 32, coarse_gate: float = 1.0):
    """docs/specs/vsa.md. Returns (output (differentiable, float64), fine pattern (B, H, L, L), selection
    margin): fine = masked softmax over captions + the top_k cubes of the query's cube by pooled score,
    output = fine + coarse_gate * softmax(pooled scores) @ pooled values (video queries only)."""
    toks = tokens(layout)
    L = len(toks)
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    B, H, _, D = q.shape
    scale = 1.0 / math.sqrt(D)
    cubes = [c for c in chunks(layout, f"cubes:{cube}") if not toks[c[0]].is_text]
    cube_of = {t: ci for ci, c in enumerate(cubes) for t in c}
    pooled = [torch.stack([t[:, :, c].mean(2) for c in cubes], 2) for t in (q, k, v)]  # (B, H, C, D)
    scores = pooled[0] @ pooled[1].transpose(-1, -2) * scale
    coarse = torch.softmax(scores, -1) @ pooled[2]
    kk = min(top_k, len(cubes))
    caption = _caption_rule(layout, lambda ti, tj: False)
    mask = caption[None, None].repeat(B, H, 1, 1)
    margin = math.inf
    s64 = scores.detach()
    for b in range(B):
        for h in range(H):
            for ci in range(len(cubes)):
                row = sorted(range(len(cubes)), key=lambda j: -float(s64[b, h, ci, j]))
                if kk < len(cubes):
                    margin = min(margin, float(s64[b, h, ci, row[kk - 1]] - s64[b, h, ci, row[kk]]))
                for i in cubes[ci]:
                    for j in row[:kk]:
                        mask[b, h, i, cubes[j]] = True
    rows = [cube_of.get(i, -1) for i in range(L)]
    coarse_tok = torch.stack([coarse[:, :, r] if r >= 0 else torch.zeros_like(coarse[:, :, 0]) for r in rows], 2)
    return attend(q, k, v, mask) + coarse_gate * coarse_tok, mask, margin


# --------------------------------------------------------------------------- SVG
def svg_masks(layout, *, width: float = 2.0, sink: bool = True, **_ignored) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/specs/svg.md: the (L, L) spatial and temporal patterns (caption rule included)."""
    P = layout.tokens_per_frame
    frames = _frames_of_shot(layout)

    def spatial(ti, tj):
        return (sink and tj.frame == 0) or abs((ti.frame * P + ti.patch) - (tj.frame * P + tj.patch)) < width * P

    def temporal(ti, tj):
        band = max(1, math.floor(width * P / frames[ti.shot]))
        return (sink and tj.frame == 0) or abs(ti.patch - tj.patch) < band

    return _caption_rule(layout, spatial), _caption_rule(layout, temporal)


def svg_mask_and_margin(q, k, layout, *, width: float = 2.0, sink: bool = True, num_samples: int = 64):
    """(B, H, L, L) pattern and the smallest |mass_temporal - mass_spatial| over heads."""
    toks = tokens(layout)
    video = [t.pos for t in toks if not t.is_text]
    n = min(num_samples, len(video))
    rows = [video[math.floor((j + 0.5) * len(video) / n)] for j in range(n)]
    spatial, temporal = svg_masks(layout, width=width, sink=sink)
    q64, k64 = q.detach().double(), k.detach().double()
    p = torch.softmax(q64[:, :, rows] @ k64.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)  # (B, H, n, L)
    m_s = (p * spatial[rows]).sum(-1).mean(-1)
    m_t = (p * temporal[rows]).sum(-1).mean(-1)
    choose_t = m_t > m_s
    mask = torch.where(choose_t[:, :, None, None], temporal, spatial)
    if torch.equal(spatial[rows], temporal[rows]):
        return mask, math.inf  # equal masks on the samples: an exact tie (spatial) in any precision
    return mask, float((m_t - m_s).abs().min())


# --------------------------------------------------------------------------- dispatch
STATIC = {"sliding_tile": sliding_tile_mask, "radial": radial_mask}


def static_pattern(name: str, params: dict, layout, B: int, H: int) -> torch.Tensor:
    return STATIC[name](layout, **params)[None, None].expand(B, H, -1, -1).clone()


def chunk_members(layout, rule: str) -> list[list[int]]:
    return chunks(layout, rule)




def pattern_and_margin(name: str, params: dict, q, k, layout) -> tuple[torch.Tensor, float]:
    """Any family's (B, H, L, L) oracle pattern (VSA: its fine stage) and its smallest routing margin (inf for
    the static families)."""
    B, H = q.shape[:2]
    if name in STATIC:
        return static_pattern(name, params, layout, B, H), math.inf
    if name == "svg":
        return svg_mask_and_margin(q, k, layout, **params)
    if name == "vmoba":
        return vmoba_mask_and_margin(q, k, layout, **params)
    if name == "vsa":
        _, mask, margin = vsa(q, k, k, layout, **params)
        return mask, margin
    raise KeyError(f"no oracle for {name!r}")


def output(name: str, params: dict, q, k, v, layout, pattern: torch.Tensor) -> torch.Tensor:
    """The family's output in float64 (differentiable): the masked softmax over ``pattern``; VSA adds its
    coarse term (docs/specs/vsa.md)."""
    if name == "vsa":
        return vsa(q, k, v, layout, **params)[0]
    return attend(q, k, v, pattern)
