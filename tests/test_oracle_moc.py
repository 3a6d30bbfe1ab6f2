"""The ``moc`` backend against the independent float64 oracle (tests/oracle.py, moc-spec §3-7).

Random layouts (single-shot, interleaved, front caption, global caption at the back, captions after
their video, zero-length captions) x every chunking rule x text_anchor on/off x local_anchor shot/chunk/None x causal
on/off x top_k from 0 to more than the number of chunks.
"""

from __future__ import annotations

import random

import oracle
import pytest
import torch
from conftest import (
    case_data,
    draw_inputs,
    kind_of,
    layout_tag,
    max_err,
    moc_cases,
    moc_cpu_impls,
    qkv,
    random_layout,
    seeded_grad_out,
)

import mocbench
from mocbench import TokenLayout

CASES = moc_cases(80)
IMPL_NAMES = moc_cpu_impls()  # "auto" resolves to one of these
GRAD_IMPL_NAMES = [n for n in IMPL_NAMES if not mocbench.get_backend("moc", impl=n).not_supported_reasons(
    device="cpu", dtype=torch.float32, head_dim=8, requires_grad=True)]
NO_GRAD_IMPL_NAMES = [n for n in IMPL_NAMES if n not in GRAD_IMPL_NAMES]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def cases_param(cases):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])



# --------------------------------------------------------------------------- the oracle itself
def test_oracle_chunker_hand_example_fixed_chunk_spans_shots_and_skips_caption():
    """Guards the oracle: fixed:2 on T0[1] V0[1x3] T1[1] V1[1x3] cuts video tokens 1,2,3,5,6,7
    into {1,2} {3,5} {6,7}; the {3,5} chunk skips caption token 4 and starts before it."""
    layout = TokenLayout.multi_shot(text_tokens=[1, 1], frames=[1, 1], tokens_per_frame=3)
    assert oracle.chunks(layout, "fixed:2") == [[0], [1, 2], [3, 5], [4], [6, 7]]
    st = oracle.moc_structure(layout, chunking="fixed:2", text_anchor=True, local_anchor="shot", causal=False)
    # query 6 (shot 1): {1,2} and {3,5} are only partly anchored -> candidates; {6,7} is its own shot
    assert st.candidate[6].tolist() == [False, True, True, False, False]
    # query 1 (shot 0): {3,5} spans into shot 1, {6,7} is shot 1
    assert st.candidate[1].tolist() == [False, False, True, False, True]
    causal = oracle.moc_structure(layout, chunking="fixed:2", text_anchor=True, local_anchor="shot", causal=True)
    assert causal.candidate[6].tolist() == [False, True, True, False, False]  # both start before chunk {6,7}
    assert causal.candidate[1].tolist() == [False] * 5


def test_oracle_chunker_hand_example_frames_and_tokens():
    """Guards the oracle: frames:2 / tokens:4 runs stay inside a shot and the last run is shorter."""
    layout = TokenLayout.multi_shot(text_tokens=[0, 2], frames=[3, 1], tokens_per_frame=2)
    # stream: V0 = 0..5 (frames {0,1} {2,3} {4,5}), T1 = 6,7, V1 = 8,9
    assert oracle.chunks(layout, "frames:2") == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert oracle.chunks(layout, "tokens:4") == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert oracle.chunks(layout, "fixed:4") == [[0, 1, 2, 3], [4, 5, 8, 9], [6, 7]]
    assert oracle.chunks(layout, "shot") == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]


CHUNK_RULES = ("shot", "frame", "frames:1", "frames:2", "frames:3", "tokens:1", "tokens:3", "tokens:5",
               "fixed:1", "fixed:4", "fixed:7", "fixed:1000")
CHUNK_LAYOUTS = [(kind_of(i), random_layout(random.Random(300 + i), kind_of(i))) for i in range(20)]


