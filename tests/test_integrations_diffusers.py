"""mocbench backends inside diffusers' video transformers (mocbench.integrations.diffusers).

Tiny random models (1-2 layers, 2 heads, 3 latent frames of 4x4 patches; no weights, no downloads) of
every built-in spec: CogVideoX (caption first, RoPE passed as a keyword the processor must keep),
ConsisID and EasyAnimate (caption first), HunyuanVideo (caption last, padded per sample), Mochi (caption
last, un-padded by its own processor), Wan, SkyReels-V2, Allegro, Cosmos and LTX-Video (video only; LTX
takes packed tokens and its grid as keyword arguments). Guards: ``dense`` equals the model's own attention on the full
transformer output; MoC with top_k >= #chunks and causal=False equals it too; sparse MoC changes the
output and reports its sparsity from the plans that ran; per-layer fidelity against the model's dense
attention is ~0 for full coverage and > 0 for sparse MoC; ``remove()`` restores the model bit for bit;
unknown models, masks other than key padding, dropout, is_causal and non-native diffusers attention
backends are refused with the reason. ``mocbench bench-model``: tests/test_integrations_diffusers_bench.py;
local weights and ``mocbench sample-model``: tests/test_integrations_diffusers_weights.py.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[diffusers]')")

import mocbench
from mocbench.integrations.diffusers import (
    ModelSpec,
    apply_backend,
    list_models,
    register_model,
    spec_for,
    use_backend,
)
from mocbench.integrations.diffusers import specs as specs_module
from mocbench.integrations.diffusers.attention import LayerRecord, StreamAttention
from mocbench.integrations.diffusers.processor import StreamProcessor

FRAMES, HEIGHT, WIDTH = 3, 8, 8  # latent video; 2x2 patches -> 3 frames x 16 tokens


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _padding_mask(batch: int, text: int, valid: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(batch, text, dtype=torch.long)
    for b, n in enumerate(valid):
        mask[b, :n] = 1
    return mask


def cogvideox():
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=2, sample_width=WIDTH, sample_height=HEIGHT, sample_frames=(FRAMES - 1) * 4 + 1,
        patch_size=2, max_text_seq_length=5, use_rotary_positional_embeddings=True)
    g = _generator(1)
    rope = get_3d_rotary_pos_embed(embed_dim=16, crops_coords=((0, 0), (HEIGHT // 2, WIDTH // 2)),
                                   grid_size=(HEIGHT // 2, WIDTH // 2), temporal_size=FRAMES)
    return model.eval(), dict(hidden_states=torch.randn(2, FRAMES, 4, HEIGHT, WIDTH, generator=g),
                              encoder_hidden_states=torch.randn(2, 5, 8, generator=g),
                              timestep=torch.tensor([10, 500]), image_rotary_emb=rope)


def hunyuan_video(valid=(6, 3)):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=8, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4), guidance_embeds=False)
    g = _generator(2)
    return model.eval(), dict(hidden_states=torch.randn(2, 4, FRAMES, HEIGHT, WIDTH, generator=g),
                              timestep=torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 6, 8, generator=g),
                              encoder_attention_mask=_padding_mask(2, 6, valid),
                              pooled_projections=torch.randn(2, 8, generator=g))


def mochi():
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(0)
    model = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                    pooled_projection_dim=8, in_channels=4, text_embed_dim=8, time_embed_dim=8,
                                    max_sequence_length=6)
    g = _generator(3)
    return model.eval(), dict(hidden_states=torch.randn(2, 4, FRAMES, HEIGHT, WIDTH, generator=g),
                              encoder_hidden_states=torch.randn(2, 6, 8, generator=g), timestep=torch.tensor([10, 500]),
                              encoder_attention_mask=_padding_mask(2, 6, (6, 2)))


def _wan_inputs(seed: int) -> dict:
    g = _generator(seed)
    return dict(hidden_states=torch.randn(2, 4, FRAMES, HEIGHT, WIDTH, generator=g), timestep=torch.tensor([10, 500]),
                encoder_hidden_states=torch.randn(2, 5, 8, generator=g))


WAN_SHAPE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                 text_dim=8, freq_dim=8, ffn_dim=16, num_layers=2)


def wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(**WAN_SHAPE).eval(), _wan_inputs(4)


def skyreels_v2(num_frame_per_block=1):
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    return SkyReelsV2Transformer3DModel(**WAN_SHAPE, num_frame_per_block=num_frame_per_block).eval(), _wan_inputs(5)


def _text_and_video(seed: int, axes: str) -> dict:
    g = _generator(seed)
    shape = (2, FRAMES, 4, HEIGHT, WIDTH) if axes == "BFCHW" else (2, 4, FRAMES, HEIGHT, WIDTH)
    return dict(hidden_states=torch.randn(*shape, generator=g), encoder_hidden_states=torch.randn(2, 5, 8, generator=g),
                timestep=torch.tensor([10, 500]))


def consisid():
    """CogVideoX's stream (caption first) with ConsisID's face branch off (no identity inputs)."""
    from diffusers import ConsisIDTransformer3DModel

    torch.manual_seed(0)
    model = ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=8,
        num_layers=2, sample_width=WIDTH, sample_height=HEIGHT, sample_frames=(FRAMES - 1) * 4 + 1, patch_size=2,
        max_text_seq_length=5, is_train_face=False)
    return model.eval(), _text_and_video(7, "BFCHW")


def easyanimate():
    """Caption concatenated in front of the video inside attn1; patches per frame."""
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(0)
    model = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=WIDTH,
        sample_height=HEIGHT, num_layers=2, mmdit_layers=2, time_embed_dim=8, text_embed_dim=8)
    return model.eval(), _text_and_video(8, "BCFHW")


def allegro():
    from diffusers import AllegroTransformer3DModel

    torch.manual_seed(0)
    model = AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        num_layers=2, cross_attention_dim=24, sample_height=HEIGHT, sample_width=WIDTH, sample_frames=FRAMES,
        caption_channels=8)
    return model.eval(), _text_and_video(9, "BCFHW")


def cosmos():
    """Cosmos (1.0 layout); the padding-mask input channel is off (it needs torchvision, not attention)."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    model = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=8, adaln_lora_dim=4, max_size=(4, 16, 16), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False)
    return model.eval(), _text_and_video(10, "BCFHW")


