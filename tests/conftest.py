"""Shared helpers for the oracle tests: seeded random layouts, never-zero random q/k/v, and
the deterministic case lists that the test modules parametrize over.

Everything is seeded: a case's id names its index, so a failure reproduces with
``pytest -k <id>``. Near-ties in MoC routing (top_k-th vs (top_k+1)-th candidate score closer
than ``MIN_MARGIN`` in float64) would let float32 routing legitimately differ from the
oracle, so such inputs are re-drawn with the next seed (see :func:`draw_inputs`).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import oracle
import pytest
import torch

import mocbench
from mocbench import Segment, TokenLayout
from mocbench.backends.moc.impls import IMPLS

MIN_MARGIN = 1e-4
LAYOUT_KINDS = ("single", "interleaved", "front", "back", "segments")
# The MoC implementations the CPU oracle tests run: every impl that runs on CPU, except compiled ``flex``
# (inductor compiles once per shape, ~10 s each; its block mask is the one ``flex_eager`` runs, and
# tests/test_moc_flex.py checks the compiled kernel on CPU).
def moc_cpu_impls() -> list[str]:
    return sorted(n for n, impl in IMPLS.items() if "cpu" in impl.caps.devices and n != "flex")


MOC_RULES = ("shot", "frame", "frames:2", "frames:3", "tokens:3", "tokens:5", "fixed:4", "fixed:7")


# --------------------------------------------------------------------------- layouts
def kind_of(i: int) -> str:
    """The layout kind of case ``i``: the kinds in turn, so every kind is covered."""
    return LAYOUT_KINDS[i % len(LAYOUT_KINDS)]


def random_layout(rng: random.Random, kind: str, *, geometry: bool = False) -> TokenLayout:
    """A random layout of ``kind``:

    * ``single``: one shot, caption 0-5 tokens (0 = no caption);
    * ``interleaved``: 1-4 shots ``text_s, video_s``, every caption 0-5 tokens;
    * ``front``: one global caption (0-5 tokens, shot 0) then every shot's video;
    * ``back``: every shot's video then one global caption (0-5 tokens, owned by the last shot);
    * ``segments``: explicit segments, each shot's caption (if any) before *or after* its video.

    1-4 frames per shot, 1-6 tokens per frame, so L <= 4*4*6 + 4*5 = 116. With ``geometry=True`` the
    layout has a random ``frame_shape`` (1-3 rows x 1-4 columns, so L <= 4*4*12 + 4*5 = 212).
    """
    if geometry:
        shape = (rng.randint(1, 3), rng.randint(1, 4))
        return _random_layout(rng, kind, shape[0] * shape[1]).with_frame_shape(shape)
    return _random_layout(rng, kind, rng.randint(1, 6))


def _random_layout(rng: random.Random, kind: str, tpf: int) -> TokenLayout:
    if kind == "single":
        return TokenLayout.single_shot(text_tokens=rng.randint(0, 5), frames=rng.randint(1, 4), tokens_per_frame=tpf)
    shots = rng.randint(1, 4)
    frames = [rng.randint(1, 4) for _ in range(shots)]
    if kind == "interleaved":
        return TokenLayout.multi_shot(text_tokens=[rng.randint(0, 5) for _ in range(shots)], frames=frames,
                                      tokens_per_frame=tpf, text_placement="interleaved")
    if kind in ("front", "back"):
        return TokenLayout.multi_shot(text_tokens=[rng.randint(0, 5)], frames=frames, tokens_per_frame=tpf,
                                      text_placement=kind)
    if kind == "segments":
        segs = []
        for s in range(shots):
            video = Segment("video", s, frames=frames[s], tokens_per_frame=tpf)
            n = rng.randint(0, 5)
            where = rng.choice(("before", "after"))
            if n and where == "before":
                segs.append(Segment("text", s, tokens=n))
            segs.append(video)
            if n and where == "after":
                segs.append(Segment("text", s, tokens=n))
        return TokenLayout.from_segments(segs)
    raise ValueError(kind)


def layout_tag(layout: TokenLayout) -> str:
    parts = []
    for s in layout.segments:
        parts.append(f"T{s.shot}x{s.tokens}" if s.kind == "text" else f"V{s.shot}x{s.frames}x{s.tokens_per_frame}")
    return "_".join(parts)


# --------------------------------------------------------------------------- tensors
def randn_nonzero(shape, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Standard normal, with entries too close to zero pushed to +-0.5 (inputs are never zero)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = torch.where(x.abs() < 1e-2, torch.where(x < 0, -0.5, 0.5), x)
    return x.to(dtype)


def qkv(shape, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(randn_nonzero(shape, g, dtype) for _ in range(3))


def draw_inputs(shape, seed: int, layout, moc_params: dict | None = None, dtype=torch.float32):
    """q, k, v (float32-representable values) from ``seed``; for MoC with routing, re-draw with
    seed+1, seed+2, ... until the float64 routing margin is >= MIN_MARGIN. Returns (q, k, v, seed)."""
    for s in range(seed, seed + 100):
        q, k, v = qkv(shape, s, dtype)
        if moc_params is None or moc_params.get("top_k", 0) == 0:
            return q, k, v, s
        if oracle.routing_margin(q.double(), k.double(), layout, **moc_params) >= MIN_MARGIN:
            return q, k, v, s
    raise AssertionError("no seed without a routing near-tie in 100 tries")


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One (layout, backend config, shape, seed) combination; hashable for caching."""

    idx: int
    layout_kind: str
    layout: TokenLayout
    backend: str
    params: tuple  # ((name, value), ...) in a stable order
    batch: int
    heads: int
    head_dim: int
    seed: int

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.layout.num_tokens, self.head_dim)

    @property
    def id(self) -> str:
        p = "-".join(f"{k}={v}" for k, v in self.params)
        return f"c{self.idx}-{self.backend}-{self.layout_kind}-{p}-B{self.batch}H{self.heads}D{self.head_dim}"

    def make_backend(self, **overrides):
        return mocbench.get_backend(self.backend, **{**self.kwargs, **overrides})


