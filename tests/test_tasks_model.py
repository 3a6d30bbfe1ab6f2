"""Video DiT: every attention layer calls the registry backend with the sample's layout, shapes,
a tiny model's loss falls on a fixed batch, samplers, and config errors that name the key."""

from __future__ import annotations

import pytest
import torch

import mocbench
from mocbench.config import ConfigError
from mocbench.tasks.config import load_task_config
from mocbench.tasks.flow import integrate, velocity_from_output
from mocbench.tasks.model import DiTShape, ModelConfig, VideoDiT

SHAPE = DiTShape(model=ModelConfig(dim=32, depth=3, heads=2, patch_size=4, max_shots=4, max_frames=4), max_height=8,
                 max_width=8, text_tokens=5, vocab_size=20)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a busy 2-core box thrashes with more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Spy:
    """Wraps a backend and records the layout of every call."""

    def __init__(self, inner):
        self.inner, self.layouts = inner, []

    def __call__(self, q, k, v, layout, **kw):
        self.layouts.append(layout)
        return self.inner(q, k, v, layout, **kw)


def _inputs(B=2, S=3, F=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, F, 3, 8, 8, generator=g), torch.rand(B, generator=g), torch.randint(0, 20, (B, S, T), generator=g)


def test_every_attention_layer_calls_the_backend_with_the_interleaved_layout():
    model = VideoDiT(SHAPE, "dense")
    spy = Spy(model.backend)
    for blk in model.blocks:
        blk.attn.backend = spy
    x, t, ids = _inputs()
    out = model(x, t, ids)
    assert out.shape == x.shape
    expected = mocbench.TokenLayout.multi_shot(text_tokens=[5] * 3, frames=[2] * 3, tokens_per_frame=4, frame_shape=(2, 2))
    assert spy.layouts == [expected] * SHAPE.model.depth
    assert [s.kind for s in expected.segments] == ["text", "video"] * 3


def test_single_shot_layout_and_caption_free_stream():
    model = VideoDiT(SHAPE, "dense")
    assert model.layout_for(1, 2, 8, 8, 5) == mocbench.TokenLayout.single_shot(text_tokens=5, frames=2, tokens_per_frame=4,
                                                                                 frame_shape=(2, 2))
    x, t, _ = _inputs(S=1)
    assert model(x, t, torch.zeros(2, 1, 0, dtype=torch.long)).shape == x.shape


@pytest.mark.parametrize("name,params", [("moc", {"top_k": 1, "chunking": "frame"}), ("shot_local", {}),
                                         ("frame_window", {"window": 1})])
def test_sparse_backends_run_forward_and_backward(name, params):
    model = VideoDiT(SHAPE, name, params)
    x, t, ids = _inputs()
    model(x, t, ids).square().mean().backward()
    assert all(p.grad is not None for p in model.blocks[0].attn.qkv.parameters())


def test_moc_with_every_chunk_matches_dense():
    """Backend swap keeps the weights: MoC with top_k >= #chunks and causal=False is dense attention."""
    torch.manual_seed(0)
    model = VideoDiT(SHAPE, "dense")
    for p in model.parameters():  # non-zero everywhere, so attention matters
        p.data.normal_(0, 0.2)
    x, t, ids = _inputs()
    dense = model(x, t, ids)
    model.set_backend("moc", {"top_k": 99, "causal": False, "chunking": "frame"})
    assert torch.allclose(model(x, t, ids), dense, atol=1e-4)
    model.set_backend("moc", {"top_k": 0})
    assert not torch.allclose(model(x, t, ids), dense, atol=1e-4)


def test_model_refuses_a_layout_it_cannot_handle():
    model = VideoDiT(SHAPE, "dense")
    x, t, ids = _inputs(S=5, T=5)
    with pytest.raises(ValueError, match="shots=5 > model max_shots=4"):
        model(x, t, ids)
    with pytest.raises(ValueError, match="height=6 must be <= max_height=8 and a multiple of patch_size=4"):
        model(torch.randn(1, 1, 2, 3, 6, 8), torch.rand(1), torch.zeros(1, 1, 5, dtype=torch.long))


