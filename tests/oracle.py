"""An independent float64 oracle for mocbench's attention backends, written from docs/moc-spec.md.

Nothing here imports mocbench's chunking, anchor-structure, routing, reference or accounting
code: the only thing read from mocbench is the public ``TokenLayout.segments`` list. Sizes are
tiny (L <= ~120), so clarity wins over speed: per-token facts, chunks and anchors are built
with plain Python loops; only routing scores and the masked softmax use torch (float64).

Vocabulary (moc-spec):
* chunks (§3): a partition of the stream; each caption is one chunk, video segments are cut by
  a rule (``shot``, ``frame``, ``frames:n``, ``tokens:m``, ``fixed:m``, ``cubes:t,h,w``); chunk index =
  rank of the chunk's first token position ("order"). Frame geometry ``(h, w)`` is read from the
  public ``TokenLayout.frame_shape``: patch ``p`` of a frame is row ``p // w``, column ``p % w``.
* anchors (§4): text anchor (every text token), local anchor ``shot`` (own shot) or ``chunk``
  (own chunk); ``local_anchor=None`` means ``shot`` for multi-shot layouts, ``chunk`` otherwise.
* candidates (§5): chunks not entirely covered by the query's anchors and, if causal, with
  ``order(c) < order(own chunk)``; ``Omega(i)`` = top_k candidates by ``q_i . phi_c``.
* tile routing (§9): query tiles = pieces (maximal runs in one chunk and one segment) cut by the grid
  ``[g*tile, (g+1)*tile)``; ``Omega(t)`` = top_k candidates by ``mean_{i in t}(q_i) . phi_c``, for every
  query of t.
* fixed sparse baselines (§8 + mocbench/backends/fixed_sparse.py docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


# --------------------------------------------------------------------------- tokens and chunks
@dataclass(frozen=True)
class Tok:
    pos: int
    is_text: bool
    shot: int
    frame: int  # -1 for text
    seg: int  # index of the segment in layout.segments
    patch: int = -1  # index inside the frame (row-major); -1 for text
    row: int = -1  # patch row, -1 for text or when the layout has no frame_shape
    col: int = -1


def tokens(layout) -> list[Tok]:
    """Per-token facts straight from ``layout.segments`` (frame-major video segments, row-major frames)."""
    out: list[Tok] = []
    pos = 0
    width = layout.frame_shape[1] if layout.frame_shape is not None else None
    for si, seg in enumerate(layout.segments):
        if seg.kind == "text":
            for _ in range(seg.tokens):
                out.append(Tok(pos, True, seg.shot, -1, si))
                pos += 1
        else:
            for f in range(seg.frames):
                for p in range(seg.tokens_per_frame):
                    row, col = (p // width, p % width) if width else (-1, -1)
                    out.append(Tok(pos, False, seg.shot, f, si, p, row, col))
                    pos += 1
    return out


def num_shots(layout) -> int:
    return max(seg.shot for seg in layout.segments) + 1


def parse_rule(rule: str) -> tuple[str, int | tuple[int, int, int]]:
    if rule in ("shot", "frame"):
        return rule, 0
    kind, sep, n = rule.partition(":")
    if kind == "cubes":
        dims = tuple(int(x) for x in n.split(","))
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"oracle: bad chunking rule {rule!r}")
        return kind, dims
    if not sep or kind not in ("frames", "tokens", "fixed") or int(n) < 1:
        raise ValueError(f"oracle: bad chunking rule {rule!r}")
    return kind, int(n)


def chunks(layout, rule: str) -> list[list[int]]:
    """Chunks (lists of token positions) in stream order of their first token (moc-spec §3)."""
    kind, n = parse_rule(rule)
    out: list[list[int]] = []
    fixed_stream: list[int] = []  # fixed:m — every video token of the stream, in order
    pos = 0
    for seg in layout.segments:
        if seg.kind == "text":
            out.append(list(range(pos, pos + seg.tokens)))
        else:
            P, F = seg.tokens_per_frame, seg.frames
            seg_tokens = list(range(pos, pos + F * P))
            frames = [seg_tokens[f * P:(f + 1) * P] for f in range(F)]
            if kind == "shot":
                out.append(seg_tokens)
            elif kind == "frame":
                out.extend(frames)
            elif kind == "frames":
                for a in range(0, F, n):
                    out.append([t for fr in frames[a:a + n] for t in fr])
            elif kind == "tokens":
                for a in range(0, len(seg_tokens), n):
                    out.append(seg_tokens[a:a + n])
            elif kind == "cubes":
                # 3D tiles of t frames x h rows x w columns, partial at the edges (moc-spec §3)
                t, h, w = n
                width = layout.frame_shape[1]
                cubes: dict[tuple[int, int, int], list[int]] = {}
                for f in range(F):
                    for p in range(P):
                        key = (f // t, (p // width) // h, (p % width) // w)
                        cubes.setdefault(key, []).append(pos + f * P + p)
                out.extend(cubes.values())
            else:  # fixed
                fixed_stream.extend(seg_tokens)
        pos += seg.length
    if kind == "fixed":
        for a in range(0, len(fixed_stream), n):
            out.append(fixed_stream[a:a + n])
    out.sort(key=lambda c: c[0])
    assert sorted(t for c in out for t in c) == list(range(pos)), "oracle chunks must partition the stream"
    return out


def chunk_of(chunk_list: list[list[int]], L: int) -> list[int]:
    cid = [-1] * L
    for c, toks in enumerate(chunk_list):
        for t in toks:
            cid[t] = c
    return cid


def resolve_local_anchor(layout, local_anchor: str | None) -> str:
    if local_anchor is None:
        return "shot" if num_shots(layout) > 1 else "chunk"
    assert local_anchor in ("shot", "chunk")
    return local_anchor


# --------------------------------------------------------------------------- MoC structure
@dataclass
class MoCStructure:
    L: int
    chunks: list[list[int]]
    chunk_of: list[int]
    anchor: torch.Tensor  # (L, L) bool: query i always attends key j
    candidate: torch.Tensor  # (L, C) bool: chunk c may be routed to query i
    local_anchor: str


def moc_structure(layout, *, chunking: str = "frame", text_anchor: bool = True,
                  local_anchor: str | None = None, causal: bool = True) -> MoCStructure:
    toks = tokens(layout)
    L = len(toks)
    ch = chunks(layout, chunking)
    cid = chunk_of(ch, L)
    la = resolve_local_anchor(layout, local_anchor)
    anchor = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            a = text_anchor and toks[j].is_text
            if la == "shot":
                a = a or toks[j].shot == toks[i].shot
            else:
                a = a or cid[j] == cid[i]
            anchor[i, j] = a
    cand = torch.zeros(L, len(ch), dtype=torch.bool)
    for i in range(L):
        own_order = ch[cid[i]][0]
        for c, toks_c in enumerate(ch):
            if all(bool(anchor[i, j]) for j in toks_c):
                continue  # entirely covered by i's anchors
            if causal and not toks_c[0] < own_order:
                continue
            cand[i, c] = True
    return MoCStructure(L, ch, cid, anchor, cand, la)


def chunk_descriptors(k: torch.Tensor, chunk_list: list[list[int]]) -> torch.Tensor:
    """phi: (B, H, C, D) float64, mean of the keys of each chunk."""
    k64 = k.detach().to(torch.float64)
    return torch.stack([k64[:, :, idx, :].mean(dim=2) for idx in chunk_list], dim=2)


def routing_scores(q: torch.Tensor, k: torch.Tensor, chunk_list: list[list[int]]) -> torch.Tensor:
    """(B, H, L, C) float64 scores q_i . phi_c."""
    return q.detach().to(torch.float64) @ chunk_descriptors(k, chunk_list).transpose(-1, -2)


def moc_selection(q, k, st: MoCStructure, top_k: int) -> torch.Tensor:
    """(B, H, L, C) bool: Omega(i) per batch, head and query."""
    B, H = q.shape[:2]
    C = len(st.chunks)
    sel = torch.zeros(B, H, st.L, C, dtype=torch.bool)
    if top_k == 0:
        return sel
    scores = routing_scores(q, k, st.chunks)
    for i in range(st.L):
        cands = torch.nonzero(st.candidate[i]).flatten()
        if len(cands) == 0:
            continue
        kk = min(top_k, len(cands))
        best = scores[:, :, i, cands].topk(kk, dim=-1).indices  # (B, H, kk)
        for b in range(B):
            for h in range(H):
                for c in cands[best[b, h]].tolist():
                    sel[b, h, i, c] = True
    return sel


def expand_selection(sel: torch.Tensor, st: MoCStructure) -> torch.Tensor:
    """Chunk-level selection (B, H, L, C) -> key-level (B, H, L, L)."""
    return sel[..., torch.tensor(st.chunk_of, dtype=torch.long)]


# --------------------------------------------------------------------------- tile routing (§9)
def query_tiles(layout, chunking: str, tile: int) -> list[list[int]]:
    """Query tiles: pieces (maximal runs of consecutive positions in one chunk and one segment) cut by
    the grid cells [g*tile, (g+1)*tile), in stream order. Written per position from the spec's words."""
    toks = tokens(layout)
    cid = chunk_of(chunks(layout, chunking), len(toks))
    out: list[list[int]] = []
    for t in toks:
        i = t.pos
        same_piece = i > 0 and cid[i] == cid[i - 1] and toks[i - 1].seg == t.seg
        if same_piece and i // tile == (i - 1) // tile:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def tile_selection(q, k, st: MoCStructure, top_k: int, tile_list: list[list[int]]) -> torch.Tensor:
    """(B, H, L, C) bool: Omega(t) = top_k of the tile's candidates by mean_{i in t}(q_i) . phi_c, given to
    every query of tile t."""
    B, H = q.shape[:2]
    sel = torch.zeros(B, H, st.L, len(st.chunks), dtype=torch.bool)
    if top_k == 0:
        return sel
    phi = chunk_descriptors(k, st.chunks)  # (B, H, C, D)
    q64 = q.detach().to(torch.float64)
    for t in tile_list:
        cands = torch.nonzero(st.candidate[t[0]]).flatten()
        assert all(torch.equal(st.candidate[i], st.candidate[t[0]]) for i in t), "a tile has one candidate set"
        if len(cands) == 0:
            continue
        qbar = q64[:, :, t, :].mean(dim=2)  # (B, H, D)
        scores = (qbar[:, :, None, :] * phi[:, :, cands, :]).sum(-1)  # (B, H, n_cand)
        best = scores.topk(min(top_k, len(cands)), dim=-1).indices
        for b in range(B):
            for h in range(H):
                for c in cands[best[b, h]].tolist():
                    sel[b, h, t, c] = True
    return sel


