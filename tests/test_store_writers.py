"""The result store with many writers, foreign rows and malformed files (issue: results you can trust).

Guards: two real processes writing one store keep every row; a killed writer's temp file and lock do not
outlive it; the file mode survives a rewrite; a row measured in another environment is re-measured (or
kept with --reuse-foreign and marked); malformed CSV is an error naming file and line, never a lost row.
"""

import csv
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mocbench.bench import ResultStore, load_bench_config, run_bench
from mocbench.bench.config import expand_cells
from mocbench.bench.resume import ResumePolicy
from mocbench.bench.store import load_table
from mocbench.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = "workloads=[{name: tiny, shots: [1, 2], frames: [2], tokens_per_frame: 4, text_tokens: 2, heads: 1, head_dim: 8}]"
TIMING = ["timing.warmup=0", "timing.repeats=2", "timing.min_repeat_ms=0"]


def bench_args(backends: str, out: Path) -> list[str]:
    return [f"backends={backends}", WORKLOAD, *TIMING, f"output={out}"]


def read_rows(path: Path) -> dict:
    with open(path, newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def rewrite(path: Path, change) -> None:
    rows = list(read_rows(path).values())
    for r in rows:
        change(r)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


WRITER = textwrap.dedent("""
    import sys, time
    from mocbench.bench.store import ResultStore
    path, name, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    store = ResultStore(path)  # read once, like a long run that started before the other writer's rows
    for i in range(n):
        store.add({"key": f"{name}-{i}", "status": "ok", "total_ms": 1.0 + i, "label": name})
""")


def test_two_processes_adding_interleaved_rows_keep_every_row(tmp_path):
    import time

    out = tmp_path / "store.csv"
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), name, "40", start], cwd=ROOT)
             for name in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    rows = read_rows(out)
    assert len(rows) == 80, f"lost {80 - len(rows)} of 80 rows"
    assert {r["label"] for r in rows.values()} == {"a", "b"}
    assert not list(tmp_path.glob(".*.tmp")), "no temp file may be left behind"


