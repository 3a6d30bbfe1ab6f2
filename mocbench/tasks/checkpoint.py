"""Reading ``mocbench train`` checkpoints at the file boundary: every failure names the file.

A checkpoint is a Lightning ``.ckpt`` (a torch file) with ``state_dict`` and ``hyper_parameters``
holding the task's ``config`` and ``vocab``. ``mocbench sample``, ``train resume=``, ``train
init_from=``, ``paper`` and the evaluators read checkpoints here, so a missing path, a directory, a
truncated or random file, or a torch file that is not a mocbench checkpoint is one ``ConfigError``
naming the path and what was expected, never a traceback from inside ``torch.load``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mocbench.errors import ConfigError, one_line, path_error, require_file

EXPECTED = "give a .ckpt written by mocbench train"


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """The checkpoint dict of ``path`` (on CPU); ``what`` names the setting in errors (``resume``)."""
    p = require_file(path, what)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except PermissionError as exc:
        raise path_error(exc, what, p) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can raise almost anything (OSError EINVAL, pickle, ...)
        first = one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        raise ConfigError(f"{what} {str(p)!r} cannot be read (truncated or not a torch checkpoint; "
                          f"{type(exc).__name__}{': ' + first[:160] if first else ''}); {EXPECTED}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt.get("state_dict") if isinstance(ckpt, dict) else None, dict) or not isinstance(hp, dict) \
            or "config" not in hp or "vocab" not in hp:
        raise ConfigError(f"{what} {str(p)!r} is not a mocbench checkpoint (no state_dict with a saved task "
                          f"config and vocab); {EXPECTED}")
    return ckpt


def check_fits(model: torch.nn.Module, state: dict, what: str, path: str | os.PathLike) -> None:
    """``state`` (a checkpoint's ``model.*`` weights, prefix removed) loads into ``model``, else a
    ConfigError naming the first differing weight (the model.* settings of the two runs differ)."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {tuple(state[k].shape)} there but {tuple(own[k].shape)} here"
        else:
            detail = f"weights {'missing' if missing else 'unexpected'}: {(missing or extra)[:3]}"
        raise ConfigError(f"{what} {str(Path(path))!r} does not fit this model ({detail}); "
                          f"the model.* settings must match the checkpoint's")


def model_state(ckpt: dict) -> dict:
    """The ``model.*`` weights of a checkpoint's ``state_dict``, prefix removed."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