def tile_routing_margin(q, k, st: MoCStructure, top_k: int, tile_list: list[list[int]]) -> float:
    """Smallest gap between the top_k-th and (top_k+1)-th candidate tile score where the choice matters."""
    phi = chunk_descriptors(k, st.chunks)
    q64 = q.detach().to(torch.float64)
    margin = math.inf
    for t in tile_list:
        cands = torch.nonzero(st.candidate[t[0]]).flatten()
        if len(cands) <= top_k:
            continue
        s = (q64[:, :, t, :].mean(dim=2)[:, :, None, :] * phi[:, :, cands, :]).sum(-1)
        s = s.sort(dim=-1, descending=True).values
        margin = min(margin, float((s[..., top_k - 1] - s[..., top_k]).min()))
    return margin


def _check_routing(routing: str, tile: int | None) -> int:
    """The tile size of ``routing`` (1 for per-token routing: every token is its own tile)."""
    if routing == "token":
        assert tile is None, "oracle: tile only with routing='tile'"
        return 1
    assert routing == "tile", f"oracle: unknown routing {routing!r}"
    return 128 if tile is None else tile  # the spec's default


def moc_mask(q, k, layout, *, top_k: int, chunking: str = "frame", text_anchor: bool = True,
             local_anchor: str | None = None, causal: bool = True, routing: str = "token", tile: int | None = None,
             **_ignored) -> torch.Tensor:
    """(B, H, L, L) bool: the attended set A(i) = anchors U tokens of Omega(i) (eval mode); with
    ``routing="tile"`` Omega(i) = Omega(tile of i) (§9)."""
    size = _check_routing(routing, tile)
    st = moc_structure(layout, chunking=chunking, text_anchor=text_anchor, local_anchor=local_anchor, causal=causal)
    if routing == "tile":
        sel = tile_selection(q, k, st, top_k, query_tiles(layout, chunking, size))
    else:
        sel = moc_selection(q, k, st, top_k)
    return st.anchor[None, None] | expand_selection(sel, st)


