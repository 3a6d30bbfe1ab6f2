"""One error path: user mistakes become one line naming the culprit; bugs keep their traceback.

* :class:`ConfigError` is the error a user can fix (a bad value, key, file or path); validation
  raises it (or a plain ``ValueError``/``TypeError`` from the Python API's own checks).
* :func:`require_file`, :func:`read_text`, :func:`check_output_dir`, :func:`check_output_file` and
  :func:`path_error` sit at file boundaries: they turn ``OSError`` and undecodable bytes into a
  ``ConfigError`` that names the path and what is expected (a directory given for a file, a path
  under a regular file, read-only, missing, binary).
* :func:`user_message` decides, once for every command (``mocbench.cli.main``), whether an escaped
  exception is a user mistake (returns its one-line message; the CLI prints it on stderr and exits
  2) or an internal bug (returns None; the traceback is shown).
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import yaml
from omegaconf.errors import OmegaConfBaseException

DEBUG_ENV = "MOCBENCH_DEBUG"  # MOCBENCH_DEBUG=1: print the traceback of a user error too


class ConfigError(ValueError):
    """A user-caused error (config file, override, path or value); the message names the culprit."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into single spaces (an error is printed as one line)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).strip()


def path_error(exc: OSError, what: str, path: str | os.PathLike | None = None) -> ConfigError:
    """``exc`` (raised while using ``path`` as ``what``, e.g. "config file") as one line naming the path."""
    path = exc.filename if path is None else path
    shown = repr(str(path)) if path is not None else "(no path)"
    code = exc.errno
    if code == errno.ENOENT:
        problem = "does not exist"
    elif code == errno.EISDIR:
        problem = "is a directory; give a file"
    elif code == errno.ENOTDIR:
        problem = f"cannot exist: {_file_ancestor(path)!r} is a regular file, not a directory"
    elif code in (errno.EACCES, errno.EPERM):
        problem = "is not accessible (permission denied)"
    elif code == errno.EROFS:
        problem = "is on a read-only file system"
    elif code == errno.EEXIST and path is not None and Path(path).exists() and not Path(path).is_dir():
        problem = "is a regular file where a directory is needed"
    else:
        problem = f"cannot be used: {exc.strerror or exc}"
    return ConfigError(f"{what} {shown} {problem}")


def _file_ancestor(path) -> str:
    """The nearest existing ancestor of ``path`` that is a regular file (why ENOTDIR happened)."""
    for parent in Path(path).parents:
        if parent.is_file():
            return str(parent)
    return str(Path(path).parent)


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing regular file, else a ConfigError saying what it is instead."""
    p = Path(path)
    try:
        p.stat()
    except OSError as exc:
        raise path_error(exc, what, p) from None
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory; give a file")
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} is not a regular file")
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` is, or can be created as, a writable directory (checked without creating anything)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a regular file; give a directory")
    existing = next((a for a in (p, *p.parents) if a.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{what} {str(p)!r} cannot be created: {str(existing)!r} is a regular file, "
                          f"not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(p)!r} cannot be written: {str(existing)!r} is read-only")
    return p


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` is, or can be created as, a writable regular file (its directory as in :func:`check_output_dir`)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a directory; give a file path")
    check_output_dir(p.parent, f"{what} {str(p)!r}: directory")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{what} {str(p)!r} cannot be written (read-only)")
    return p


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path``; a missing/unreadable path or binary content is a ConfigError naming it."""
    p = require_file(path, what)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise path_error(exc, what, p) from None
    if b"\x00" in data:
        raise ConfigError(f"{what} {str(p)!r} is not a text file (it contains binary data)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not a UTF-8 text file (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start}; a binary file?)") from None


def read_json(path: str | os.PathLike, what: str):
    """The JSON value of ``path``; unreadable or invalid JSON is a ConfigError naming the file and line."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid JSON: line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}") from None


def require_int(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int >= ``low`` (bools refused), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error as ``line N, column M: problem`` (no multi-line context dump)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None and (mark is None or (cmark.line, cmark.column) != (mark.line, mark.column)):
        problem += f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})"
    return one_line(f"{where}{problem}")


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user-caused error, or None for an internal bug (keep its traceback).

    User-caused: ``ConfigError`` and the ``ValueError``/``TypeError`` that validation raises (the
    Python API's contract: every one names the bad value), a ``KeyError`` whose message is a sentence
    (the registry's unknown-name error), an ``OSError`` on a named path, YAML and OmegaConf errors.
    A ``KeyError`` of a bare key (``KeyError('status')``) is a failed lookup in our code, and an
    ``OSError`` without a path names no culprit: both keep their traceback.
    """
    if isinstance(exc, OSError):
        return str(path_error(exc, "path")) if exc.filename is not None else None
    if isinstance(exc, yaml.YAMLError):
        return f"invalid YAML: {yaml_problem(exc)}"
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        return one_line(f"invalid config{f' key {key!r}' if key else ''}: {str(exc).strip().splitlines()[0]}")
    if isinstance(exc, KeyError):
        msg = exc.args[0] if exc.args else ""
        return one_line(msg) if isinstance(msg, str) and " " in msg.strip() else None
    if isinstance(exc, UnicodeDecodeError):
        return one_line(f"a file is not UTF-8 text ({exc}); run with --debug to see which")
    if isinstance(exc, (ValueError, TypeError)):
        return one_line(str(exc)) or type(exc).__name__
    return None
