"""``mocbench memory``: train the runs, sample every row on the same stories, score recall; resumable.

Stages, each finished one kept on disk so a re-run (after a kill) does only what is missing:

1. ``train``: every run of the config, parents first (``init_from``), through the sweep's shared
   training stage (:func:`mocbench.sweep.stages._train_run`: ``OUT/work/train/<hash>``, a ``done.json``
   marker, ``resume=last`` after a kill).
2. ``rows``: per row, the run's final weights with the row's backend sample ``eval.stories`` stories
   of the ``sample`` split (the same caption ids and noise for every row), with MoC routing recorded;
   videos are kept in ``OUT/work/samples/<key>.npz``; recall (:mod:`mocbench.eval.recall`), chance,
   bootstrap intervals, the per-shot held-out flow loss and the analytic sparsity go into one row of
   ``OUT/memory.csv`` (a :class:`~mocbench.bench.store.ResultStore`). A ``ground truth`` row scores the
   rendered stories themselves (the ceiling).
3. ``report``: ``memory.md`` (table with tests against the reference row), ``recall_vs_sparsity.png``
   and ``contact_sheet.png`` (:mod:`mocbench.memory.report`).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import mocbench
from mocbench.bench.env import comparable_environment, local_environment
from mocbench.bench.resume import ResumePolicy, needs_run
from mocbench.bench.store import ResultStore
from mocbench.eval.recall import RecallPlan, evaluate_recall, story_plan
from mocbench.eval.val_loss import loss_by_shot
from mocbench.memory.config import MemoryConfig, RowConfig, row_backend, row_training, run_order, task_overrides
from mocbench.memory.progress import TrainProgress
from mocbench.memory.report import GT_LABEL
from mocbench.sweep.routing import LayerStats, install, summary
from mocbench.sweep.stages import Context, _train_run, backend_overrides, run_dir, short_hash
from mocbench.tasks.data import ShapeShotsDataset
from mocbench.tasks.lightning_module import load_task
from mocbench.tasks.sample import sample_checkpoint
from mocbench.tasks.shapeshots import story_from_metadata
from mocbench.tasks.train import shapes_config, torch_threads


def train_runs(cfg: MemoryConfig, work: Path, log: Callable[[str], None]) -> dict[str, str]:
    """``{run name: final checkpoint}``, training what is not done yet (progress lines while it trains)."""

    ctx = Context(out=work, name=cfg.name, log=log)
    ckpts: dict[str, str] = {}
    order = run_order(cfg)
    for i, name in enumerate(order, 1):
        run = cfg.runs[name]
        ov = [*task_overrides(cfg), *backend_overrides(run.backend)]
        if run.steps is not None:
            ov.append(f"trainer.max_steps={run.steps}")
        if run.init_from is not None:
            ov.append(f"init_from={ckpts[run.init_from]}")
        tag = f"[train {i}/{len(order)}] {name}"
        log(f"{tag}: {run.backend.name} {dict(run.backend.params) or ''}"
            + (f", from {run.init_from}'s weights" if run.init_from else ", from scratch"))
        earlier = (work / run_dir("train", None, ov) / "done.json").is_file()
        info = _train_run(ctx, "train", None, ov, callbacks=[TrainProgress(f"  {tag}:", log)])
        ckpts[name] = info["checkpoint"]
        log(f"{tag} done ({info.get('train_seconds', 0):.0f} s training{', finished earlier' if earlier else ''})")
    return ckpts


def row_key(cfg: MemoryConfig, row: RowConfig, ckpt: str) -> str:
    b = row_backend(cfg, row)
    return short_hash({"ckpt": ckpt, "backend": b.name, "params": dict(b.params), "eval": vars(cfg.eval).copy(),
                       "label": row.label})


def _sample(ckpt: str, overrides: list[str], cfg: MemoryConfig):
    """``(videos (N, S, F, 3, H, W) in [0, 1], task, routing summary or None)``."""

    store: dict[int, LayerStats] = {}
    loaded = []

    def on_load(task) -> None:
        loaded.append(task)
        for m in (task.model, task.ema):
            if m is not None:
                install(m, store)

    videos, _ = sample_checkpoint(ckpt, "", overrides=overrides, num=cfg.eval.stories, seed=cfg.eval.seed,
                                  steps=cfg.eval.steps, write_files=False, on_load=on_load)
    return ((videos.float() + 1) / 2).clamp(0, 1).numpy(), loaded[0], (summary(store) if store else None)


def source_routing(info: dict | None, scored: np.ndarray, sources: np.ndarray) -> float | None:
    """Of the routed slots of queries in ``scored`` shots, the fraction that land in ``sources`` shots
    (the shots holding the colours to recall: shot 0 of recall stories, the introduction shots of
    binding stories); None without MoC routing. ``scored``, ``sources``: bool ``(S,)``."""
    if not info or not info["layers"]:
        return None
    c = np.array([layer["counts"] for layer in info["layers"]]).sum(axis=(0, 1))  # (S, S) query shot -> routed shot
    later = c[scored].sum()
    return float(c[scored][:, sources].sum() / later) if later else None


def source_uniform(task, backend, scored: np.ndarray, sources: np.ndarray) -> float | None:
    """What :func:`source_routing` would be if each video query of a scored shot picked uniformly among
    its causal video candidates (earlier chunks not covered by its local anchor): the mean over those
    queries of the share of their candidates lying in ``sources`` shots. None unless ``backend`` is
    causal MoC."""
    params = dict(backend.params)
    if backend.name != "moc" or not params.get("causal", False):
        return None
    d = task.cfg.data
    layout = task.model.layout_for(d.shots, d.frames, d.height, d.width, d.text_tokens)
    chunks = layout.chunks(str(params.get("chunking", "shot")))
    video = ~chunks.is_text.to("cpu").numpy()
    chunk_shot, order = chunks.chunk_shot.to("cpu").numpy(), chunks.order.to("cpu").numpy()
    tok_chunk, shot_of, is_text = chunks.chunk_id.numpy(), layout.shot_id.numpy(), layout.is_text.numpy()
    shot_anchor = mocbench.get_backend("moc", **params).params.resolved_local_anchor(layout) == "shot"
    shares = []
    for q in range(len(shot_of)):
        if is_text[q] or not scored[shot_of[q]]:
            continue
        cand = video & (order < order[tok_chunk[q]]) & ~(shot_anchor & (chunk_shot == shot_of[q]))
        if cand.any():
            shares.append(sources[chunk_shot[cand]].mean())
    return float(np.mean(shares)) if shares else None


def routing_shots(plans: list[RecallPlan], shots: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scored, sources)`` bool ``(S,)``: shots scored in any story, shots any story recalls from."""
    scored, sources = np.zeros(shots, dtype=bool), np.zeros(shots, dtype=bool)
    for p in plans:
        for k, s in enumerate(p.entity_source):
            if s >= 0:
                scored[k] = sources[s] = True
    return scored, sources


