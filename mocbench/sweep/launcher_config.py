"""The ``launcher:`` section of a sweep config: how cells are grouped into jobs and what each job asks for.

``group_by`` applies to every launcher; the resources apply to ``--launcher submitit`` (SLURM, or
``cluster: local`` / ``debug`` for tests). Types and unknown keys are checked by OmegaConf (errors name the
key); :func:`check_launcher_config` checks the values, naming ``launcher.<key>`` and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mocbench.errors import ConfigError, require_int

LAUNCHERS = ("local", "submitit")  # --launcher (one module each in mocbench.sweep.launchers)
CLUSTERS = ("slurm", "local", "debug")
GROUP_BY = ("training", "cell")
# sbatch options with a key of their own here: giving them in slurm_additional_parameters would be ambiguous
_OWN_KEYS = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
             "gpus_per_node": "gpus_per_node", "gpus-per-node": "gpus_per_node", "cpus_per_task": "cpus_per_task",
             "cpus-per-task": "cpus_per_task", "mem": "mem_gb", "time": "timeout_min", "job_name": "job_name",
             "job-name": "job_name", "array": "array_parallelism"}
# a sweep job is one process on one node (several tasks would each run every cell of the job)
_ONE_TASK = ("nodes", "ntasks", "ntasks_per_node", "ntasks-per-node", "tasks_per_node")


@dataclass
class LauncherConfig:
    """Jobs of a sweep. One job runs its cells in order in one process (one task, one node)."""

    group_by: str = "cell"  # cell: one job per cell; training: the cells that share a training run form one job
    # submitit: slurm (sbatch) | local (a process per job on this machine; tests) | debug (in this process, one
    # job after another; submitit's debug executor opens pdb on an error)
    cluster: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # e.g. "h100"
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None  # None: the partition's default
    timeout_min: int = 240  # per job; on timeout or preemption the job is requeued and resumes (max_requeues)
    max_requeues: int = 3
    array_parallelism: int | None = None  # at most this many jobs of one submission at once (SLURM array %N)
    job_name: str | None = None  # default mocbench-<sweep name>
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, venv activate)
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    folder: str | None = None  # submitit's pickles and job logs; default OUT/submitit
    poll_seconds: float = 30.0  # how often a waiting `mocbench sweep` looks at job states and the store


def check_launcher_config(lc: LauncherConfig) -> None:
    """Every value of ``launcher.*`` (types were checked when the config was loaded)."""
    if lc.group_by not in GROUP_BY:
        raise ConfigError(f"launcher.group_by must be one of {', '.join(GROUP_BY)}, got {lc.group_by!r}")
    if lc.cluster not in CLUSTERS:
        raise ConfigError(f"launcher.cluster must be one of {', '.join(CLUSTERS)}, got {lc.cluster!r}")
    require_int("launcher.gpus_per_node", lc.gpus_per_node, 0)
    require_int("launcher.cpus_per_task", lc.cpus_per_task, 1)
    require_int("launcher.timeout_min", lc.timeout_min, 1)
    require_int("launcher.max_requeues", lc.max_requeues, 0)
    if lc.array_parallelism is not None:
        require_int("launcher.array_parallelism", lc.array_parallelism, 1)
    if lc.mem_gb is not None and not lc.mem_gb > 0:
        raise ConfigError(f"launcher.mem_gb must be > 0 (GiB per job) or null, got {lc.mem_gb!r}")
    if not lc.poll_seconds > 0:
        raise ConfigError(f"launcher.poll_seconds must be > 0, got {lc.poll_seconds!r}")
    for key in ("partition", "account", "qos", "constraint", "job_name", "folder"):
        value = getattr(lc, key)
        if value is not None and not str(value).strip():
            raise ConfigError(f"launcher.{key} must be a non-empty string or null, got {value!r}")
    for i, line in enumerate(lc.setup):
        if not isinstance(line, str) or not line.strip():
            raise ConfigError(f"launcher.setup[{i}] must be a non-empty shell line, got {line!r}")
    for key, value in lc.slurm_additional_parameters.items():
        if key in _OWN_KEYS:
            raise ConfigError(f"launcher.slurm_additional_parameters.{key}: set launcher.{_OWN_KEYS[key]} instead")
        if key in _ONE_TASK:
            raise ConfigError(f"launcher.slurm_additional_parameters.{key}: a sweep job is one process on one node "
                              "(several tasks would each run every cell); train on several nodes with "
                              "`mocbench train` under srun (configs/cluster/train_multinode.sbatch) and give "
                              "the sweep train.checkpoint")
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"launcher.slurm_additional_parameters.{key} must be a string, number or bool "
                              f"(one sbatch option), got {value!r}")
