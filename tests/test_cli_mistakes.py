"""A catalogue of command-line mistakes: each exits 2 with one line on stderr naming the culprit.

Every case runs ``mocbench.cli.main`` in-process on tiny inputs (nothing trains or benchmarks) and
asserts exit code 2, no traceback anywhere, exactly one line on stderr, and that the line names the
bad value, key or file. ``--debug`` / ``MOCBENCH_DEBUG=1`` add the traceback; an internal bug (an
exception that is not a user mistake) is not turned into exit 2.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mocbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs/task/quickstart_multishot.yaml")
SWEEP = str(ROOT / "configs/sweep/ablation_cpu.yaml")
PAPER = str(ROOT / "configs/paper/table2_multi_shot.yaml")
# a train config that builds in well under a second (a mistake is caught before any step)
TINY_TASK = ["data.height=8", "data.width=8", "data.frames=2", "data.shots=2", "data.text_tokens=18",
             "data.train_size=2", "data.val_size=2", "data.batch_size=2", "model.dim=16", "model.depth=1",
             "model.heads=2", "model.max_frames=4", "model.text_layers=1", "threads=1", "sample.steps=1",
             "sample.num=1", "sample.scale=1", "trainer.max_steps=1", "trainer.enable_progress_bar=false"]
TINY_BENCH = ["backends=[{name: dense}]", "timing.warmup=0", "timing.repeats=1", "timing.min_repeat_ms=0",
              ("workloads=[{name: t, shots: [1], frames: [1], tokens_per_frame: 2, text_tokens: 1, heads: 1, "
               "head_dim: 4}]")]


def _checkpoint(path: Path, *overrides: str) -> Path:
    """A real ``mocbench train`` checkpoint layout (state_dict + saved config and vocab), untrained."""
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.lightning_module import build_task
    from mocbench.tasks.train import build_datamodule

    cfg = load_task_config(None, [*TINY_TASK, *overrides])
    task = build_task(cfg, build_datamodule(cfg).tokenizer.words)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Every broken input of the catalogue, by name (used as ``{name}`` in the cases' argv)."""
    d = tmp_path_factory.mktemp("mistakes")
    (d / "adir").mkdir()
    (d / "afile").write_text("just text\n")
    (d / "invalid.yaml").write_text("layout:\n  shots: [1, 2\nhead_dim: 4\n")
    (d / "empty.yaml").write_text("")
    (d / "comments.yaml").write_text("# nothing here yet\n\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "badkey.yaml").write_text("layout:\n  shotz: 2\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "png.yaml").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)))
    ckpt = _checkpoint(d / "moc.ckpt", "backend.name=moc", "backend.params.top_k=1")
    _checkpoint(d / "other_arch.ckpt", "model.dim=32")
    data = ckpt.read_bytes()
    (d / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (d / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.uint8).numpy().tobytes())
    torch.save({"weights": torch.ones(3)}, d / "foreign.ckpt")
    torch.save(torch.ones(3), d / "tensor.ckpt")
    _stores(d)
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    names = {p.name.replace(".", "_"): str(p) for p in d.iterdir()}
    return {**names, "d": str(d), "missing": str(d / "no_such_file.yaml"), "ckpt": str(ckpt)}