@pytest.mark.parametrize("rule", CHUNK_RULES)
@pytest.mark.parametrize("kind,layout", CHUNK_LAYOUTS, ids=[f"{k}-{layout_tag(l)}" for k, l in CHUNK_LAYOUTS])
def test_layout_chunk_table_matches_oracle_chunker(kind, layout, rule):
    """layout.chunks(rule) (moc-spec §3): chunk of every token, order, sizes and caption flags
    equal the oracle's chunker; chunk indices follow stream order of the first token."""
    ref = oracle.chunks(layout, rule)
    ct = layout.chunks(rule)
    assert ct.num_chunks == len(ref)
    assert ct.chunk_id.tolist() == oracle.chunk_of(ref, layout.num_tokens)
    assert ct.order.tolist() == [c[0] for c in ref]
    assert ct.sizes.tolist() == [len(c) for c in ref]
    toks = oracle.tokens(layout)
    assert ct.is_text.tolist() == [toks[c[0]].is_text for c in ref]


# --------------------------------------------------------------------------- eval-mode MoC vs oracle
@cases_param(CASES)
def test_moc_attention_pattern_equals_oracle(case):
    """attention_pattern = anchors U tokens of the top_k routed candidates, per batch/head/query."""
    d = case_data(case)
    pat = case.make_backend().attention_pattern(d.q, d.k, case.layout)
    assert pat.dtype == torch.bool and pat.shape == d.mask.shape
    diff = (pat != d.mask).nonzero()
    assert diff.numel() == 0, f"{len(diff)} (b,h,i,j) differ, first {diff[:5].tolist()} ({case.layout.describe()})"


@pytest.mark.parametrize("impl", IMPL_NAMES)
@DTYPES
@cases_param(CASES)
def test_moc_output_matches_float64_oracle(case, dtype, impl):
    """backend(q,k,v,layout) = exact masked softmax over A(i); f32 within 1e-5, f64 within 1e-10;
    prepare + forward gives the same output as the one-shot call."""
    d = case_data(case)
    q, k, v = (t.to(dtype) for t in (d.q, d.k, d.v))
    backend = case.make_backend(impl=impl)
    out = backend(q, k, v, case.layout)
    assert out.shape == q.shape and out.dtype == dtype
    ref = oracle.attend(q, k, v, d.mask)
    err = max_err(out, ref)
    assert err <= TOL[dtype], f"max abs error {err:.3g} > {TOL[dtype]}"
    out2 = backend.forward(q, k, v, backend.prepare(q, k, case.layout))
    assert max_err(out2, out) == 0.0


@pytest.mark.parametrize("impl", GRAD_IMPL_NAMES)
@DTYPES
@cases_param(CASES)
def test_moc_gradients_match_oracle_autograd(case, dtype, impl):
    """dL/dq, dL/dk, dL/dv flow through the attention (routing fixed) and equal autograd through
    the oracle's float64 masked softmax with the oracle's (no-grad) routing."""
    d = case_data(case)
    g = seeded_grad_out(case.shape, case.seed)
    q, k, v = (t.detach().clone().to(dtype).requires_grad_() for t in (d.q, d.k, d.v))
    out = case.make_backend(impl=impl)(q, k, v, case.layout)
    (out.to(torch.float64) * g).sum().backward()
    q0, k0, v0 = (t.detach().clone().to(torch.float64).requires_grad_() for t in (d.q, d.k, d.v))
    (oracle.attend(q0, k0, v0, d.mask) * g).sum().backward()
    for name, got, want in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert got is not None and got.dtype == dtype, f"no {name}.grad"
        err = max_err(got, want)
        assert err <= GRAD_TOL[dtype], f"grad {name}: max abs error {err:.3g} > {GRAD_TOL[dtype]}"


NO_GRAD_PARAMS = NO_GRAD_IMPL_NAMES or [pytest.param("none", marks=pytest.mark.skip(
    reason="every MoC impl has a CPU backward"))]


@pytest.mark.parametrize("impl", NO_GRAD_PARAMS)
def test_moc_impl_without_cpu_backward_refuses_grad_inputs(impl):
    """An impl that declares no CPU backward raises UnsupportedError (naming the missing backward)
    for inputs that require grad, instead of returning an output without gradients."""
    layout = TokenLayout.single_shot(text_tokens=2, frames=3, tokens_per_frame=2)
    q, k, v = (t.requires_grad_() for t in qkv((1, 1, layout.num_tokens, 8), 4, torch.float32))
    with pytest.raises(mocbench.UnsupportedError, match="backward"):
        mocbench.get_backend("moc", impl=impl, top_k=1)(q, k, v, layout)


