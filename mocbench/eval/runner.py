"""``mocbench eval``: run the chosen evaluators on a samples folder and write one row each into a store.

Rows go into a :class:`mocbench.bench.store.ResultStore` (CSV, atomic writes, resumable): one row
per (evaluator, sample set), and for the real VBench one row per dimension, keyed by evaluator,
backend label and a hash of (checkpoint, seed, num, steps, sampler), with status ``ok`` /
``skipped`` (with the reason) / ``failed`` (with the error), the metrics as columns, ``proxy=1``
on weight-free approximations, and the environment. A re-run skips finished rows unless ``force``,
and evaluates again rows written in another environment (code, device, torch, threads) unless
``reuse_foreign``. The ``memory`` evaluator is the position-free recall of :mod:`mocbench.eval.recall`,
the same definition ``mocbench memory`` uses.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mocbench.bench.env import comparable_environment, environment
from mocbench.bench.resume import ResumePolicy, foreign_notices, needs_run
from mocbench.bench.store import ResultStore
from mocbench.config import stable_hash
from mocbench.eval.cost import cost_scores
from mocbench.eval.fidelity import fidelity
from mocbench.eval.names import EVALUATORS
from mocbench.eval.recall import evaluate_recall, story_plan
from mocbench.eval.samples import SampleSet
from mocbench.eval.val_loss import validation_loss
from mocbench.eval.vbench_proxy import proxy_scores
from mocbench.eval.vbench_real import VBenchSettings, run_vbench, vbench_python_version
from mocbench.tasks.shapeshots import story_from_metadata


class Skip(Exception):
    """An evaluator does not apply to this sample set; the message is the recorded reason."""


@dataclass
class EvalRequest:
    samples: str
    reference: str | None = None
    evaluators: tuple[str, ...] = EVALUATORS
    store: str | None = None  # default: SAMPLES/../eval.csv
    config_name: str = ""
    force: bool = False
    reuse_foreign: bool = False  # keep rows evaluated in another environment (see mocbench.bench.resume)
    vbench: VBenchSettings = field(default_factory=VBenchSettings)
    val_num: int | None = None

    def __post_init__(self) -> None:
        self.evaluators = tuple(self.evaluators)
        bad = [e for e in self.evaluators if e not in EVALUATORS]
        if bad:
            raise ValueError(f"unknown evaluator(s) {bad}; known: {', '.join(EVALUATORS)}")
        if not self.evaluators:
            raise ValueError(f"no evaluators given; known: {', '.join(EVALUATORS)}")


def set_hash(s: SampleSet) -> str:
    ident = {"checkpoint": Path(s.checkpoint).name if s.checkpoint else "", "seed": s.meta.get("seed"),
             "num": s.meta.get("num"), "steps": s.meta.get("steps"), "sampler": s.meta.get("sampler")}
    return stable_hash(ident)


# ----------------------------------------------------------------------------- evaluators
def _fidelity(s: SampleSet, req: EvalRequest) -> dict:
    if not req.reference:
        raise Skip("no --reference (dense samples from the same checkpoint, captions and seeds) given")
    return fidelity(s, SampleSet.load(req.reference))


def _val_loss(s: SampleSet, req: EvalRequest) -> dict:
    if not s.checkpoint:
        raise Skip("metadata.json names no checkpoint")
    return validation_loss(s.checkpoint, s.backend, s.backend_params, num=req.val_num)


def _proxy(s: SampleSet, req: EvalRequest) -> dict:
    return {**proxy_scores(s.videos()), "proxy": 1}


def _memory(s: SampleSet, req: EvalRequest) -> dict:
    """Position-free recall (:mod:`mocbench.eval.recall`): per shot that shows an entity seen alone in
    an earlier shot, does it draw that shot's colour; chance, intervals and (binding) distractor rate."""
    gts = [m.get("ground_truth") for m in s.meta["samples"]]
    if not all(isinstance(g, dict) and "cast" in g for g in gts):
        raise Skip("samples carry no ShapeShots story metadata (ground_truth with cast/shots)")
    if s.geometry[0] < 2:
        raise Skip("single-shot samples: nothing recurs across shots")
    plans = [story_plan(story_from_metadata(g)) for g in gts]
    scored = sum(any(k >= 0 for k in p.entity_source) for p in plans)
    if scored < 2:
        raise Skip(f"{scored} of {len(plans)} stories show an entity alone in two shots; recall needs >= 2 "
                   "(sample more stories, or use ShapeShots task=recall / binding)")
    videos = np.stack([s.native(i) for i in range(len(s))])
    return evaluate_recall(videos, plans, seed=int(s.meta.get("seed") or 0)).row()