@pytest.mark.parametrize("prediction", ["x", "v"])
def test_tiny_task_loss_falls_on_a_fixed_batch(prediction):
    """The flow-matching loss of a tiny task on one fixed batch (same t and noise every step) falls by
    more than half within 40 AdamW steps, for both network parametrizations."""
    from mocbench.tasks.data import ShapeShotsDataset, collate
    from mocbench.tasks.lightning_module import build_task
    from mocbench.tasks.shapeshots import vocabulary
    from mocbench.tasks.train import shapes_config

    cfg = load_task_config(None, ["data.height=8", "data.width=8", "data.frames=2", "data.text_tokens=12",
                                  "model.dim=32", "model.depth=2", "model.heads=2", "optim.caption_dropout=0",
                                  f"model.prediction={prediction}"])
    torch.manual_seed(0)
    task = build_task(cfg, vocabulary(shapes_config(cfg)))
    ds = ShapeShotsDataset(shapes_config(cfg), task.tokenizer, 12, 4)
    batch = collate([ds[i] for i in range(4)])
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = task.loss(batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_x_prediction_gives_the_true_velocity_for_the_true_video():
    x0, noise, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0.3, 0.9])
    x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
    assert torch.allclose(velocity_from_output(x0, x_t, t, "x"), noise - x0, atol=1e-6)
    with pytest.raises(ValueError, match="prediction must be 'x' or 'v', got 'eps'"):
        velocity_from_output(x0, x_t, t, "eps")


def test_ode_samplers_solve_a_known_flow():
    """For the constant field v = noise - x0 both samplers land exactly on x0."""
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    for sampler in ("euler", "heun"):
        out = integrate(lambda x, t: noise - x0, noise, steps=5, sampler=sampler)
        assert torch.allclose(out, x0, atol=1e-5)
    with pytest.raises(ValueError, match="sampler must be 'euler' or 'heun', got 'rk4'"):
        integrate(lambda x, t: x, noise, steps=2, sampler="rk4")


@pytest.mark.parametrize("overrides,match", [
    (["data.heigth=8"], "data.heigth"),
    (["model.dim=abc"], "model.dim"),
    (["data.height=18"], r"data.height: 18 px is not a multiple of model.patch_size=4"),
    (["data.shots=9"], r"data.shots: 9 > model.max_shots=8"),
    (["task=single_shot"], r"data.shots: task=single_shot needs data.shots=1, got 2"),
    (["model.heads=3"], r"model.heads: model.dim=64 is not divisible by model.heads=3"),
    (["backend.name=nope"], r"backend.name: .*nope"),
    (["backend.name=moc", "backend.params.top_k=-1"], r"backend.params: top_k must be >= 0, got -1"),
    (["backend.name=moc", "backend.params.topk=2"], r"backend.params: .*topk"),
    (["trainer.max_stepz=3"], r"trainer.max_stepz: not a lightning.Trainer argument"),
    (["sample.sampler=rk4"], r"sample.sampler: must be one of"),
    (["model.prediction=eps"], r"model.prediction: must be 'x' or 'v', got 'eps'"),
    (["data.shapes=[circle,blob]"], r"data.shapes: must be a non-empty subset"),
])
def test_bad_config_names_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_task_config(None, overrides)


def test_frames_not_a_multiple_of_the_temporal_patch_are_padded():
    shape = DiTShape(model=ModelConfig(dim=32, depth=1, heads=2, patch_size=4, temporal_patch=2, max_shots=2,
                                       max_frames=4), max_height=8, max_width=8, text_tokens=5, vocab_size=20)
    model = VideoDiT(shape, "dense")
    spy = Spy(model.backend)
    model.blocks[0].attn.backend = spy
    x, t, ids = _inputs(S=2, F=3)
    assert model(x, t, ids).shape == x.shape
    assert spy.layouts[0].frames_per_shot == (2, 2)


def test_every_dit_layer_runs_its_own_layer_of_the_backend():
    """VMoBA cycles its partition with depth: block i of the DiT runs partition i % 3 (for_layer), also
    after set_backend; backends without a layer rule are shared by every block."""
    model = VideoDiT(SHAPE, "vmoba", {"temporal_chunk": 1})
    assert [blk.attn.backend.partition for blk in model.blocks] == ["temporal", "spatial", "spatiotemporal"]
    model.set_backend("vmoba", {"layer": 1})
    assert {blk.attn.backend.partition for blk in model.blocks} == {"spatial"}
    model.set_backend("moc", {"top_k": 1})
    assert all(blk.attn.backend is model.backend for blk in model.blocks)