@pytest.mark.parametrize("impl", NO_GRAD_PARAMS)
def test_moc_impl_without_cpu_backward_runs_under_no_grad(impl):
    """Under torch.no_grad() the backward restriction does not apply: the call is accepted by
    check_supported, so it must run and match the oracle even if the leaf inputs require grad."""
    layout = TokenLayout.single_shot(text_tokens=2, frames=3, tokens_per_frame=2)
    q, k, v = (t.requires_grad_() for t in qkv((1, 1, layout.num_tokens, 8), 4, torch.float32))
    backend = mocbench.get_backend("moc", impl=impl, top_k=1)
    with torch.no_grad():
        assert backend.not_supported_reasons(q, requires_grad=torch.is_grad_enabled()) == []
        out = backend(q, k, v, layout)
    assert max_err(out, oracle.attend(q, k, v, oracle.moc_mask(q, k, layout, top_k=1))) <= 1e-5


@pytest.mark.parametrize("impl", IMPL_NAMES)
@pytest.mark.parametrize("case", CASES[:12], ids=[c.id for c in CASES[:12]])
def test_moc_non_contiguous_bhld_views_match_oracle(case, impl):
    """q, k, v given as (B,L,H,D) tensors transposed to (B,H,L,D) views (non-contiguous, the
    flash-attn/xformers memory layout) give the same output as the oracle."""
    d = case_data(case)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (d.q, d.k, d.v))
    out = case.make_backend(impl=impl)(q, k, v, case.layout)
    err = max_err(out, oracle.attend(d.q, d.k, d.v, d.mask))
    assert err <= TOL[torch.float32], f"max abs error {err:.3g}"


@cases_param(CASES)
def test_moc_default_impl_matches_float64_oracle(case):
    """The default impl ("auto", whatever it resolves to on CPU) matches the oracle (f32, 1e-5)."""
    d = case_data(case)
    out = case.make_backend()(d.q, d.k, d.v, case.layout)
    err = max_err(out, oracle.attend(d.q, d.k, d.v, d.mask))
    assert err <= TOL[torch.float32], f"max abs error {err:.3g}"


@cases_param(CASES)
def test_moc_stats_match_oracle_pair_count(case):
    """stats(q,k,layout): pairs = attended (query, key) pairs summed over batch and heads; sparsity,
    chunk count and (with routing) routing 2*L*C*D / pooling L*D FLOPs per (batch, head) (§7)."""
    d = case_data(case)
    st = case.make_backend().stats(d.q, d.k, case.layout)
    B, H, L, D = case.shape
    C = len(oracle.chunks(case.layout, case.kwargs["chunking"]))
    assert (st.batch, st.heads, st.tokens, st.head_dim) == (B, H, L, D)
    assert st.pairs == oracle.pairs(d.mask)
    assert st.sparsity == pytest.approx(1 - oracle.pairs(d.mask) / (B * H * L * L), abs=1e-12)
    assert st.attention_flops == 4 * D * oracle.pairs(d.mask)
    assert st.dense_flops == 4 * B * H * L * L * D
    assert st.num_chunks == C
    if case.kwargs["top_k"] > 0:
        assert st.routing_flops == B * H * 2 * L * C * D
        assert st.pooling_flops == B * H * L * D


# --------------------------------------------------------------------------- MoC = dense with full top_k
DENSE_EQ = []
for _i in range(12):
    _kind = kind_of(_i)
    _rule = ("shot", "frame", "frames:2", "tokens:3", "fixed:4", "fixed:7")[_i % 6]
    _la = (None, "shot", "chunk")[_i % 3]
    DENSE_EQ.append(pytest.param(random_layout(random.Random(700 + _i), _kind), _rule, _la, _i % 2,
                                 id=f"{_kind}-{_rule}-la={_la}-extra{_i % 2}"))


@pytest.mark.parametrize("layout,rule,local_anchor,extra", DENSE_EQ)
def test_moc_full_top_k_bidirectional_text_anchor_equals_dense(layout, rule, local_anchor, extra):
    """moc-spec §5: top_k >= number of chunks, causal=False, text_anchor=True is dense attention."""
    C = len(oracle.chunks(layout, rule))
    backend = mocbench.get_backend("moc", top_k=C + extra, chunking=rule, causal=False, text_anchor=True,
                                   local_anchor=local_anchor)
    q, k, v = qkv((2, 2, layout.num_tokens, 8), 77, torch.float64)
    assert bool(backend.attention_pattern(q, k, layout).all())
    out = backend(q, k, v, layout)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert max_err(out, dense) <= 1e-10
    assert max_err(out, oracle.attend(q, k, v, oracle.dense_mask(layout))) <= 1e-10
    assert backend.stats(q, k, layout).pairs == 4 * layout.num_tokens ** 2