def _stores(d: Path) -> None:
    """A valid result store (one tiny dense cell) and copies broken in one way each."""
    from mocbench.bench import load_bench_config, run_bench

    good = d / "good.csv"
    run_bench(load_bench_config(None, [*TINY_BENCH, f"output={good}"]), progress=False)
    lines = good.read_text().splitlines(keepends=True)
    (d / "unclosed.csv").write_text(lines[0] + '"' + lines[1] + "".join(lines[1:]))
    with open(good, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["total_ms"] = "abc"
    with open(d / "nonnumeric.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (d / "foreign.csv").write_text("name,value\na,1\n")
    (d / "keys_only.csv").write_text("key,status\na,ok\n")  # parses, but is no bench or sweep store
    (d / "other.json").write_text('{"a": 1}\n')


def case(id_: str, argv: list[str], *culprits: str, marks=()):
    return pytest.param(argv, culprits, id=id_, marks=marks)


ROOT_SKIP = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                               reason="runs as root: a read-only directory is writable for root")

CASES = [
    # ---------------------------------------------------------------- plan: values
    case("plan-batch-0", ["plan", "batch=0"], "batch", "got 0"),
    case("plan-heads-0", ["plan", "heads=0"], "heads", "got 0"),
    case("plan-head_dim-neg", ["plan", "head_dim=-3"], "head_dim", "-3"),
    case("plan-head_dim-0", ["plan", "head_dim=0"], "head_dim", "got 0"),
    case("plan-heads-float", ["plan", "heads=2.5"], "heads", "2.5"),
    case("plan-scale-inf", ["plan", "scale=inf"], "'scale'"),  # plan has no softmax scale: unknown key
    case("plan-scale-0", ["plan", "scale=0"], "'scale'"),
    case("plan-scale-nan", ["plan", "scale=nan"], "'scale'"),
    case("plan-frames-0", ["plan", "layout.frames=0"], "frames", "got 0"),
    case("plan-tokens_per_frame-neg", ["plan", "layout.tokens_per_frame=-1"], "tokens_per_frame", "-1"),
    case("plan-shots-wrong-type", ["plan", "layout.shots=x"], "layout.shots", "'x'"),
    case("plan-unknown-key", ["plan", "layout.tokens_per_frme=3"], "layout.tokens_per_frme"),
    case("plan-text_placement", ["plan", "layout.shots=2", "layout.text_placement=sideways"], "sideways"),
    case("plan-unknown-backend", ["plan", "backend=nope"], "unknown backend 'nope'"),
    case("plan-unknown-compare", ["plan", "compare=[nope]"], "'nope'"),
    case("plan-unknown-param", ["plan", "params.top_kk=3"], "top_kk"),
    case("plan-top_k-neg", ["plan", "params.top_k=-1"], "top_k", "-1"),
    case("plan-top_k-wrong-type", ["plan", "params.top_k=x"], "top_k", "'x'"),
    case("plan-chunking-zero", ["plan", "params.chunking=frames:0"], "frames:0"),
    case("plan-chunking-unknown", ["plan", "params.chunking=bogus"], "bogus"),
    case("plan-local_anchor-none", ["plan", "params.local_anchor=none"], "local_anchor", "'none'", "'shot', 'chunk'"),
    case("plan-p_drop_off", ["plan", "params.p_drop_off=1.5"], "p_drop_off", "1.5"),
    # ---------------------------------------------------------------- config files (plan shown; all commands share it)
    case("plan-missing-config", ["plan", "{missing}"], "no_such_file.yaml", "does not exist"),
    case("plan-config-is-dir", ["plan", "{adir}"], "adir", "is a directory"),
    case("plan-config-under-file", ["plan", "{afile}/x.yaml"], "afile", "regular file"),
    case("plan-binary-config", ["plan", "{binary_yaml}"], "binary.yaml", "not a text file"),
    case("plan-png-config", ["plan", "{png_yaml}"], "png.yaml", "not a UTF-8 text file"),
    case("plan-invalid-yaml", ["plan", "{invalid_yaml}"], "invalid.yaml", "line 3"),
    case("plan-empty-yaml", ["plan", "{empty_yaml}"], "empty.yaml", "empty"),
    case("plan-comments-only-yaml", ["plan", "{comments_yaml}"], "comments.yaml", "empty"),
    case("plan-list-yaml", ["plan", "{list_yaml}"], "list.yaml", "mapping"),
    case("plan-yaml-unknown-key", ["plan", "{badkey_yaml}"], "badkey.yaml", "layout.shotz"),
    # ---------------------------------------------------------------- argparse
    case("unknown-option", ["plan", "--nope"], "--nope"),
    case("unknown-command", ["nope"], "'nope'"),
    case("no-command", [], "command"),
    # ---------------------------------------------------------------- bench (checked before any cell runs)
    case("bench-invalid-yaml", ["bench", "{invalid_yaml}"], "invalid.yaml", "line 3"),
    case("bench-empty-yaml", ["bench", "{empty_yaml}"], "empty.yaml", "empty"),
    case("bench-min_repeat_ms-neg", ["bench", "timing.min_repeat_ms=-1"], "timing.min_repeat_ms", "-1"),
    case("bench-min_repeat_ms-nan", ["bench", "timing.min_repeat_ms=nan"], "timing.min_repeat_ms", "nan"),
    case("bench-max_seconds-neg", ["bench", "timing.max_seconds_per_cell=-5"], "timing.max_seconds_per_cell", "-5"),
    case("bench-max_seconds-0", ["bench", "timing.max_seconds_per_cell=0"], "timing.max_seconds_per_cell", "0"),
    case("bench-warmup-neg", ["bench", "timing.warmup=-1"], "timing.warmup", "-1"),
    case("bench-repeats-0", ["bench", "timing.repeats=0"], "timing.repeats", "0"),
    case("bench-max_inner-0", ["bench", "timing.max_inner=0"], "timing.max_inner", "0"),
    case("bench-heads-0", ["bench", "workloads.0.heads=0"], "workloads[0].heads", "0"),
    case("bench-head_dim-neg", ["bench", "workloads.0.head_dim=-3"], "workloads[0].head_dim", "-3"),
    case("bench-batch-0", ["bench", "workloads.0.batch=0"], "workloads[0].batch", "0"),
    case("bench-dtype", ["bench", "workloads.0.dtype=float8"], "float8"),
    case("bench-unknown-backend", ["bench", "backends.0.name=nope"], "'nope'"),
    case("bench-threads-0", ["bench", "threads=0"], "threads", "0"),
    case("bench-validate-max_frames-0", ["bench", "validate.max_frames=0"], "validate.max_frames", "0"),
    case("bench-unknown-key", ["bench", "timing.repats=3"], "timing.repats"),
    case("bench-given-a-plan-config", ["bench", str(ROOT / "configs/plan/paper_multishot.yaml")],
         "paper_multishot.yaml", "'title'", "BenchConfig"),
    case("bench-out-is-dir", ["bench", "--no-progress", *TINY_BENCH, "--out", "{adir}"], "adir", "directory"),
    case("bench-out-under-file", ["bench", "--no-progress", *TINY_BENCH, "--out", "{afile}/r.csv"], "afile"),
    case("bench-out-read-only", ["bench", "--no-progress", *TINY_BENCH, "--out", "{readonly}/r.csv"], "readonly",
         marks=ROOT_SKIP),
    # ---------------------------------------------------------------- sweep (--dry-run: nothing runs)
    case("sweep-invalid-yaml", ["sweep", "{invalid_yaml}", "--dry-run"], "invalid.yaml", "line 3"),
    case("sweep-empty-yaml", ["sweep", "{empty_yaml}", "--dry-run"], "empty.yaml", "empty"),
    case("sweep-missing-config", ["sweep", "{missing}", "--dry-run"], "no_such_file.yaml"),
    case("sweep-unknown-axis-key", ["sweep", SWEEP, "grid.bench.frmes=[1]", "--dry-run"], "bench.frmes"),
    case("sweep-sample-num-0", ["sweep", SWEEP, "base.sample.num=0", "--dry-run"], "sample.num", "0"),
    case("sweep-bench-heads-0", ["sweep", SWEEP, "base.bench.heads=0", "--dry-run"], "bench.heads", "0"),
    case("sweep-bench-max_seconds-neg", ["sweep", SWEEP, "base.bench.max_seconds_per_cell=-1", "--dry-run"],
         "bench.max_seconds_per_cell", "-1"),
    case("sweep-unknown-stage", ["sweep", SWEEP, "base.stages=[nope]", "--dry-run"], "'nope'"),
    case("sweep-out_dir-under-file", ["sweep", SWEEP, "out_dir={afile}/sweep"], "out_dir", "afile"),
    case("sweep-results_dir-is-file", ["sweep", SWEEP, "out_dir={d}/sweep", "results_dir={afile}"], "results_dir",
         "afile"),
    # ---------------------------------------------------------------- paper (checked before training)
    case("paper-invalid-yaml", ["paper", "{invalid_yaml}"], "invalid.yaml", "line 3"),
    case("paper-empty-yaml", ["paper", "{empty_yaml}"], "empty.yaml", "empty"),
    case("paper-missing-config", ["paper", "{missing}"], "no_such_file.yaml"),
    case("paper-unknown-scale", ["paper", PAPER, "--scale", "nope"], "'nope'"),
    case("paper-num-0", ["paper", PAPER, "scales.cpu.num=0"], "scales.cpu.num", "0"),
    case("paper-out_dir-under-file", ["paper", PAPER, "scales.cpu.out_dir={afile}/p"], "scales.cpu.out_dir", "afile"),
    case("paper-random-checkpoint", ["paper", PAPER, "scales.cpu.checkpoint={random_ckpt}"], "random.ckpt"),
    # ---------------------------------------------------------------- train (checked before any step)
    case("train-invalid-yaml", ["train", "{invalid_yaml}"], "invalid.yaml", "line 3"),
    case("train-empty-yaml", ["train", "{empty_yaml}"], "empty.yaml", "empty"),
    case("train-unknown-key", ["train", QUICKSTART, "model.dimm=3"], "model.dimm"),
    case("train-height-vs-patch", ["train", QUICKSTART, "data.height=18"], "data.height", "18"),
    case("train-sample-steps-0", ["train", *TINY_TASK, "sample.steps=0"], "sample.steps", "0"),
    case("train-out_dir-under-file", ["train", *TINY_TASK, "out_dir={afile}/run"], "out_dir", "afile"),
    *(case(f"train-{key}-{kind}", ["train", *TINY_TASK, "out_dir={d}/train_" + key, f"{key}={{{name}}}"],
           key, culprit)
      for key in ("resume", "init_from")
      for kind, name, culprit in (("missing", "missing", "no_such_file.yaml"), ("dir", "adir", "adir"),
                                  ("truncated", "truncated_ckpt", "truncated.ckpt"),
                                  ("random", "random_ckpt", "random.ckpt"), ("foreign", "foreign_ckpt", "foreign.ckpt"),
                                  ("tensor", "tensor_ckpt", "tensor.ckpt"),
                                  ("other-model", "other_arch_ckpt", "other_arch.ckpt"))),
    # ---------------------------------------------------------------- sample
    case("sample-missing", ["sample", "{missing}"], "no_such_file.yaml", "does not exist"),
    case("sample-dir", ["sample", "{adir}"], "adir", "is a directory"),
    case("sample-text-file", ["sample", "{afile}"], "afile", "cannot be read"),
    case("sample-truncated", ["sample", "{truncated_ckpt}"], "truncated.ckpt", "cannot be read"),
    case("sample-random", ["sample", "{random_ckpt}"], "random.ckpt", "cannot be read"),
    case("sample-foreign", ["sample", "{foreign_ckpt}"], "foreign.ckpt", "not a mocbench checkpoint"),
    case("sample-tensor", ["sample", "{tensor_ckpt}"], "tensor.ckpt", "not a mocbench checkpoint"),
    case("sample-num-0", ["sample", "{ckpt}", "--num", "0"], "--num", "got 0"),
    case("sample-num-neg", ["sample", "{ckpt}", "--num", "-1"], "--num", "-1"),
    case("sample-steps-0", ["sample", "{ckpt}", "--steps", "0"], "--steps", "got 0"),
    case("sample-steps-neg", ["sample", "{ckpt}", "--steps", "-1"], "--steps", "-1"),
    case("sample-num-not-int", ["sample", "{ckpt}", "--num", "x"], "--num", "'x'"),
    case("sample-sampler", ["sample", "{ckpt}", "--sampler", "rk4"], "rk4"),
    case("sample-guidance-inf", ["sample", "{ckpt}", "--guidance", "inf"], "--guidance", "inf"),
    case("sample-upscale-0", ["sample", "{ckpt}", "sample.scale=0"], "sample.scale", "0"),
    case("sample-model-key", ["sample", "{ckpt}", "model.dim=3"], "model.dim"),
    case("sample-unknown-backend", ["sample", "{ckpt}", "backend.name=nope"], "'nope'"),
    case("sample-bad-param", ["sample", "{ckpt}", "backend.params.top_k=-1"], "top_k", "-1"),
    case("sample-out-is-file", ["sample", "{ckpt}", "--out", "{afile}"], "--out", "afile"),
    case("sample-out-under-file", ["sample", "{ckpt}", "--out", "{afile}/s"], "--out", "afile"),
    case("sample-out-read-only", ["sample", "{ckpt}", "--out", "{readonly}/s"], "--out", "readonly", marks=ROOT_SKIP),
    # ---------------------------------------------------------------- report
    case("report-missing", ["report", "{d}/nope.csv"], "nope.csv", "does not exist"),
    case("report-dir", ["report", "{adir}"], "adir", "is a directory"),
    case("report-unclosed-quote", ["report", "{unclosed_csv}", "--no-figures"], "unclosed.csv:2"),
    case("report-non-numeric", ["report", "{nonnumeric_csv}", "--no-figures"], "nonnumeric.csv:2", "'abc'"),
    case("report-foreign-csv", ["report", "{foreign_csv}", "--no-figures"], "foreign.csv"),
    case("report-binary", ["report", "{binary_yaml}", "--no-figures"], "binary.yaml"),
    case("report-out-under-file", ["report", "{good_csv}", "--no-figures", "--out", "{afile}/r"], "--out", "afile"),
    case("report-out-is-file", ["report", "{good_csv}", "--no-figures", "--out", "{afile}"], "--out", "afile"),
    case("report-paper-table-dir", ["report", "{adir}", "--table", "paper2"], "adir", "is a directory"),
    case("report-not-a-bench-store", ["report", "{keys_only_csv}", "--no-figures", "--out", "{d}/r1"],
         "keys_only.csv", "'workload'"),
    case("report-not-a-sweep-store", ["report", "{keys_only_csv}", "--table", "ablation", "--out", "{d}/r2"],
         "keys_only.csv", "'backend'"),
    case("report-routing-not-json", ["report", "--figure", "routing", "{good_csv}", "--out", "{d}/r3"],
         "good.csv", "not valid JSON", "line 1"),
    case("report-routing-other-json", ["report", "--figure", "routing", "{other_json}", "--out", "{d}/r4"],
         "other.json", "routing.json"),
    # ---------------------------------------------------------------- eval
    case("eval-missing", ["eval", "{d}/no_samples"], "no_samples"),
    case("eval-file-not-folder", ["eval", "{afile}"], "afile", "is a file"),
    case("eval-no-metadata", ["eval", "{adir}"], "metadata.json"),
    case("eval-unknown-evaluator", ["eval", "{adir}", "--evaluators", "psnr"], "'psnr'"),
    case("eval-val-num-0", ["eval", "{adir}", "--val-num", "0"], "--val-num", "got 0"),
    case("eval-store-is-dir", ["eval", "{adir}", "--store", "{adir}"], "--store", "adir", "directory"),
    case("eval-store-under-file", ["eval", "{adir}", "--store", "{afile}/e.csv"], "--store", "afile"),
]


def _run(argv: list[str], files: dict[str, str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([re.sub(r"\{(\w+)\}", lambda m: files[m.group(1)], a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, culprits", CASES)
def test_mistake_is_one_line_naming_the_culprit(argv, culprits, files, capsys):
    try:
        code, out, err = _run(argv, files, capsys)
    except SystemExit as e:  # argparse
        code = e.code
        out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err!r}"
    assert "Traceback" not in out + err
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith("error: ")
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in {lines[0]!r}"


def test_catalogue_has_at_least_50_cases():
    assert len(CASES) >= 50


def test_debug_flag_and_environment_show_the_traceback(files, capsys, monkeypatch):
    """The same mistake with --debug (or MOCBENCH_DEBUG=1): the traceback, then the one-line error."""
    for argv in (["--debug", "plan", "head_dim=-3"], ["plan", "head_dim=-3"]):
        monkeypatch.setenv("MOCBENCH_DEBUG", "1" if argv[0] != "--debug" else "0")
        code, _, err = _run(argv, files, capsys)
        assert code == 2
        assert "Traceback" in err and "ValueError: head_dim must be a positive int, got -3" in err
        assert err.strip().splitlines()[-1] == "error: head_dim must be a positive int, got -3"
    monkeypatch.setenv("MOCBENCH_DEBUG", "0")
    code, _, err = _run(["plan", "head_dim=-3"], files, capsys)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("status"), AttributeError("x"), OSError("no path")])
def test_an_internal_bug_is_not_swallowed_as_exit_2(exc, monkeypatch, capsys):
    """A bug (not a user mistake) propagates with its traceback: a bare KeyError is a failed lookup, not input,
    and an OSError without a path names no culprit."""
    import mocbench.config

    def broken(self):
        raise exc

    monkeypatch.setattr(mocbench.config.LayoutConfig, "build", broken)
    with pytest.raises(type(exc)):
        main(["plan", "head_dim=8"])
    assert "error:" not in capsys.readouterr().err


def test_the_installed_command_prints_one_line_on_stderr_and_exits_2():
    """The real entry point, in a process: stderr one line, stdout empty, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "mocbench.cli", "plan", "batch=0"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: batch must be a positive int, got 0"]


def test_moc_checkpoint_samples_with_dense_without_moc_params(files, tmp_path, capsys):
    """A MoC-trained checkpoint sampled with backend.name=dense: the checkpoint's top_k is not carried over."""
    import json

    code, _, err = _run(["sample", "{ckpt}", "backend.name=dense", "--num", "1", "--steps", "1",
                         "--out", str(tmp_path / "s")], files, capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["backend"] == "dense" and meta["backend_params"] == {} and meta["steps"] == 1
    from mocbench.tasks.lightning_module import load_task

    assert dict(load_task(files["ckpt"], ["backend.name=moc"]).cfg.backend.params) == {"top_k": 1}
    switched = load_task(files["ckpt"], ["backend.name=shot_local", "backend.params.text_anchor=false"])
    assert dict(switched.cfg.backend.params) == {"text_anchor": False}


def test_checkpoints_are_named_step_equals_n(tmp_path):
    """Lightning already prefixes the metric name: step=1.ckpt, not stepstep=1.ckpt."""
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.train import train

    train(load_task_config(None, [*TINY_TASK, "trainer.enable_model_summary=false", f"out_dir={tmp_path}"]))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step=1.ckpt"]