def moc_cases(n: int = 80) -> list[Case]:
    """n MoC cases covering every layout kind x chunking rule (twice), text_anchor on/off,
    local_anchor shot/chunk/None, causal on/off and top_k from 0 to more than the chunk count."""
    out = []
    for idx in range(n):
        rng = random.Random(1000 + idx)
        kind = kind_of(idx)
        rule = MOC_RULES[(idx // len(LAYOUT_KINDS)) % len(MOC_RULES)]
        layout = random_layout(rng, kind)
        C = len(oracle.chunks(layout, rule))
        mode = idx % 5
        if mode == 0:
            top_k = 0
        elif mode == 1:
            top_k = C + rng.randint(0, 2)  # >= every candidate count
        else:
            top_k = rng.randint(1, max(1, C - 1))
        params = (("top_k", top_k), ("chunking", rule), ("text_anchor", (idx // 2) % 2 == 0),
                  ("local_anchor", (None, "shot", "chunk")[idx % 3]), ("causal", (idx // 3) % 2 == 0))
        out.append(Case(idx, kind, layout, "moc", params, rng.choice((1, 2)), rng.choice((1, 2)),
                        rng.choice((8, 12, 16)), 10_000 + 97 * idx))
    return out


def fixed_sparse_configs() -> list[tuple[str, tuple]]:
    cfgs: list[tuple[str, tuple]] = []
    for ta in (True, False):
        cfgs.append(("shot_local", (("text_anchor", ta),)))
    for w in range(4):
        for ta in (True, False):
            cfgs.append(("frame_window", (("window", w), ("text_anchor", ta))))
    rules = ("frame", "frames:2", "tokens:3", "fixed:5", "shot")
    for stride in range(1, 5):
        for r_i, rule in enumerate(rules):
            cfgs.append(("strided", (("stride", stride), ("chunking", rule), ("text_anchor", (stride + r_i) % 2 == 0))))
    return cfgs


def fixed_sparse_cases(reps: int = 2) -> list[Case]:
    """Every fixed-sparse config (shot_local x ta, frame_window w=0..3 x ta, strided s=1..4 x 5
    chunkings) on ``reps`` random layouts each."""
    out = []
    cfgs = fixed_sparse_configs()
    idx = 0
    for rep in range(reps):
        for name, params in cfgs:
            rng = random.Random(5000 + idx)
            kind = kind_of(idx + rep)
            layout = random_layout(rng, kind)
            out.append(Case(idx, kind, layout, name, params, rng.choice((1, 2)), rng.choice((1, 2)),
                            rng.choice((8, 16)), 20_000 + 31 * idx))
            idx += 1
    return out


@dataclass
class CaseData:
    q: torch.Tensor  # float32
    k: torch.Tensor
    v: torch.Tensor
    seed: int
    mask: torch.Tensor  # (B, H, L, L) oracle pattern


@functools.cache
def case_data(case: Case) -> CaseData:
    moc_params = case.kwargs if case.backend == "moc" else None
    q, k, v, seed = draw_inputs(case.shape, case.seed, case.layout, moc_params)
    mask = oracle.pattern(case.backend, case.kwargs, q.double(), k.double(), case.layout)
    return CaseData(q, k, v, seed, mask)


def seeded_grad_out(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7)
    return randn_nonzero(shape, g, torch.float64)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, in float64 (gradients detached)."""
    return float((a.detach().to(torch.float64) - b.detach().to(torch.float64)).abs().max())


def peer_cases(params: list[dict], seed: int):
    """``pytest.mark.parametrize("i,params,layout", ...)`` over ``params`` twice, each on a random layout
    with frame geometry drawn from ``seed + i`` (the peer-family oracle tests)."""
    cases = [(i, p, random_layout(random.Random(seed + i), kind_of(i), geometry=True))
             for i, p in enumerate(params * 2)]
    ids = [f"c{i}-" + "-".join(f"{k}={v}" for k, v in p.items()) for i, p, _ in cases]
    return pytest.mark.parametrize("i,params,layout", cases, ids=ids)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """Records the device, torch and CUDA in pytest-benchmark's ``machine_info`` (``--benchmark-json``), so
    benchmarks/baselines/baseline.py can pick and check the committed baseline of the device that ran.
    (Here, not in tests/bench/conftest.py: two modules named ``conftest`` would shadow each other's helpers.)"""
    from mocbench.bench.env import environment

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["mocbench"] = {"device": env["env_device"], "torch": env["env_torch"], "cuda": env["env_cuda"]}