# --------------------------------------------------------------------------- custom softmax scale
@pytest.mark.parametrize("case", CASES[:8], ids=[c.id for c in CASES[:8]])
def test_moc_custom_scale_matches_oracle(case):
    """scale= overrides 1/sqrt(head_dim) in the softmax only (routing scores are unscaled)."""
    d = case_data(case)
    out = case.make_backend()(d.q.double(), d.k.double(), d.v.double(), case.layout, scale=0.37)
    assert max_err(out, oracle.attend(d.q, d.k, d.v, d.mask, scale=0.37)) <= 1e-10


# --------------------------------------------------------------------------- analytic accounting
BALANCED = [
    pytest.param(TokenLayout.single_shot(text_tokens=0, frames=4, tokens_per_frame=3), "frame", None, 3,
                 id="single-4x3-frame"),
    pytest.param(TokenLayout.single_shot(text_tokens=0, frames=3, tokens_per_frame=4), "tokens:2", "chunk", 5,
                 id="single-3x4-tokens2"),
    pytest.param(TokenLayout.multi_shot(text_tokens=[3, 3], frames=[2, 2], tokens_per_frame=3), "frame", "shot", 2,
                 id="interleaved-text=frame-size"),
    pytest.param(TokenLayout.multi_shot(text_tokens=[4], frames=[2, 2, 2], tokens_per_frame=4,
                                        text_placement="front"), "frame", None, 4, id="front-text=frame-size"),
]


@pytest.mark.parametrize("top_k_frac", [1, 2], ids=["k=1", "k=max"])
@pytest.mark.parametrize("layout,rule,local_anchor,max_k", BALANCED)
def test_moc_estimate_equals_measured_when_chunks_equal_and_candidates_suffice(layout, rule, local_anchor, max_k,
                                                                              top_k_frac):
    """moc-spec §7: with equal-sized chunks and >= top_k candidates for every query (causal=False),
    estimate(layout) (no tensors) equals stats(q,k) and the oracle's pair count exactly."""
    top_k = 1 if top_k_frac == 1 else max_k
    params = {"top_k": top_k, "chunking": rule, "local_anchor": local_anchor, "causal": False}
    st = oracle.moc_structure(layout, chunking=rule, local_anchor=local_anchor, causal=False)
    assert int(st.candidate.sum(-1).min()) >= top_k, "precondition: every query has >= top_k candidates"
    assert len({len(c) for c in st.chunks}) == 1, "precondition: equal-sized chunks"
    shape = (2, 2, layout.num_tokens, 8)
    q, k, _, _ = draw_inputs(shape, 5, layout, params, torch.float64)
    want = oracle.pairs(oracle.moc_mask(q, k, layout, **params))
    backend = mocbench.get_backend("moc", **params)
    measured = backend.stats(q, k, layout)
    est = mocbench.estimate(layout, "moc", head_dim=8, batch=2, heads=2, **params)
    assert measured.pairs == want
    assert est == measured


# --------------------------------------------------------------------------- training-time regularisers
def _training_cases():
    """Small layouts (L <= 40) so head_dim = L and v = identity reads the attention weights."""
    out = []
    i = 0
    seed = 900
    while len(out) < 12:
        rng = random.Random(seed)
        seed += 1
        kind = kind_of(len(out))
        layout = random_layout(rng, kind)
        rule = ("frame", "tokens:3", "fixed:4", "frames:2")[len(out) % 4]
        if not 8 <= layout.num_tokens <= 40:
            continue
        st = oracle.moc_structure(layout, chunking=rule, causal=len(out) % 2 == 0,
                                  text_anchor=len(out) % 3 != 2)
        if int(st.candidate.sum(-1).max()) < 2:
            continue  # routing must have a choice for the regularisers to matter
        params = {"top_k": 1, "chunking": rule, "causal": len(out) % 2 == 0, "text_anchor": len(out) % 3 != 2}
        out.append(pytest.param(layout, params, id=f"t{i}-{kind}-{rule}-causal{int(params['causal'])}"
                                                   f"-ta{int(params['text_anchor'])}-L{layout.num_tokens}"))
        i += 1
    return out