def _cost(s: SampleSet, req: EvalRequest) -> dict:
    if not s.checkpoint:
        raise Skip("metadata.json names no checkpoint")
    return cost_scores(s)


RUNNERS: dict[str, Callable[[SampleSet, EvalRequest], dict]] = {
    "fidelity": _fidelity, "val_loss": _val_loss, "vbench_proxy": _proxy, "memory": _memory, "cost": _cost}


# ----------------------------------------------------------------------------- driver
def evaluate(req: EvalRequest, log: Callable[[str], None] = print):
    """Run ``req``; returns the store. Raises ``ValueError`` for bad inputs (missing folder, ...)."""

    samples = SampleSet.load(req.samples)
    if req.reference:
        SampleSet.load(req.reference)  # fail early on a bad path
    samples.videos()  # decode now: an unreadable video is a user error, not a failed row
    store = ResultStore(req.store or Path(req.samples).parent / "eval.csv")
    base = {"config_hash": set_hash(samples), "config_name": req.config_name, "backend": samples.backend,
            "label": samples.label, "family": "eval", "params": json.dumps(samples.backend_params, sort_keys=True),
            "samples": str(samples.root), "checkpoint": samples.checkpoint, "seed": samples.meta.get("seed"),
            "num": len(samples), "steps": samples.meta.get("steps"), "device": "cpu", **environment("cpu")}
    env = comparable_environment("cpu")
    policy = ResumePolicy(reuse_foreign=req.reuse_foreign)
    keys = [f"eval|{name}|{samples.label}|{base['config_hash']}" for name in req.evaluators]
    for line in foreign_notices(store, [k for k in keys if k in store.rows], policy, lambda key: env):
        log(line)
    for name, key in zip(req.evaluators, keys):
        if name == "vbench":
            _run_vbench(samples, req, store, base, log)
            continue
        if not req.force and not needs_run(store, key, policy, env):
            log(f"{name}: done already ({key})")
            continue
        row = {**base, "key": key, "evaluator": name}
        t0 = time.perf_counter()
        try:
            row.update(RUNNERS[name](samples, req), status="ok")
        except Skip as exc:
            row.update(status="skipped", reason=str(exc))
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - an evaluator bug must not lose the other rows; the row says why
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            log(traceback.format_exc())
        row.update(eval_s=round(time.perf_counter() - t0, 3), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        store.add(row)
        log(f"{name}: {row['status']} {row.get('reason', '')}".rstrip())
    return store


def _run_vbench(samples: SampleSet, req: EvalRequest, store, base: dict, log) -> None:
    keys = {d: f"eval|vbench|{d}|{samples.label}|{base['config_hash']}" for d in req.vbench.dimensions}
    policy, env = ResumePolicy(reuse_foreign=req.reuse_foreign), comparable_environment("cpu")
    todo = [d for d in req.vbench.dimensions if req.force or needs_run(store, keys[d], policy, env)]
    if not todo:
        log("vbench: done already")
        return
    settings = VBenchSettings(**{**req.vbench.__dict__, "dimensions": tuple(todo)})
    t0 = time.perf_counter()
    results = run_vbench(samples, Path(req.samples).parent / "vbench" / samples.root.name, settings)
    version = vbench_python_version(settings) if any(r["status"] == "ok" for r in results.values()) else ""
    for dim in todo:
        r = results[dim]
        row = {**base, "key": keys[dim], "evaluator": "vbench", "dimension": dim, "status": r["status"],
               "reason": r.get("reason", ""), f"vbench_{dim}": r.get("score"), "vbench_env": version,
               "eval_s": round(time.perf_counter() - t0, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        store.add(row)
        log(f"vbench {dim}: {r['status']} {r.get('score', r.get('reason', ''))}")