def ltx_video():
    """Packed patch tokens (B, L, C) in; the grid is the num_frames / height / width keyword arguments."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                       num_layers=2, caption_channels=8)
    g = _generator(11)
    grid = dict(num_frames=FRAMES, height=HEIGHT // 2, width=WIDTH // 2)
    tokens = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    return model.eval(), dict(hidden_states=torch.randn(2, tokens, 4, generator=g),
                              encoder_hidden_states=torch.randn(2, 5, 8, generator=g), timestep=torch.tensor([10, 500]),
                              encoder_attention_mask=_padding_mask(2, 5, (5, 3)), **grid)


MODELS = {"cogvideox": cogvideox, "hunyuan_video": hunyuan_video, "mochi": mochi, "wan": wan, "skyreels_v2": skyreels_v2,
          "consisid": consisid, "easyanimate": easyanimate, "allegro": allegro, "cosmos": cosmos, "ltx_video": ltx_video}
SPEC_OF = {"cogvideox": "cogvideox", "hunyuan_video": "hunyuan_video", "mochi": "mochi", "wan": "wan",
           "skyreels_v2": "wan", "consisid": "consisid", "easyanimate": "easyanimate", "allegro": "allegro",
           "cosmos": "cosmos", "ltx_video": "ltx_video"}
LAYERS = {name: 2 for name in MODELS}


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Mochi's float32 autocast note on CPU
        return model(**inputs).sample


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    model, inputs = MODELS[request.param]()
    return request.param, model, inputs, run(model, inputs)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# --------------------------------------------------------------------------- exactness
def test_dense_equals_the_models_own_attention(built):
    """Every stream self-attention layer answered by `dense`: same full transformer output (<= 1e-6), and
    the handle saw a call in every layer (so the equality is not the model's attention running alone)."""
    name, model, inputs, ref = built
    with use_backend(model, "dense") as handle:
        out = run(model, inputs)
    assert handle.spec.name == SPEC_OF[name]
    assert len(handle.per_layer()) == LAYERS[name] == len(handle.layers)
    assert handle.stats().sparsity == 0.0
    assert max_err(out, ref) <= 1e-6


def test_moc_with_every_chunk_routed_and_no_causality_equals_default(built):
    """moc-spec §5: top_k >= #chunks, causal=False, text anchor on is dense attention, in a real model too."""
    _, model, inputs, ref = built
    with use_backend(model, "moc", top_k=64, chunking="frame", causal=False) as handle:
        out = run(model, inputs)
    assert handle.stats().sparsity == 0.0
    assert max_err(out, ref) <= 1e-5


def test_sparse_moc_changes_the_output_and_reports_its_sparsity(built):
    """top_k=1 over frame chunks: the output differs from dense and the handle's sparsity, from the plans that
    ran, is 1 - sum(pairs) / sum(B*H*L^2) over layers and calls, with per-layer stats adding up to it."""
    _, model, inputs, ref = built
    with use_backend(model, "moc", top_k=1, chunking="frame", causal=False) as handle:
        out = run(model, inputs)
    total, layers = handle.stats(), handle.per_layer()
    assert 0.0 < total.sparsity < 1.0
    assert max_err(out, ref) > 1e-4
    assert total.pairs == sum(s.pairs for s in layers.values())
    assert total.dense_pairs == sum(s.dense_pairs for s in layers.values())
    assert total.routing_flops == sum(s.routing_flops for s in layers.values()) > 0
    assert total.sparsity == pytest.approx(1 - total.pairs / total.dense_pairs)


def test_remove_restores_the_model_bit_for_bit(built):
    """remove() puts back the very processor objects and hooks: identical outputs, not merely close ones."""
    _, model, inputs, ref = built
    before = {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}
    hooks = (dict(model._forward_pre_hooks), dict(model._forward_hooks))
    handle = apply_backend(model, "moc", top_k=1, causal=False)
    assert handle.active and any(m.processor is not before[n] for n, m in model.named_modules() if n in before)
    run(model, inputs)
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert all(m.processor is before[n] for n, m in model.named_modules() if n in before)
    assert (dict(model._forward_pre_hooks), dict(model._forward_hooks)) == hooks
    assert torch.equal(run(model, inputs), ref)
    assert handle.stats().pairs > 0  # still readable after removal


def test_only_stream_self_attention_gets_the_backend():
    """HunyuanVideo's text refiner and Wan's cross-attention keep the model's own processors."""
    model, _ = hunyuan_video()
    with use_backend(model, "dense") as handle:
        assert handle.layers == ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]
        refiner = model.context_embedder.token_refiner.refiner_blocks[0].attn.processor
        assert type(refiner).__module__.startswith("diffusers")
    model, _ = wan()
    with use_backend(model, "dense") as handle:
        assert handle.layers == ["blocks.0.attn1", "blocks.1.attn1"]
        assert type(model.blocks[0].attn2.processor).__module__.startswith("diffusers")


