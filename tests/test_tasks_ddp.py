"""Multi-node training as ``srun mocbench train CONFIG trainer.num_nodes=2 trainer.devices=1
trainer.strategy=ddp`` runs it (configs/cluster/train_multinode.sbatch), on CPU: two processes, each given
its rank by SLURM variables (two one-process "nodes"), gloo backend. Each rank trains on different stories
(Lightning's distributed sampler), both end with the same weights, and rank 0 alone writes the checkpoint,
which holds those weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ddp_train_worker import weights_hash

from mocbench.tasks.lightning_module import load_task

WORKER = Path(__file__).with_name("ddp_train_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _srun_env(rank: int, nodes: int, port: int) -> dict[str, str]:
    """What srun sets for task ``rank`` of ``nodes`` one-task nodes (and nothing left from an outer job)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PL_", "TORCHELASTIC_")) and k not in ("MASTER_ADDR", "MASTER_PORT",
                                                                            "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                            "NODE_RANK", "GROUP_RANK")}
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="mocbench-train", SLURM_NTASKS=str(nodes),
               SLURM_NTASKS_PER_NODE="1", SLURM_NNODES=str(nodes), SLURM_NODELIST="localhost",
               SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank), MASTER_PORT=str(port),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_two_node_ddp_under_srun_shards_data_and_writes_one_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    port = _free_port()
    overrides = ["trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp"]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out), *overrides], env=_srun_env(r, 2, port),
                              cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=120)[0])
        finally:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(logs)[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["node_rank"], r["world_size"], r["steps"]) for r in ranks] == [(0, 0, 2, 2), (1, 1, 2, 2)]
    a, b = (set(r["seeds"]) for r in ranks)
    assert len(a) == len(b) == 4 and not a & b, ranks  # sharded: each rank saw its own half of the 8 stories
    assert len(a | b) == 8
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged across the two processes
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt", "step=2.ckpt"], ckpts  # written once (rank 0), not once per rank
    assert weights_hash(load_task(str(out / "checkpoints" / "last.ckpt")).model) == ranks[0]["weights"]
    assert len(list(out.glob("logs/version_*/metrics.csv"))) == 1
