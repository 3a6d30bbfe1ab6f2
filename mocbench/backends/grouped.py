"""Exact sparse attention as gathered groups of queries and keys: the CPU execution of the peer families.

A sparse pattern is written as *groups*: a group is a list of query rows, a list of key rows, and
optionally a boolean ``(n, m)`` mask saying which of the group's keys each of its queries attends
(None: all of them). Two executions, both exact and differentiable by autograd (gathers, SDPA and
index operations only; no L x L tensor, memory follows the pattern's pairs):

* :func:`attend_groups` — *disjoint* groups: every query row is in exactly one group and the group's
  keys (under its mask) are all its keys. Groups of one ``(n, m)`` shape are stacked into one
  ``scaled_dot_product_attention`` call; the outputs are put back in stream order by one
  ``index_select``. Used by static patterns (sliding tiles, radial, SVG) and by VSA's fine stage.
* :func:`attend_partials` — *overlapping* groups over disjoint key sets: a query may be in several
  groups (its own block, each routed block); each group gives a partial output and its log-sum-exp,
  merged exactly: ``o = sum_p exp(lse_p - lse) o_p`` with ``lse = log sum_p exp(lse_p)``. Used by
  per-token routing (VMoBA). Scores are materialised per group (``n x m``), so memory follows pairs.

Rows are either token positions shared by every (batch, head) (``flat=False``: tensors are indexed on
their token axis) or rows of the flattened ``(B*H*L, D)`` tensors (``flat=True``: routing that differs
per batch and head).

Legend: B batch, H heads, L tokens, D head_dim, G groups in a bucket, n queries and m keys of a group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mocbench.backend import Capabilities

# What the gathered execution (impl ``gather`` of the peer families) has been tested on: CPU, every float
# dtype, forward and backward. The code is plain PyTorch and would run on CUDA tensors, but it has not been
# validated or timed there, so it is not declared; the peers' CUDA path is impl ``flex`` (flex_blocks.py).
CPU_ONLY = Capabilities(devices=("cpu",))


@dataclass(frozen=True, eq=False)
class Bucket:
    """Groups of one shape: ``q_idx (G, n)``, ``k_idx (G, m)`` int64 rows, ``mask (G, n, m)`` bool or None."""

    q_idx: torch.Tensor
    k_idx: torch.Tensor
    mask: torch.Tensor | None

    @property
    def pairs(self) -> int:
        if self.mask is None:
            return self.q_idx.shape[0] * self.q_idx.shape[1] * self.k_idx.shape[1]
        return int(self.mask.sum())

    @property
    def gathered_keys(self) -> int:
        return int(self.k_idx.numel())

    @property
    def mask_elements(self) -> int:
        return 0 if self.mask is None else int(self.mask.numel())


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """Buckets of groups over ``rows`` query rows; ``inverse[r]`` is row r's place in the concatenation of
    the buckets' queries (disjoint groups only, else None)."""

    buckets: tuple[Bucket, ...]
    rows: int
    inverse: torch.Tensor | None

    @property
    def pairs(self) -> int:
        return sum(b.pairs for b in self.buckets)

    @property
    def gathered_keys(self) -> int:
        return sum(b.gathered_keys for b in self.buckets)

    @property
    def mask_elements(self) -> int:
        return sum(b.mask_elements for b in self.buckets)

    @property
    def max_bucket_scores(self) -> int:
        """The most ``n x m`` scores one bucket holds (per batch*head row of a shared plan)."""
        return max((b.q_idx.numel() * b.k_idx.shape[1] for b in self.buckets), default=0)

    def to(self, device: torch.device | str) -> GroupPlan:
        dev = torch.device(device)
        if dev.type == "cpu":
            return self
        move = (lambda t: None if t is None else t.to(dev))
        return GroupPlan(tuple(Bucket(move(b.q_idx), move(b.k_idx), move(b.mask)) for b in self.buckets),
                         self.rows, move(self.inverse))


