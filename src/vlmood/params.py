"""Strict parameter values: text from the command line, and checks against a signature's types.

``parse_value`` reads ``key=value`` text the same way everywhere (scores, method parameters,
study settings): ``true``/``false``, ``null``/``none``, integers, floats (``1e-3`` included),
quoted or plain strings. No YAML: tags such as ``!!python/object`` are plain text, never code.

``check_params`` checks values against a callable's annotated parameter types (an ``int``
parameter refuses ``2.5`` and ``true``; a ``float`` accepts integers; a ``bool`` accepts only
booleans) so a result never records a value other than the one that ran.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from vlmood.errors import UsageError

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """``key=value`` text -> bool, None, int, float or str (quotes strip to a str)."""
    t = text.strip()
    low = t.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("null", "none", "~"):
        return None
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t):
        return float(t)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def parse_kv(text: str, what: str) -> tuple[str, Any]:
    """``key=value`` -> (key, parsed value); ``what`` names the option in the error."""
    if "=" not in text:
        raise UsageError(f"{what} {text!r} is not KEY=VALUE (e.g. temperature=0.5)")
    k, _, v = text.partition("=")
    k = k.strip()
    if not k or not k.replace("_", "").isalnum():
        raise UsageError(f"{what} {text!r}: {k!r} is not a parameter name")
    return k, parse_value(v)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_KIND_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked (and, for int -> float, widened) against the type ``hint``."""
    if hint is Any or hint is inspect.Parameter.empty or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, where)
            except UsageError:
                pass  # try the next member; the message below names them all
        kinds = [_KIND_NAMES.get(a, _type_name(a)) for a in args if a is not type(None)]
        raise UsageError(f"{where} must be {' or '.join(kinds)}, got {value!r}")
    if origin is not None:  # list[str], dict[...]: accept the container, leave items to the callee
        if isinstance(value, origin):
            return value
        raise UsageError(f"{where} must be a {_type_name(origin)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise UsageError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise UsageError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a file named 2024 given on the command line
        raise UsageError(f"{where} must be a string, got {value!r}")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise UsageError(f"{where} must be {_type_name(hint)}, got {value!r}")
    return value


def check_params(func: Callable[..., Any], params: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``params`` checked against ``func``'s signature: unknown names and wrong types refused.

    ``what`` names the owner in messages (e.g. ``score 'knn'``).
    """
    target = func.__init__ if inspect.isclass(func) else func  # type: ignore[misc]
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    valid = [
        p.name
        for p in sig.parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise UsageError(
            f"{what} has no parameter {', '.join(map(repr, unknown))}; its parameters: "
            f"{', '.join(valid) or '(none)'}"
        )
    return {k: check_value(v, hints.get(k, Any), f"{what} parameter {k!r}") for k, v in params.items()}
