"""benchmarks/gpu_session.sh: its rehearsal runs every step end to end on CPU, so the first GPU minute is
never spent on a typo in the script, its bench configs or the report.

The rehearsal uses the session's own configs with tiny CPU shapes (CUDA-only kernels give `skipped` rows
with their reasons); here it must finish with exit 0, write the flat output folder (environment, log,
three parseable result stores without a failed row, one report), and run impl varlen (the CUDA default)
in every step, forward and backward. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mocbench.bench.store import read_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_rehearsal_runs_every_step_and_writes_the_session_folder(tmp_path):
    out = tmp_path / "gpu_rehearsal"
    proc = _run("--rehearse", "--out", str(out))
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:] + log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["check.csv", "env.json", "headline.csv", "report.md", "scaling.csv", "session.log"], files
    env = json.loads((out / "env.json").read_text())
    assert env["rehearse"] is True and env["torch"] == torch.__version__ and env["failed_rows"] == []
    assert {n: s["exit"] for n, s in env["steps"].items()} == {"pytest_gpu": "0", "check": "0", "headline": "0",
                                                                "scaling": "0"}
    stores = {name: list(read_rows(out / f"{name}.csv").values()) for name in ("check", "headline", "scaling")}
    for name, rows in stores.items():
        assert rows and all(r["status"] in ("ok", "skipped") for r in rows), name
        assert all(r["reason"] for r in rows if r["status"] == "skipped"), f"{name}: a skip without its reason"
        varlen = [r for r in rows if r["label"].startswith("moc_varlen")]
        assert varlen and all(r["status"] == "ok" and r["impl"] == "varlen(cpu)" for r in varlen), name
    headline = stores["headline"]
    assert {r["tokens"] for r in headline} == {str(8 * (4 + 2 * 8))}  # the paper layout, shrunk: 8 shots
    assert {(r["label"], r["pass"]) for r in headline if r["status"] == "ok"} >= {
        ("dense_flash", "fwd"), ("dense_flash", "fwd+bwd"), ("moc_varlen", "fwd+bwd"), ("moc_varlen_tile", "fwd+bwd"),
        ("moc_flex", "fwd"), ("moc_flex_tile", "fwd")}
    # the rehearsal runs flex uncompiled (no per-shape compile on CPU), and the rows say so
    assert {r["impl"] for r in headline if r["label"].startswith("moc_flex") and r["status"] == "ok"} == {"flex_eager"}
    assert all(r["validation_grad_max_err"] for r in headline if r["status"] == "ok" and r["pass"] == "fwd+bwd")
    assert sorted({int(r["shots"]) for r in stores["scaling"]}) == [1, 2, 4, 8]
    report = (out / "report.md").read_text()
    assert "dense_flash" in report and "moc_varlen_tile" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_stops_at_once_and_says_to_rehearse(tmp_path):
    proc = _run("--out", str(tmp_path / "x"), timeout=120)
    assert proc.returncode == 2 and "--rehearse" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_an_unknown_argument_is_named(tmp_path):
    proc = _run("--rehears", timeout=60)
    assert proc.returncode == 2 and "unknown argument '--rehears'" in proc.stderr