def build_plan(groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], rows: int, *,
               disjoint: bool) -> GroupPlan:
    """Bucket ``groups`` (``(q_idx (n,), k_idx (m,), mask (n, m) | None)``) by shape. With ``disjoint``
    every row in ``[0, rows)`` must be in exactly one group (checked: a pattern bug, not a user error)."""
    by_shape: dict[tuple, list] = defaultdict(list)
    for q_idx, k_idx, mask in groups:
        if q_idx.numel() == 0:
            continue
        by_shape[(q_idx.numel(), k_idx.numel(), mask is None)].append((q_idx, k_idx, mask))
    buckets = []
    for (_, _, no_mask), items in sorted(by_shape.items(), key=lambda kv: kv[0]):
        buckets.append(Bucket(torch.stack([g[0] for g in items]), torch.stack([g[1] for g in items]),
                              None if no_mask else torch.stack([g[2] for g in items])))
    inverse = None
    if disjoint:
        order = torch.cat([b.q_idx.reshape(-1) for b in buckets]) if buckets else torch.zeros(0, dtype=torch.int64)
        if order.numel() != rows or not torch.equal(torch.sort(order).values, torch.arange(rows)):
            raise RuntimeError(f"internal error: disjoint groups cover {order.numel()} query rows with repeats or "
                               f"gaps; expected each of {rows} rows once")
        inverse = torch.empty(rows, dtype=torch.int64)
        inverse[order] = torch.arange(rows, dtype=torch.int64)
    return GroupPlan(tuple(buckets), rows, inverse)


def attend_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GroupPlan, *, scale: float,
                  flat: bool) -> torch.Tensor:
    """Exact attention over disjoint groups; ``q, k, v`` (B, H, L, D) -> (B, H, L, D)."""
    B, H, L, D = q.shape
    if flat:
        q2, k2, v2 = (t.reshape(B * H * L, D) for t in (q, k, v))
    outs = []
    for b in plan.buckets:
        G, n = b.q_idx.shape
        m = b.k_idx.shape[1]
        mask = None if b.mask is None else b.mask.unsqueeze(0)  # (1, G, n, m)
        if flat:
            qg = q2[b.q_idx.reshape(-1)].view(1, G, n, D)
            kg, vg = (t[b.k_idx.reshape(-1)].view(1, G, m, D) for t in (k2, v2))
            outs.append(F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale).reshape(G * n, D))
        else:
            qg = q[:, :, b.q_idx.reshape(-1)].reshape(B * H, G, n, D)
            kg, vg = (t[:, :, b.k_idx.reshape(-1)].reshape(B * H, G, m, D) for t in (k, v))
            out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
            outs.append(out.reshape(B, H, G * n, D))
    if flat:
        return torch.cat(outs, 0).index_select(0, plan.inverse).view(B, H, L, D)
    return torch.cat(outs, 2).index_select(2, plan.inverse)


def attend_partials(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GroupPlan, *,
                    scale: float) -> torch.Tensor:
    """Exact attention over overlapping groups with disjoint key sets per query (flat rows), merged by
    log-sum-exp; computed in ``promote(dtype, float32)`` and returned in the input dtype."""
    B, H, L, D = q.shape
    R = B * H * L
    ct = torch.promote_types(q.dtype, torch.float32)
    q2, k2, v2 = (t.reshape(R, D).to(ct) for t in (q, k, v))
    rows, lses, outs = [], [], []
    for b in plan.buckets:
        G, n = b.q_idx.shape
        m = b.k_idx.shape[1]
        s = (q2[b.q_idx.reshape(-1)].view(G, n, D) @ k2[b.k_idx.reshape(-1)].view(G, m, D).transpose(1, 2)) * scale
        if b.mask is not None:
            s = s.masked_fill(~b.mask, float("-inf"))
        lse = torch.logsumexp(s, dim=-1)  # (G, n); finite: every query of a group attends >= 1 of its keys
        p = torch.exp(s - lse.unsqueeze(-1))
        outs.append((p @ v2[b.k_idx.reshape(-1)].view(G, m, D)).reshape(G * n, D))
        lses.append(lse.reshape(-1))
        rows.append(b.q_idx.reshape(-1))
    rows_t, lse_t, out_t = torch.cat(rows), torch.cat(lses), torch.cat(outs)
    top = torch.full((R,), float("-inf"), dtype=ct, device=q.device)
    top = top.scatter_reduce(0, rows_t, lse_t.detach(), reduce="amax")
    total = torch.zeros(R, dtype=ct, device=q.device).index_add(0, rows_t, torch.exp(lse_t - top[rows_t]))
    lse_all = top + torch.log(total)
    weight = torch.exp(lse_t - lse_all[rows_t]).unsqueeze(-1)
    out = torch.zeros(R, D, dtype=ct, device=q.device).index_add(0, rows_t, weight * out_t)
    return out.view(B, H, L, D).to(q.dtype)