def analytic_sparsity(task, backend) -> float:
    d, m = task.cfg.data, task.cfg.model
    layout = task.model.layout_for(d.shots, d.frames, d.height, d.width, d.text_tokens)
    return float(mocbench.estimate(layout, backend.name, head_dim=m.dim // m.heads, **dict(backend.params)).sparsity)


def ground_truth(task, cfg: MemoryConfig, split: str, num: int):
    """``(videos (N, S, F, 3, H, W) in [-1, 1], caption ids (N, S, T), stories)`` of a split of the task's
    data: for ``sample``, the stories every row is sampled with (same seeds as ``mocbench sample``)."""

    seed = cfg.eval.seed if split == "sample" else task.cfg.data.seed
    ds = ShapeShotsDataset(shapes_config(task.cfg), task.tokenizer, task.cfg.data.text_tokens, num, seed=seed,
                           split=split, cache=False)
    items = [ds[i] for i in range(num)]
    stories = [story_from_metadata(i["meta"]) for i in items]
    return torch.stack([i["video"] for i in items]), torch.stack([i["text"] for i in items]), stories


def score_row(cfg: MemoryConfig, row: RowConfig, ckpt: str, work: Path, log: Callable[[str], None]) -> dict:
    b = row_backend(cfg, row)
    t0 = time.perf_counter()
    videos, task, routing = _sample(ckpt, backend_overrides(b), cfg)
    seconds = time.perf_counter() - t0
    key = row_key(cfg, row, ckpt)
    samples = work / "samples" / f"{key}.npz"
    samples.parent.mkdir(parents=True, exist_ok=True)
    videos_u8 = (videos * 255).round().astype(np.uint8)
    np.savez_compressed(samples, videos=videos_u8)
    videos = videos_u8.astype(np.float32) / 255  # scored as saved, so the file reproduces the row
    if routing is not None:
        (work / "samples" / f"{key}.routing.json").write_text(json.dumps(routing))
    with torch_threads(task.cfg.threads):
        *_, stories = ground_truth(task, cfg, "sample", cfg.eval.stories)
        plans = [story_plan(s) for s in stories]
        rec = evaluate_recall(videos, plans, seed=cfg.eval.seed)
        x0, text, _ = ground_truth(task, cfg, "val", cfg.eval.loss_stories)
        losses = loss_by_shot(task, x0, text, timesteps=tuple(cfg.eval.loss_timesteps))
    scored, sources = routing_shots(plans, videos.shape[1])
    to_src = source_routing(routing, scored, sources)
    later = [v for k, v in enumerate(losses) if scored[k]]
    out = {"label": row.label, "backend": b.name, "params": json.dumps(dict(b.params), sort_keys=True),
           "run": row.run, "training": row_training(cfg, row), "note": row.note, "checkpoint": ckpt,
           "story_kind": task.cfg.data.task, "sparsity": analytic_sparsity(task, b), **rec.row(),
           "shots": videos.shape[1], "loss_by_shot": " ".join(f"{v:.4f}" for v in losses), "loss_shot0": losses[0],
           "loss_later": float(np.mean(later)), "samples_file": str(samples), "sample_seconds": round(seconds, 1)}
    if routing is not None:
        out.update(routed_sparsity=routing["total"]["sparsity"], routed_to_source=to_src,
                   routed_to_source_uniform=source_uniform(task, b, scored, sources),
                   cross_shot_fraction=routing["total"]["cross_shot_fraction"])
    log(f"  {row.label}: entity recall {rec.entity_recall:.3f} [{rec.entity_lo:.3f}, {rec.entity_hi:.3f}] "
        f"(chance {rec.chance:.3f}"
        + (f", distractor {rec.distractor:.3f}" if not np.isnan(rec.distractor) else "")
        + f"), scene {rec.scene_recall:.3f}, sparsity {out['sparsity']:.3f}"
        + (f", routed to source shots: {to_src:.2f}" if to_src is not None else "") + f" ({seconds:.0f} s sampling)")
    return out


def ground_truth_row(cfg: MemoryConfig, ckpt: str) -> dict:
    task = load_task(ckpt)
    x0, _, stories = ground_truth(task, cfg, "sample", cfg.eval.stories)
    rec = evaluate_recall(((x0 + 1) / 2).numpy(), [story_plan(s) for s in stories], seed=cfg.eval.seed)
    return {"label": GT_LABEL, "backend": "-", "training": "-", "note": "rendered stories (ceiling)",
            "story_kind": task.cfg.data.task, "shots": x0.shape[1], **rec.row()}


def run_memory(cfg: MemoryConfig, out: str | Path, *, policy: ResumePolicy | None = None,
               log: Callable[[str], None] = print) -> ResultStore:
    """All stages; returns the store ``OUT/memory.csv``."""
    policy = policy or ResumePolicy()

    out = Path(out)
    work = out / "work"
    store = ResultStore(out / "memory.csv")
    t_start = time.perf_counter()
    # the environment (code fingerprint, git state) of the code that runs, read before minutes of training
    env = local_environment()
    cmp_env = comparable_environment("cuda" if torch.cuda.is_available() else "cpu")
    ckpts = train_runs(cfg, work, log)
    jobs = [(GT_LABEL, None, None)] + [(r.label, r, ckpts[r.run]) for r in cfg.rows]
    for i, (label, row, ckpt) in enumerate(jobs, 1):
        key = "gt-" + row_key(cfg, RowConfig(label=GT_LABEL, run=cfg.rows[0].run), "") if row is None \
            else row_key(cfg, row, ckpt)
        if not needs_run(store, key, policy, cmp_env):
            log(f"[rows {i}/{len(jobs)}] {label}: done earlier")
            continue
        log(f"[rows {i}/{len(jobs)}] {label}: sampling {cfg.eval.stories} stories"
            if row is not None else f"[rows {i}/{len(jobs)}] {label}: scoring the rendered stories")
        try:
            result = ground_truth_row(cfg, ckpts[cfg.rows[0].run]) if row is None else score_row(cfg, row, ckpt, work, log)
            status, reason = "ok", ""
        except (ValueError, RuntimeError) as exc:  # recorded; the other rows still run
            result, status, reason = {"label": label}, "failed", f"{type(exc).__name__}: {exc}"[:300]
            log(f"  {label} failed: {reason}")
        store.add({"key": key, "config_name": cfg.name, "status": status, "reason": reason, "order": i, **result, **env,
                   "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    log(f"memory: stages done in {time.perf_counter() - t_start:.0f} s; store {store.path}")
    return store
