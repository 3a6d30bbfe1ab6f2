"""One rank of the two-process training test (tests/test_tasks_ddp.py), started the way ``srun`` starts
``mocbench train`` on a cluster: the rank comes from SLURM_* variables, Lightning's SLURM environment does
the rest. Trains a tiny model with ``train()`` (what ``mocbench train`` calls) and the command-line overrides
given, and writes ``OUT/rank<r>.json``: the story seeds this rank trained on, world size, steps, and a hash
of its final weights.

    python tests/ddp_train_worker.py OUT key=value ...
"""

from __future__ import annotations

import hashlib
import json
import sys

import lightning as L

TINY = ["data.height=8", "data.width=8", "data.frames=2", "data.shots=2", "data.text_tokens=18", "data.train_size=8",
        "data.batch_size=2", "model.dim=32", "model.depth=2", "model.heads=2", "model.max_frames=4", "threads=1",
        "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "optim.warmup_steps=2"]


def weights_hash(module) -> str:
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RecordRank(L.Callback):
    def __init__(self, out: str):
        self.out, self.seeds = out, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seeds += [m["seed"] for m in batch["meta"]]

    def on_train_end(self, trainer, module):
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"rank": trainer.global_rank, "node_rank": trainer.node_rank, "world_size": trainer.world_size,
                       "steps": trainer.global_step, "seeds": self.seeds, "weights": weights_hash(module.model)}, f)


def main(out: str, overrides: list[str]) -> None:
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.train import train

    train(load_task_config(None, [*TINY, f"out_dir={out}", *overrides]), callbacks=[RecordRank(out)])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