def test_wrapper_keeps_the_processors_call_signature():
    """Attention.forward drops kwargs its processor does not name: the wrapper must name image_rotary_emb."""
    model, _ = cogvideox()
    original = model.transformer_blocks[0].attn1.processor
    with use_backend(model, "dense"):
        wrapped = model.transformer_blocks[0].attn1.processor
        assert wrapped is not original
        assert inspect.signature(wrapped.__call__) == inspect.signature(original.__call__)
        assert "image_rotary_emb" in inspect.signature(wrapped.__call__).parameters


# --------------------------------------------------------------------------- per-layer fidelity
def test_fidelity_is_exact_for_full_coverage_moc_and_nonzero_for_sparse_moc(built):
    """Per-layer fidelity against the model's dense attention on the same q, k, v (padded captions: on the valid
    rows): MoC attending every pair has rel-L2 <= 1e-5 in every layer; top_k=1 has rel-L2 > 0 and cosine < 1 in
    every layer; measuring does not change the transformer's output."""
    name, model, inputs, _ = built
    with use_backend(model, "moc", top_k=64, chunking="frame", causal=False, fidelity=True) as handle:
        run(model, inputs)
    full = handle.fidelity()
    assert len(full) == LAYERS[name]
    for layer, f in full.items():
        assert f.rel_l2 <= 1e-5 and f.cosine >= 1 - 1e-9 and f.calls >= 1, (layer, f)
    with use_backend(model, "moc", top_k=1, chunking="frame", causal=False) as handle:
        plain = run(model, inputs)
    with use_backend(model, "moc", top_k=1, chunking="frame", causal=False, fidelity=True) as handle:
        measured = run(model, inputs)
    assert torch.equal(plain, measured)
    sparse = handle.fidelity()
    assert set(sparse) == set(full)
    for layer, f in sparse.items():
        assert f.rel_l2 > 1e-4 and f.cosine < 1 - 1e-9, (layer, f)


