"""The command line: `mocbench backends`, `mocbench plan`, --help everywhere, clear errors (exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mocbench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_backends_table_lists_every_backend_with_availability(capsys):
    assert main(["backends", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in out["backends"]}
    assert rows["dense"]["available"] and rows["moc"]["available"]
    assert not rows["flash_attn"]["available"] or rows["flash_attn"]["reasons"] == []
    if not rows["xformers"]["available"]:
        assert rows["xformers"]["reasons"], "an unavailable backend must say why"
    impls = {r["impl"]: r for r in out["implementations"]["moc"]}
    assert set(impls) == {"reference", "gather", "fused", "flex", "flex_eager", "triton", "varlen"}
    assert impls["gather"]["available"] and impls["gather"]["auto_order"].startswith("cpu #")
    assert impls["triton"]["auto_order"] == "opt-in" and impls["varlen"]["auto_order"] == "cuda #1"
    # where each impl was measured (mocbench/backends/moc/measured.py): no CUDA impl has been, yet
    assert all(impls[n]["measured"].endswith("not yet measured on a GPU") for n in ("varlen", "flex", "triton"))
    if not torch.cuda.is_available():
        assert not impls["triton"]["available"] and impls["triton"]["reasons"]


def test_plan_paper_config_reports_sparsity_and_flops(capsys):
    assert main(["plan", str(ROOT / "configs/plan/paper_multishot.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    moc = out["rows"][-1]
    assert moc["backend"].startswith("moc")
    assert moc["tokens"] == 180_736 and moc["chunks"] == 152
    assert 0.8 < moc["sparsity"] < 0.9
    assert out["rows"][0]["backend"] == "dense" and out["rows"][0]["sparsity"] == 0


def test_plan_accepts_overrides_without_a_config_file(capsys):
    args = ["plan", "layout.shots=2", "layout.frames=4", "layout.tokens_per_frame=16", "layout.text_tokens=4",
            "params.top_k=1", "head_dim=32", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][-1]["tokens"] == 2 * (4 * 16 + 4)


def test_plan_prints_a_table(capsys):
    assert main(["plan", str(ROOT / "configs/plan/paper_singleshot.yaml")]) == 0
    text = capsys.readouterr().out
    assert "sparsity" in text and "dense/total" in text and "6,368" in text


@pytest.mark.parametrize("override, message", [
    ("layout.tokens_per_frme=3", "layout.tokens_per_frme"),
    ("layout.shots=x", "layout.shots"),
    ("params.top_kk=3", "no parameter 'top_kk'"),
    ("backend=nope", "unknown backend 'nope'"),
    ("layout.frames=0", "frames must be >= 1, got 0"),
])
def test_plan_errors_name_the_bad_key_and_exit_2(capsys, override, message):
    assert main(["plan", override]) == 2
    assert message in capsys.readouterr().err


def test_missing_config_file_is_reported(capsys):
    assert main(["plan", "no/such/file.yaml"]) == 2
    assert "config file 'no/such/file.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["backends", "--help"], ["plan", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_unknown_backend_from_python_lists_names():
    proc = subprocess.run([sys.executable, "-c", "import mocbench; mocbench.get_backend('nope')"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "KeyError" in proc.stderr and "dense" in proc.stderr and "moc" in proc.stderr


def test_backends_listing_never_compiles_the_fused_kernel(capsys, monkeypatch):
    """A new user's first `mocbench backends` lists the fused impl as available (builds on first use)
    without compiling it."""
    from mocbench.backends.moc import cpu_ext

    def refuse(*a, **k):
        raise AssertionError("mocbench backends must not build the C++ kernel")

    monkeypatch.setattr(cpu_ext, "load", refuse)
    monkeypatch.setattr(cpu_ext, "_STATE", {})
    monkeypatch.setattr(cpu_ext, "is_built", lambda: False)
    assert main(["backends", "--json"]) == 0
    fused = {r["impl"]: r for r in json.loads(capsys.readouterr().out)["implementations"]["moc"]}["fused"]
    assert fused["available"] and "compiles at first use" in fused["note"]
