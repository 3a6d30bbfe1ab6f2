"""Validated construction of a backend's parameter dataclass from keyword arguments.

Each backend declares its parameters as a kw-only dataclass. ``build_params`` rejects
unknown names (suggesting the closest known one), checks every value against the field's
annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``; a value of the
right type that is not one of a ``Literal``'s choices is a ``ValueError``, a wrong type a ``TypeError``),
then lets the dataclass's ``__post_init__`` check ranges. Errors name the backend, the parameter,
the bad value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value). ints are accepted where floats are; bools never as numbers."""
    origin = get_origin(tp)
    if tp is Any:
        return True, value
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp)), value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            ok, coerced = _matches(value, arg)
            if ok:
                return True, coerced
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # pragma: no cover - unannotated exotic types are passed through


def _literal_of_type(tp: Any, value: Any) -> bool:
    """Whether ``tp`` (or a member of its union) is a ``Literal`` with a choice of ``value``'s type."""
    if get_origin(tp) is Literal:
        return any(type(a) is type(value) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return any(_literal_of_type(a, value) for a in get_args(tp))
    return False


def build_params(cls: type, owner: str, values: dict[str, Any]) -> Any:
    """Instantiate dataclass ``cls`` from ``values``; ``owner`` names the backend in errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"params of {owner!r} must be a dataclass, got {cls!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    for name in values:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            known = ", ".join(sorted(fields)) or "(none)"
            raise TypeError(f"backend {owner!r} has no parameter {name!r}{hint} Accepted parameters: {known}")
    coerced: dict[str, Any] = {}
    for name, value in values.items():
        ok, cv = _matches(value, hints[name])
        if not ok:
            # the right type but not an accepted value (local_anchor="none") is a ValueError
            error = ValueError if _literal_of_type(hints[name], value) else TypeError
            raise error(
                f"backend {owner!r} parameter {name!r} must be {_type_name(hints[name])}, "
                f"got {value!r} ({type(value).__name__})"
            )
        coerced[name] = cv
    return cls(**coerced)


def params_as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}