def test_fidelity_pools_every_call_of_a_layer_in_float64():
    """rel-L2 and cosine of a layer over two forwards equal a float64 computation from the captured q, k, v and
    outputs of its calls (an independent dense reference); without fidelity=True, fidelity() is an error."""
    model, inputs = wan()
    captured = []

    def keep(layer, q, k, v, plan, out):
        if layer == "blocks.1.attn1":
            captured.append([t.detach().double() for t in (q, k, v, out)])

    with use_backend(model, "moc", top_k=1, chunking="frame", causal=False, fidelity=True, on_call=keep) as handle:
        run(model, inputs)
        run(model, {**inputs, "timestep": torch.tensor([300, 900])})
    got = handle.fidelity()["blocks.1.attn1"]
    assert got.calls == len(captured) == 2
    outs = torch.cat([c[3].flatten() for c in captured])
    refs = torch.cat([torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1).matmul(v).flatten()
                      for q, k, v, _ in captured])
    assert got.rel_l2 == pytest.approx(float((outs - refs).norm() / refs.norm()), rel=1e-5)
    assert got.cosine == pytest.approx(float(outs @ refs / (outs.norm() * refs.norm())), rel=1e-6)
    handle.reset_stats()
    assert handle.fidelity() == {}
    with use_backend(model, "dense") as handle, pytest.raises(RuntimeError, match="fidelity=True"):
        handle.fidelity()
    with pytest.raises(TypeError, match="fidelity must be True or False, got 'yes'"):
        apply_backend(model, "dense", fidelity="yes")


# --------------------------------------------------------------------------- padding
def test_hunyuan_padded_captions_run_unpadded_per_sample():
    """HunyuanVideo pads captions to one length and masks the padding: each sample runs with its real caption
    length (video then caption), so dense pairs are sum_b H * (V + n_b)^2 per layer, and the output equals the
    model's own masked attention."""
    valid = (6, 3)
    model, inputs = hunyuan_video(valid)
    ref = run(model, inputs)
    with use_backend(model, "dense") as handle:
        out = run(model, inputs)
    video = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    for stats in handle.per_layer().values():
        assert stats.dense_pairs == sum(2 * (video + n) ** 2 for n in valid)
    assert max_err(out, ref) <= 1e-6
    with use_backend(model, "moc", top_k=1, chunking="frame", causal=False) as handle:
        run(model, inputs)
    layout = mocbench.TokenLayout.single_shot(text_tokens=3, frames=FRAMES, tokens_per_frame=16, text_placement="back")
    assert handle.per_layer()["transformer_blocks.0.attn"].num_chunks == layout.chunks("frame").num_chunks


