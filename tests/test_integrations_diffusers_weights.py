"""Users' own weights: ``bench-model --weights`` and ``mocbench sample-model`` on a local diffusers folder.

A tiny CogVideoX pipeline is built from random components and saved to a temporary folder: a T5 encoder
from a tiny ``T5Config``, a word-level tokenizer built offline with ``tokenizers`` (no sentencepiece
model, no download), a tiny CogVideoX VAE and transformer, a DDIM scheduler. Guards: the folder is read
offline; ``dense`` sampling reproduces the pipeline's own output; samples are written in the layout
``mocbench eval`` reads and ``fidelity`` compares MoC's samples with dense's; ``bench-model`` times the
stored weights (only the first blocks with a depth override); a missing or wrong folder is one error
line naming the path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[diffusers]')")
pytest.importorskip("transformers", reason="sampling a pipeline needs transformers (the diffusers extra)")
yaml = pytest.importorskip("yaml")

from mocbench.cli import main
from mocbench.config import ConfigError

PROMPTS = ["a red fox runs through deep snow", "a blue cat sits on the mat"]
SHAPE = ["num_frames=9", "height=32", "width=32", "steps=2", "guidance_scale=6.0", "dtype=float32", "device=cpu",
         "pipeline_kwargs={max_sequence_length: 8}", f"prompts={json.dumps(PROMPTS)}"]


def tiny_pipeline():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = sorted({w for p in PROMPTS for w in p.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="</s>")
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                           num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=16, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8, use_rotary_positional_embeddings=True)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "tiny-cogvideox"
    tiny_pipeline().save_pretrained(folder)
    return folder


def sample(weights, out, *overrides):
    from mocbench.integrations.diffusers.sample import load_sample_model_config, sample_model

    cfg = load_sample_model_config(None, [*SHAPE, *overrides])
    return sample_model(cfg, weights, out, log=lambda m: None)


def test_sample_model_writes_what_eval_reads_and_fidelity_compares_backends(weights, tmp_path):
    """dense reproduces the pipeline's own output (same prompts and generator seeds); both sets load as
    sample sets of 9-frame 32x32 clips; fidelity of sparse MoC against dense is finite PSNR, SSIM < 1;
    val_loss is skipped (no mocbench checkpoint), never a crash."""
    from mocbench.eval.runner import EvalRequest, evaluate
    from mocbench.eval.samples import SampleSet
    from mocbench.integrations.diffusers.weights import load_pipeline

    dense = sample(weights, tmp_path / "dense", "backend.name=dense")
    moc = sample(weights, tmp_path / "moc", "backend.name=moc", "backend.params={top_k: 1, chunking: frame, "
                 "causal: false}")
    pipe = load_pipeline(weights)
    own = pipe(prompt=PROMPTS[1], generator=torch.Generator().manual_seed(1), num_frames=9, height=32, width=32,
               num_inference_steps=2, guidance_scale=6.0, output_type="np", max_sequence_length=8).frames[0]
    assert float(abs(dense[1] - own).max()) <= 1e-5
    assert float(abs(moc[1] - own).max()) > 1e-4
    sets = SampleSet.load(tmp_path / "dense"), SampleSet.load(tmp_path / "moc")
    for s in sets:
        assert s.geometry == (1, 9, 32, 32) and len(s) == 2 and s.video(0).shape == (1, 9, 32, 32, 3)
    meta = sets[1].meta
    assert meta["backend"] == "moc" and meta["backend_params"]["top_k"] == 1 and 0 < meta["sparsity"] < 1
    assert meta["weights"] == str(weights.resolve()) and meta["sampler"] == "CogVideoXDDIMScheduler"
    assert [s["captions"] for s in meta["samples"]] == [[p] for p in PROMPTS]
    store = evaluate(EvalRequest(samples=str(tmp_path / "moc"), reference=str(tmp_path / "dense"),
                                 evaluators=("fidelity", "val_loss"), store=str(tmp_path / "eval.csv")),
                     log=lambda m: None)
    rows = {r["evaluator"]: r for r in store.rows.values()}
    assert rows["fidelity"]["status"] == "ok" and math.isfinite(float(rows["fidelity"]["psnr"]))
    assert float(rows["fidelity"]["ssim"]) < 1
    assert rows["val_loss"]["status"] == "skipped" and "checkpoint" in rows["val_loss"]["reason"]


def test_bench_model_times_local_weights(weights, tmp_path):
    """--weights: the stored transformer is benchmarked (its first block only with num_layers=1; the block's
    weights are the stored ones), validated like random weights, and the row names the folder."""
    from mocbench.integrations.diffusers.bench import load_bench_model_config, run_bench_model
    from mocbench.integrations.diffusers.weights import load_transformer

    arch = {"_class_name": "CogVideoXTransformer3DModel", "_note": "the class the weights must hold"}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "name": "tiny_weights", "model": {"architecture": "arch.json", "num_layers": 1},
        "inputs": {"batch": 1, "frames": 3, "height": 4, "width": 4, "text_tokens": 8},
        "backends": [{"name": "dense"}, {"name": "moc", "params": {"top_k": 1, "chunking": "frame", "causal": False}}],
        "timing": {"warmup": 0, "repeats": 1}, "validate": {"frames": 2, "height": 4, "width": 4, "text_tokens": 4}}))
    cfg = load_bench_model_config(str(tmp_path / "b.yaml"), [f"model.weights={weights}"])
    rows = {r["label"]: r for r in run_bench_model(cfg, out=str(tmp_path / "r.csv"), log=lambda m: None)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(r["weights"] == str(weights.resolve()) for r in rows.values())
    assert rows["dense"]["attention_layers"] == 1 and rows["dense"]["full_depth_layers"] == 2
    assert rows["dense"]["validation_model_err"] <= 1e-5
    stored = tiny_pipeline().transformer  # same seed: the weights that were saved
    loaded = load_transformer(weights, depth={"num_layers": 1})
    assert len(loaded.transformer_blocks) == 1
    assert torch.equal(loaded.transformer_blocks[0].attn1.to_q.weight, stored.transformer_blocks[0].attn1.to_q.weight)


def test_wrong_or_missing_weights_are_one_line_naming_the_path(weights, tmp_path, capsys):
    from mocbench.integrations.diffusers.weights import load_pipeline, load_transformer

    with pytest.raises(ConfigError, match=r"--weights '.*nope' does not exist"):
        load_transformer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither transformer/config.json .* nor config.json"):
        load_transformer(tmp_path / "empty")
    with pytest.raises(ConfigError, match="holds a CogVideoXTransformer3DModel, but the config's architecture is "
                                          "WanTransformer3DModel"):
        load_transformer(weights, expect_class="WanTransformer3DModel")
    with pytest.raises(ConfigError, match="has no model_index.json"):
        load_pipeline(weights / "transformer")
    broken = tmp_path / "broken"
    (broken / "transformer").mkdir(parents=True)
    (broken / "transformer" / "config.json").write_text((weights / "transformer" / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"broken': cannot load the CogVideoXTransformer3DModel"):
        load_transformer(broken)
    assert main(["sample-model", "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "device=cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope' does not exist" in err[0]
    assert main(["sample-model", "--weights", str(weights), "--out", str(tmp_path / "o"), "device=cpu",
                 "pipeline_kwargs={num_frame: 3}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes no argument 'num_frame'" in err[0]
    root = Path(__file__).resolve().parents[1]
    assert main(["bench-model", str(root / "configs/models/cogvideox_cpu.yaml"), "--weights", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope' does not exist" in err[0] and not (tmp_path / "r.csv").exists()
    assert main(["bench-model", str(root / "configs/models/wan2_1_cpu.yaml"), "--weights", str(weights),
                 "--out", str(tmp_path / "r.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a CogVideoXTransformer3DModel" in err[0] and "WanTransformer3DModel" in err[0]
