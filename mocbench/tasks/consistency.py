"""Long-range identity proxies for ShapeShots samples: does a recurring scene or entity look the same?

Every pixel of a shot is snapped to the nearest colour of the ShapeShots palettes (scene colours and
entity colours, ignoring texture darkening). Then, per shot:

* the **scene signature** is the histogram of its scene-colour pixels (pattern colours included);
* the **entity colour** is its most frequent entity-colour pixel (meaningful when the shot shows one
  entity, as in the quickstart).

For a story, pairs of shots that show the same scene id (or the same single entity) should agree,
pairs that show different ones should not. The same numbers on the ground truth are the reference
(1.0 / small distances for same-id pairs). These are cheap proxies, not a learned metric.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from mocbench.tasks.shapeshots import ENTITY_COLOURS, SCENE_COLOURS

_SCENE = np.array(list(SCENE_COLOURS.values()), dtype=np.float32)
_ENTITY = np.array(list(ENTITY_COLOURS.values()), dtype=np.float32)
_PALETTE = np.concatenate([_SCENE, _ENTITY])


def _snap(video: torch.Tensor) -> np.ndarray:
    """``(S, F, 3, H, W)`` in [-1, 1] -> palette index per pixel ``(S, N)``."""
    v = ((torch.as_tensor(video).float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    S = v.shape[0]
    px = v.transpose(0, 1, 3, 4, 2).reshape(S, -1, 3)
    d = ((px[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def shot_signatures(video: torch.Tensor) -> tuple[np.ndarray, list[int | None]]:
    """(scene histograms ``(S, n_scene_colours)``, dominant entity colour index per shot or None)."""
    idx = _snap(video)
    n_scene = len(_SCENE)
    hists, ents = [], []
    for row in idx:
        counts = np.bincount(row, minlength=len(_PALETTE))
        scene = counts[:n_scene].astype(np.float64)
        hists.append(scene / max(scene.sum(), 1))
        ent = counts[n_scene:]
        ents.append(int(ent.argmax()) if ent.sum() >= 3 else None)
    return np.stack(hists), ents


def story_consistency(video: torch.Tensor, meta: dict) -> dict:
    """Per-story pair statistics from ``meta`` (a ShapeShots story's metadata)."""
    hists, ents = shot_signatures(video)
    shots = meta["shots"]
    out = {"same_scene_l1": [], "diff_scene_l1": [], "same_entity_colour_match": [], "diff_entity_colour_match": []}
    for a, b in combinations(range(len(shots)), 2):
        d = float(np.abs(hists[a] - hists[b]).sum())
        out["same_scene_l1" if shots[a]["scene"] == shots[b]["scene"] else "diff_scene_l1"].append(d)
        ea, eb = shots[a]["entities"], shots[b]["entities"]
        if len(ea) == 1 and len(eb) == 1 and ents[a] is not None and ents[b] is not None:
            key = "same_entity_colour_match" if ea == eb else "diff_entity_colour_match"
            out[key].append(float(ents[a] == ents[b]))
    return out


def summarize(videos: list[torch.Tensor], metas: list[dict]) -> dict:
    """Means over all pairs of all stories (None where no pair of that kind occurred), with counts."""
    pooled: dict[str, list[float]] = {}
    for v, m in zip(videos, metas):
        for k, vals in story_consistency(v, m).items():
            pooled.setdefault(k, []).extend(vals)
    return {k: {"mean": (float(np.mean(vals)) if vals else None), "pairs": len(vals)} for k, vals in pooled.items()}