def test_multi_shot_layout_over_the_latent_frames():
    """shots=3 cuts the 3 latent frames into 3 shots (global caption in front, CogVideoX); top_k=0 with the shot
    anchor is shot-local attention, so sparsity equals the shot_local backend's on that layout."""
    model, inputs = cogvideox()
    with use_backend(model, "moc", shots=3, top_k=0, causal=False) as handle:
        run(model, inputs)
    layout = mocbench.TokenLayout.multi_shot(text_tokens=[5], frames=[1, 1, 1], tokens_per_frame=16,
                                             text_placement="front")
    want = mocbench.estimate(layout, "shot_local", head_dim=16, batch=2, heads=2)
    assert handle.per_layer()["transformer_blocks.0.attn1"].pairs == want.pairs
    with pytest.raises(ValueError, match="shots=2 must divide the stream's 3 latent frames"), \
            use_backend(model, "dense", shots=2):
        run(model, inputs)


# --------------------------------------------------------------------------- refusals and errors
def test_unknown_model_error_says_how_to_register():
    with pytest.raises(ValueError, match=r"no mocbench model spec for Linear.*register_model\(ModelSpec"):
        apply_backend(torch.nn.Linear(2, 2), "dense")


def test_token_input_models_need_their_grid_arguments():
    """LTX-Video's input is packed tokens: without num_frames / height / width the layout is unknown, an error
    naming them (never a guessed layout)."""
    model, inputs = ltx_video()
    with use_backend(model, "dense"), pytest.raises(ValueError, match=r"no keyword argument\(s\) \['num_frames'\]"):
        run(model, {k: v for k, v in inputs.items() if k != "num_frames"})


def test_register_model_serves_a_new_class(monkeypatch):
    """A user spec (here: a Wan subclass where only the first block gets the backend) is found before the
    built-in one of its base class; duplicate names or classes need replace=True."""
    from diffusers import WanTransformer3DModel

    monkeypatch.setattr(specs_module, "_SPECS", dict(specs_module._SPECS))

    class MyWan(WanTransformer3DModel):
        pass

    spec = register_model(ModelSpec(name="my_wan", classes=("MyWan",), text_placement="none", input_axes="BCFHW",
                                    patch_sizes=lambda config: tuple(config.patch_size),
                                    self_attention=("blocks.0.attn1",)))
    assert spec in list_models()
    torch.manual_seed(0)
    model = MyWan(**WAN_SHAPE).eval()
    assert spec_for(model) is spec
    inputs = _wan_inputs(6)
    ref = run(model, inputs)
    with use_backend(model, "dense") as handle:
        assert max_err(run(model, inputs), ref) <= 1e-6
    assert handle.layers == ["blocks.0.attn1"]
    with pytest.raises(ValueError, match="registered already"):
        register_model(spec)
    with pytest.raises(ValueError, match="text_placement must be one of"):
        ModelSpec(name="x", classes=("X",), text_placement="middle", input_axes="BCFHW",
                  patch_sizes=lambda c: (1, 1, 1), self_attention=("a",))


def test_a_mask_that_is_not_key_padding_is_refused_with_its_shape():
    """SkyReels-V2's block-causal diffusion-forcing mask is (1, 1, L, L): refused, never silently ignored; the
    model's own processors are back afterwards."""
    model, inputs = skyreels_v2(num_frame_per_block=3)
    own = model.blocks[0].attn1.processor
    with pytest.raises(mocbench.UnsupportedError, match=r"attention mask of shape \(1, 1, 48, 48\).*key-padding"), \
            use_backend(model, "dense"):
        run(model, inputs)
    assert model.blocks[0].attn1.processor is own


def _layer(backend="dense") -> StreamAttention:
    return StreamAttention("blocks.0.attn1", mocbench.get_backend(backend), placement="back", shots=1,
                           grid=lambda: (2, 4), record=LayerRecord())