TRAIN = _training_cases()


def _train_inputs(layout, params, seed=123):
    L = layout.num_tokens
    q, k, _, _ = draw_inputs((2, 2, L, L), seed, layout, params, torch.float64)
    return q, k


def probe_training_pattern(backend, q, k, layout, training=True):
    """(B,H,L,L) bool via the public prepare/forward: head_dim = L and v = identity make the
    output the attention weights, which are > 0 exactly on attended keys."""
    B, H, L, _ = q.shape
    plan = backend.prepare(q, k, layout, training=training)
    v = torch.eye(L, dtype=q.dtype).expand(B, H, L, L).contiguous()
    w = backend.forward(q, k, v, plan)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-9), "weights must sum to 1"
    return w > 0


def routed_chunks(pat, st):
    """(B,H,L,C) bool: candidate chunks any of whose non-anchored tokens is attended."""
    B, H, L, _ = pat.shape
    extra = pat & ~st.anchor[None, None]
    routed = torch.zeros(B, H, L, len(st.chunks), dtype=torch.bool)
    for c, toks in enumerate(st.chunks):
        routed[..., c] = extra[..., toks].any(-1)
    return routed


REG = {"p_drop_off": 0.5, "p_drop_in": 0.5, "n_drop_in": 2}


@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_training_mode_reproducible_for_fixed_seed(layout, params):
    """moc-spec §6: drop-off/drop-in draw from a generator seeded by `seed`: two fresh backends
    with the same seed give identical training-mode plans and outputs."""
    q, k = _train_inputs(layout, params)
    v = qkv(q.shape, 5, torch.float64)[2]
    outs, pats = [], []
    for _ in range(2):
        b = mocbench.get_backend("moc", seed=11, **params, **REG)
        outs.append(b.forward(q, k, v, b.prepare(q, k, layout, training=True)))
        pats.append(probe_training_pattern(mocbench.get_backend("moc", seed=11, **params, **REG), q, k, layout))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(pats[0], pats[1])


@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_training_pattern_keeps_anchors_and_adds_only_whole_candidate_chunks(layout, params):
    """Regularisers never touch anchors (pattern ⊇ anchors), and everything beyond the anchors
    is whole candidate chunks (drop-in only draws candidates)."""
    q, k = _train_inputs(layout, params)
    st = oracle.moc_structure(layout, **{n: params[n] for n in ("chunking", "causal", "text_anchor")})
    for seed in range(4):
        pat = probe_training_pattern(mocbench.get_backend("moc", seed=seed, **params, **REG), q, k, layout)
        assert bool((pat | ~st.anchor[None, None]).all()), f"seed {seed}: an anchor key was dropped"
        routed = routed_chunks(pat, st)
        assert not bool((routed & ~st.candidate[None, None]).any()), f"seed {seed}: a non-candidate chunk was routed"
        whole = st.anchor[None, None] | oracle.expand_selection(routed, st)
        assert torch.equal(pat, whole), f"seed {seed}: a routed chunk was attended only in part"


@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_training_drop_off_one_leaves_exactly_the_anchors(layout, params):
    """p_drop_off=1, p_drop_in=0 drops every routed chunk: the training pattern is the anchors."""
    q, k = _train_inputs(layout, params)
    st = oracle.moc_structure(layout, **{n: params[n] for n in ("chunking", "causal", "text_anchor")})
    b = mocbench.get_backend("moc", p_drop_off=1.0, p_drop_in=0.0, **params)
    pat = probe_training_pattern(b, q, k, layout)
    assert torch.equal(pat, st.anchor[None, None].expand_as(pat))
    # eval mode (attention_pattern) still routes exactly like the oracle
    assert torch.equal(b.attention_pattern(q, k, layout), oracle.moc_mask(q, k, layout, **params))


