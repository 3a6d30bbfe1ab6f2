"""Users' own weights: a local folder in diffusers' ``from_pretrained`` layout; never a download.

``--weights DIR`` is either a pipeline folder (``model_index.json`` and one subfolder per component, the
layout ``DiffusionPipeline.save_pretrained`` writes and the Hub repos use) or a transformer folder
(``config.json`` + ``diffusion_pytorch_model*.safetensors``). Everything is loaded with
``local_files_only=True``; a missing folder, a folder of another layout, missing weight files or a model
of another class than the config expects is a :class:`~mocbench.errors.ConfigError` naming the path.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any

import torch

from mocbench.errors import ConfigError, one_line


def weights_folder(path: str | Path) -> Path:
    """``path`` if it is an existing folder, else one error naming it."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--weights {str(p)!r} does not exist (a local folder in diffusers' from_pretrained "
                          f"layout; nothing is downloaded)")
    if not p.is_dir():
        raise ConfigError(f"--weights {str(p)!r} is a file; give the folder that holds model_index.json "
                          f"(a pipeline) or config.json (a transformer)")
    return p


def transformer_location(path: str | Path) -> tuple[Path, str | None, str]:
    """``(folder, subfolder, class name)`` of the transformer stored under ``path``."""
    root = weights_folder(path)
    for sub in ("transformer", None):
        config = root / sub / "config.json" if sub else root / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_class_name")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                raise ConfigError(f"--weights: {str(config)!r} is not a diffusers model config "
                                  f"({one_line(str(exc))})") from None
            if not isinstance(name, str):
                raise ConfigError(f"--weights: {str(config)!r} has no '_class_name' (not a diffusers model config)")
            return root, sub, name
    raise ConfigError(f"--weights {str(root)!r} has neither transformer/config.json (a pipeline folder) nor "
                      f"config.json (a transformer folder): not a diffusers from_pretrained folder")


def load_transformer(path: str | Path, *, expect_class: str | None = None, depth: dict[str, int] | None = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The transformer stored under ``path`` in ``dtype`` on ``device``, in eval mode.

    ``expect_class``: the diffusers class the caller's config is about (a mismatch is an error).
    ``depth``: ``num_layers`` / ``num_single_layers`` overrides: only the first blocks' weights are loaded."""
    import diffusers

    root, sub, name = transformer_location(path)
    if expect_class is not None and name != expect_class:
        raise ConfigError(f"--weights {str(root)!r} holds a {name}, but the config's architecture is {expect_class}")
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ConfigError(f"--weights {str(root)!r}: '_class_name' {name!r} is not a diffusers model class "
                          f"(diffusers {diffusers.__version__})")
    kwargs: dict[str, Any] = {"subfolder": sub} if sub else {}
    with _quiet_diffusers():  # a shallower model leaves the deeper blocks' weights unused: expected, not news
        try:
            model = cls.from_pretrained(str(root), local_files_only=True, dtype=dtype, **kwargs, **(depth or {}))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"--weights {str(root)!r}: cannot load the {name}: {one_line(str(exc))[:300]}") from None
    return model.to(device).eval()


def load_pipeline(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The diffusers pipeline stored under ``path`` (``model_index.json``) in ``dtype`` on ``device``."""
    import diffusers

    root = weights_folder(path)
    if not (root / "model_index.json").is_file():
        raise ConfigError(f"--weights {str(root)!r} has no model_index.json: sampling needs a whole pipeline folder "
                          f"(transformer, VAE, text encoder, tokenizer, scheduler), as save_pretrained writes it")
    with _quiet_diffusers():
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(root), local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ConfigError(f"--weights {str(root)!r}: cannot load the pipeline: {one_line(str(exc))[:300]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' and transformers' loading chatter (progress bars, unused-weight notes) off while loading."""
    libraries = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            libraries.append(importlib.import_module(name))
        except ImportError:  # transformers is only needed by pipelines with a text encoder
            continue
    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bar in saved:
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()