@pytest.mark.parametrize("kwargs, match", [
    (dict(dropout_p=0.1), r"attention dropout \(dropout_p=0.1\)"),
    (dict(is_causal=True), "is_causal=True"),
    (dict(attn_mask=torch.ones(1, 2, 11, 11, dtype=torch.bool)), r"mask of shape \(1, 2, 11, 11\)"),
    (dict(attn_mask=torch.zeros(1, 1, 1, 11)), None),  # an all-zero float mask is no padding at all: accepted
    (dict(attn_mask=torch.full((1, 1, 1, 11), 0.5)), "attention bias, not padding"),
    (dict(attn_mask=torch.arange(11).lt(7).view(1, 1, 1, 11)), "hides video tokens"),
])
def test_stream_attention_refuses_what_it_cannot_compute_exactly(kwargs, match):
    q, k, v = (torch.randn(1, 2, 11, 8, generator=_generator(i)) for i in range(3))  # 2 frames x 4 + 3 caption
    layer = _layer()
    if match is None:
        torch.testing.assert_close(layer(q, k, v, **kwargs), torch.nn.functional.scaled_dot_product_attention(q, k, v))
        return
    with pytest.raises(mocbench.UnsupportedError, match=match):
        layer(q, k, v, **kwargs)


def test_grouped_query_heads_are_refused():
    q = torch.randn(1, 4, 11, 8)
    kv = torch.randn(1, 2, 11, 8)
    with pytest.raises(mocbench.UnsupportedError, match="not self-attention over one stream"):
        _layer()(q, kv, kv, enable_gqa=True)


def test_non_native_diffusers_attention_backend_is_refused():
    """A processor pinned to another diffusers backend is refused at apply time; one switched afterwards
    (no SDPA call reached mocbench) raises instead of keeping the model's attention."""
    model, inputs = wan()
    model.set_attention_backend("_native_math")
    with pytest.raises(mocbench.UnsupportedError, match="diffusers attention backend '_native_math' is set"):
        apply_backend(model, "dense")
    model.reset_attention_backend()
    with use_backend(model, "dense"):
        model.blocks[0].attn1.processor.inner._attention_backend = "flex"
        with pytest.raises(RuntimeError, match="without calling torch's scaled_dot_product_attention"):
            run(model, inputs)


def test_applying_twice_and_bad_arguments_are_errors():
    model, _ = wan()
    with use_backend(model, "dense"), pytest.raises(ValueError, match="already runs mocbench backend"):
        apply_backend(model, "moc")
    with pytest.raises(ValueError, match="shots must be an int >= 1, got 0"):
        apply_backend(model, "dense", shots=0)
    with pytest.raises(TypeError, match="not both"):
        apply_backend(model, mocbench.get_backend("moc"), top_k=2)
    with pytest.raises(ValueError, match="top_k must be >= 0, got -1"):
        apply_backend(model, "moc", top_k=-1)
    handle = apply_backend(model, "dense")
    with pytest.raises(RuntimeError, match="no attention call has run"):
        handle.stats()
    handle.remove()


def test_gradients_through_the_backend_match_the_models_own():
    """Fine-tuning path: dense inside CogVideoX gives the model's own parameter gradients."""
    model, inputs = cogvideox()
    model.train()

    def grads():
        model.zero_grad()
        model(**inputs).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref = grads()
    with use_backend(model, "dense"):
        got = grads()
    assert len(got) == len(ref)
    assert max(max_err(a, b) for a, b in zip(got, ref)) <= 1e-6


def test_vmoba_cycles_its_partition_over_a_diffusers_model_layers():
    """apply_backend gives each matched self-attention layer its own index (AttentionBackend.for_layer)."""
    model, _ = wan()
    with use_backend(model, "vmoba") as handle:
        layers = [m.processor.attention.backend for m in model.modules() if isinstance(getattr(m, "processor", None),
                                                                                         StreamProcessor)]
        assert [b.partition for b in layers] == ["temporal", "spatial"]
        assert handle.backend.params.layer is None