def routing_margin(q, k, layout, *, top_k: int, chunking: str = "frame", text_anchor: bool = True,
                   local_anchor: str | None = None, causal: bool = True, routing: str = "token",
                   tile: int | None = None, **_ignored) -> float:
    """Smallest gap between the top_k-th and (top_k+1)-th candidate score over every
    (batch, head, query) -- or query tile, with ``routing="tile"`` -- where the choice matters;
    ``inf`` when routing is never a choice."""
    size = _check_routing(routing, tile)
    if top_k == 0:
        return math.inf
    st = moc_structure(layout, chunking=chunking, text_anchor=text_anchor, local_anchor=local_anchor, causal=causal)
    if routing == "tile":
        return tile_routing_margin(q, k, st, top_k, query_tiles(layout, chunking, size))
    scores = routing_scores(q, k, st.chunks)
    margin = math.inf
    for i in range(st.L):
        cands = torch.nonzero(st.candidate[i]).flatten()
        if len(cands) <= top_k:
            continue
        s = scores[:, :, i, cands].sort(dim=-1, descending=True).values
        margin = min(margin, float((s[..., top_k - 1] - s[..., top_k]).min()))
    return margin


# --------------------------------------------------------------------------- fixed sparse patterns (L, L)
def shot_local_mask(layout, *, text_anchor: bool = True) -> torch.Tensor:
    toks = tokens(layout)
    L = len(toks)
    m = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            m[i, j] = (text_anchor and toks[j].is_text) or toks[j].shot == toks[i].shot
    return m