def test_two_concurrent_bench_commands_into_one_store_keep_both_runs(tmp_path):
    out = tmp_path / "shared.csv"
    runs = {"a": "[{name: dense}, {name: shot_local}]", "b": "[{name: moc, params: {top_k: 1, chunking: frame}}, "
                                                            "{name: frame_window}]"}
    procs = [subprocess.Popen([sys.executable, "-m", "mocbench.cli", "bench", "--no-progress",
                               *bench_args(backends, out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for backends in runs.values()]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rows = read_rows(out)
    expected = {c.key for b in runs.values() for c in expand_cells(load_bench_config(None, bench_args(b, out)))}
    assert set(rows) == expected and len(rows) == 8, "both runs' rows must be in the store"
    assert {r["backend"] for r in rows.values()} == {"dense", "shot_local", "moc", "frame_window"}


def test_a_killed_writers_temp_file_is_removed_and_the_mode_kept(tmp_path):
    out = tmp_path / "r.csv"
    store = ResultStore(out)
    store.add({"key": "a", "status": "ok"})
    os.chmod(out, 0o644)
    orphan = tmp_path / ".r.csv.killed.tmp"
    orphan.write_text("half a row")
    store.add({"key": "b", "status": "ok"})
    assert not orphan.exists(), "the next writer removes a killed writer's temp file"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644, "a rewrite keeps the store's permission bits"
    assert set(read_rows(out)) == {"a", "b"}


def test_a_new_store_gets_the_umask_mode_not_0600(tmp_path):
    out = tmp_path / "new.csv"
    old = os.umask(0o022)
    try:
        ResultStore(out).add({"key": "a", "status": "ok"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


def test_a_store_path_that_cannot_work_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        ResultStore(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="afile.* is a file, not a directory"):
        ResultStore(afile / "r.csv")


@pytest.mark.parametrize("body, message", [
    ('key,status,total_ms\na,ok,1.0\nb,"ok,2.0\nc,ok,3.0\n', r"r\.csv:3: .*(malformed CSV|fields)"),
    ("key,status,total_ms\na,ok,1.0,extra\n", r"r\.csv:2: 4 fields where the header has 3"),
    ("key,status,total_ms\na,ok,fast\n", r"r\.csv:2: column 'total_ms' must be a number, got 'fast'"),
    ("key,status,total_ms\na,ok,-3\n", r"r\.csv:2: column 'total_ms' must be >= 0, got '-3'"),
    ("key,status,total_ms\na,maybe,1\n", r"r\.csv:2: status 'maybe' is not one of"),
    ("key,status,total_ms\n,ok,1\n", r"r\.csv:2: empty 'key'"),
    ("name,value\nx,1\n", r"r\.csv:1: not a mocbench result store"),
])
def test_malformed_store_is_an_error_naming_file_and_line(tmp_path, body, message):
    path = tmp_path / "r.csv"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        ResultStore(path)
    with pytest.raises(ConfigError, match=message):
        load_table(path)


def test_binary_store_is_named_not_decoded(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"r\.csv' is not a UTF-8 CSV"):
        ResultStore(path)


def test_rows_from_another_environment_are_remeasured_with_a_notice(tmp_path):
    out = tmp_path / "r.csv"
    args = bench_args("[{name: dense}, {name: shot_local}]", out)
    run_bench(load_bench_config(None, args), progress=False)
    rewrite(out, lambda r: r.update(env_code="0123456789abcdef", env_threads="64"))
    lines, measured = [], []
    run_bench(load_bench_config(None, args), progress=False, log=lines.append,
              on_cell_done=lambda c, r: measured.append(c.key))
    assert len(measured) == 4, "every foreign row is re-measured"
    assert len(lines) == 1 and "re-measuring 4 row(s)" in lines[0] and "env_code 0123456789abcdef ->" in lines[0]
    assert "env_threads 64 ->" in lines[0] and "--reuse-foreign" in lines[0]
    assert all(r["env_code"] != "0123456789abcdef" for r in read_rows(out).values())


def test_reuse_foreign_keeps_rows_and_the_report_marks_the_ratio(tmp_path, capsys):
    from mocbench.cli import main

    out = tmp_path / "r.csv"
    args = bench_args("[{name: dense}, {name: shot_local}]", out)
    run_bench(load_bench_config(None, args), progress=False)
    rewrite(out, lambda r: r["backend"] == "shot_local" and r.update(env_device="Some Other CPU"))
    before = read_rows(out)
    assert main(["bench", "--no-progress", "--reuse-foreign", *args]) == 0
    text = capsys.readouterr().out
    assert "keeping (--reuse-foreign; reports mark them) 2 row(s)" in " ".join(text.split())
    assert "0 measured now" in " ".join(text.split()) and read_rows(out) == before
    assert "‡" in text and "not a side-by-side ratio" in " ".join(text.split())
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report), "--no-figures"]) == 0
    assert "‡" in (report / "tables" / "latency_pivot.md").read_text()
    assert "not a side-by-side ratio" in (report / "report.md").read_text()


def test_retry_skipped_remeasures_skipped_rows_only(tmp_path):
    out = tmp_path / "r.csv"
    args = bench_args("[{name: dense}, {name: xformers}]", out)
    run_bench(load_bench_config(None, args), progress=False)
    skipped = {k for k, r in read_rows(out).items() if r["status"] == "skipped"}
    assert len(skipped) == 2
    measured = []
    run_bench(load_bench_config(None, args), progress=False, on_cell_done=lambda c, r: measured.append(c.key))
    assert measured == []
    run_bench(load_bench_config(None, args), policy=ResumePolicy(retry_skipped=True), progress=False,
              on_cell_done=lambda c, r: measured.append(c.key))
    assert set(measured) == skipped


def test_bench_without_out_writes_under_runs_never_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_bench_config(ROOT / "configs" / "bench" / "cpu_quick.yaml", [WORKLOAD, *TIMING, "backends=[{name: dense}]"])
    store = run_bench(cfg, progress=False)
    assert store.path == Path("runs/cpu_quick/results.csv") and (tmp_path / store.path).is_file()
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only directories; the check cannot fail as root")
def test_a_read_only_store_directory_is_refused_before_anything_is_measured(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="read-only"):
            ResultStore(ro / "r.csv")
    finally:
        ro.chmod(0o755)