def plan_block_pairs(plan: GroupPlan, tokens: int, bh: int, block_shape: tuple[int, int], *, flat: bool,
                     order: torch.Tensor | None = None) -> torch.Tensor:
    """(bh or 1, QB, KB) float32: the number of attended (query, key) pairs in every ``bq x bk`` block of the
    query x key grid, from the groups alone (never L x L). Exact: a query's keys are distinct within a group
    and, across the groups it is in, disjoint (both executions' contract), and a block holds at most
    ``bq * bk`` < 2^24 pairs. ``order`` (L,) is the token order a kernel runs in (block of a token = its rank
    in ``order``); None: stream order. A shared plan (``flat=False``) has one grid, for every (batch, head)."""
    bq, bk = block_shape
    QB, KB = -(-tokens // bq), -(-tokens // bk)
    rank = torch.arange(tokens) if order is None else torch.empty(tokens, dtype=torch.int64).index_put_(
        (order.cpu(),), torch.arange(tokens))
    grids = torch.zeros(bh if flat else 1, QB, KB, dtype=torch.float32)
    for b in plan.buckets:
        q_idx, k_idx = b.q_idx.cpu(), b.k_idx.cpu()
        G = q_idx.shape[0]
        head = q_idx[:, 0] // tokens if flat else torch.zeros(G, dtype=torch.int64)
        qb, kb = rank[q_idx % tokens] // bq, rank[k_idx % tokens] // bk  # (G, n), (G, m)
        if b.mask is None:
            pq = torch.zeros(G, QB).index_put_((torch.arange(G)[:, None], qb), torch.ones(()), accumulate=True)
            pk = torch.zeros(G, KB).index_put_((torch.arange(G)[:, None], kb), torch.ones(()), accumulate=True)
            grids.index_add_(0, head, pq[:, :, None] * pk[:, None, :])
            continue
        step = max(1, (32 << 20) // (4 * (qb.shape[1] * QB + kb.shape[1] * KB)))  # one-hot slices <= ~32 MB
        for a in range(0, G, step):
            pq = torch.nn.functional.one_hot(qb[a:a + step], QB).float()  # (g, n, QB)
            pk = torch.nn.functional.one_hot(kb[a:a + step], KB).float()  # (g, m, KB)
            grids.index_add_(0, head[a:a + step], pq.transpose(1, 2) @ b.mask[a:a + step].cpu().float() @ pk)
    return grids


def plan_block_grid(plan: GroupPlan, tokens: int, bh: int, block_shape: tuple[int, int], *, flat: bool,
                    order: torch.Tensor | None = None) -> torch.Tensor:
    """(bh, QB, KB) bool: the blocks holding an attended pair (moc-spec §10), from :func:`plan_block_pairs`."""
    out = plan_block_pairs(plan, tokens, bh, block_shape, flat=flat, order=order) > 0
    return out if flat else out.expand(bh, *out.shape[1:])