@pytest.mark.parametrize("n_drop_in", [0, 1, 2])
@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_training_drop_in_adds_at_most_n_candidate_chunks(layout, params, n_drop_in):
    """p_drop_in=1, p_drop_off=0: the top-k routing is kept (pattern ⊇ eval pattern), each query gets
    at most n_drop_in extra candidate chunks, and some query does get one."""
    q, k = _train_inputs(layout, params)
    st = oracle.moc_structure(layout, **{n: params[n] for n in ("chunking", "causal", "text_anchor")})
    eval_mask = oracle.moc_mask(q, k, layout, **params)
    b = mocbench.get_backend("moc", p_drop_off=0.0, p_drop_in=1.0, n_drop_in=n_drop_in, seed=1, **params)
    pat = probe_training_pattern(b, q, k, layout)
    assert bool((pat | ~eval_mask).all()), "drop-in removed a top-k chunk"
    extra = routed_chunks(pat, st) & ~routed_chunks(eval_mask, st)
    assert int(extra.sum(-1).max()) <= n_drop_in
    assert bool((extra & ~st.candidate[None, None]).any()) is False
    if n_drop_in > 0:
        assert int(extra.sum()) > 0, "p_drop_in=1 added no chunk to any query"


@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_training_drop_off_only_removes_routed_chunks(layout, params):
    """p_drop_off=0.5, p_drop_in=0: anchors ⊆ training pattern ⊆ eval pattern (drop-off only
    removes routed chunks), and over several seeds some routed chunk is dropped."""
    q, k = _train_inputs(layout, params)
    st = oracle.moc_structure(layout, **{n: params[n] for n in ("chunking", "causal", "text_anchor")})
    eval_mask = oracle.moc_mask(q, k, layout, **params)
    dropped = 0
    for seed in range(4):
        pat = probe_training_pattern(mocbench.get_backend("moc", p_drop_off=0.5, seed=seed, **params), q, k, layout)
        assert bool((pat | ~st.anchor[None, None]).all()), "an anchor was dropped"
        assert bool((~pat | eval_mask).all()), "drop-off added a key outside the top-k routing"
        dropped += int((eval_mask & ~pat).sum())
    assert dropped > 0


@pytest.mark.parametrize("layout,params", TRAIN[:4])
def test_moc_training_explicit_generator_is_reproducible(layout, params):
    """prepare(training=True, generator=g): the regularisers draw from g, so equal seeds of g give
    equal plans (and outputs) even on the same backend object."""
    q, k = _train_inputs(layout, params)
    v = qkv(q.shape, 5, torch.float64)[2]
    b = mocbench.get_backend("moc", **params, **REG)
    outs = [b.forward(q, k, v, b.prepare(q, k, layout, training=True, generator=torch.Generator().manual_seed(4)))
            for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("layout,params", TRAIN[:6])
def test_moc_training_draws_depend_on_seed(layout, params):
    """Different `seed` params give different drop-off/drop-in draws (the seed is actually used)."""
    q, k = _train_inputs(layout, params)
    pats = [probe_training_pattern(mocbench.get_backend("moc", seed=s, **params, **REG), q, k, layout)
            for s in range(6)]
    assert any(not torch.equal(pats[0], p) for p in pats[1:])


@pytest.mark.parametrize("layout,params", TRAIN)
def test_moc_eval_mode_ignores_regularisers(layout, params):
    """training=False (the default) routes exactly like the oracle even with p_drop_off/p_drop_in > 0;
    training=True with both probabilities 0 routes like eval."""
    q, k = _train_inputs(layout, params)
    v = qkv(q.shape, 9, torch.float64)[2]
    want = oracle.moc_mask(q, k, layout, **params)
    ref = oracle.attend(q, k, v, want)
    b = mocbench.get_backend("moc", seed=3, **params, p_drop_off=0.9, p_drop_in=0.9, n_drop_in=3)
    assert torch.equal(b.attention_pattern(q, k, layout), want)
    assert torch.equal(probe_training_pattern(b, q, k, layout, training=False), want)
    assert max_err(b(q, k, v, layout), ref) <= 1e-10
    assert max_err(b(q, k, v, layout, training=False), ref) <= 1e-10
    assert max_err(b.forward(q, k, v, b.prepare(q, k, layout, training=False)), ref) <= 1e-10
    plain = mocbench.get_backend("moc", **params)
    assert torch.equal(probe_training_pattern(plain, q, k, layout, training=True), want)