def frame_window_mask(layout, *, window: int = 1, text_anchor: bool = True) -> torch.Tensor:
    toks = tokens(layout)
    L = len(toks)
    m = torch.zeros(L, L, dtype=torch.bool)
    for i, ti in enumerate(toks):
        for j, tj in enumerate(toks):
            if text_anchor and tj.is_text:
                m[i, j] = True
            elif ti.is_text:
                # a caption query has no frame: text anchor, or only its own caption when it is off
                m[i, j] = tj.seg == ti.seg
            else:
                m[i, j] = (not tj.is_text) and tj.shot == ti.shot and abs(tj.frame - ti.frame) <= window
    return m


def strided_mask(layout, *, stride: int = 4, chunking: str = "frame", text_anchor: bool = True) -> torch.Tensor:
    toks = tokens(layout)
    L = len(toks)
    cid = chunk_of(chunks(layout, chunking), L)
    m = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j, tj in enumerate(toks):
            m[i, j] = (text_anchor and tj.is_text) or cid[j] == cid[i] or cid[j] % stride == 0
    return m


def dense_mask(layout) -> torch.Tensor:
    L = layout.num_tokens
    return torch.ones(L, L, dtype=torch.bool)


def pattern(name: str, params: dict, q: torch.Tensor, k: torch.Tensor, layout) -> torch.Tensor:
    """(B, H, L, L) bool pattern of backend ``name`` with ``params`` (eval mode)."""
    B, H = q.shape[:2]
    if name == "moc":
        return moc_mask(q, k, layout, **params)
    static = {"shot_local": shot_local_mask, "frame_window": frame_window_mask, "strided": strided_mask}
    if name in static:
        m = static[name](layout, **params)
    elif name == "dense":
        m = dense_mask(layout)
    else:
        raise KeyError(name)
    return m[None, None].expand(B, H, -1, -1).clone()


# --------------------------------------------------------------------------- attention
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
           scale: float | None = None) -> torch.Tensor:
    """Exact float64 attention restricted to ``mask`` (explicit masked softmax, differentiable)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    mask = mask.to(q.device)
    assert bool(mask.any(dim=-1).all()), "every query must attend at least one key"
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    w = torch.exp(logits - row_max) * mask
    p = w / w.sum(dim=-1, keepdim=True)
    return p @ v


def pairs(mask: torch.Tensor) -> int:
    return int(mask.sum())
