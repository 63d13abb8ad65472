"""Typed input fields: ``--field amount:int`` sends ``"amount": 500``, not ``"amount": "500"``.

CSV values are text; a billing API that wants a number refuses a string. Each typed
field is converted while loading, and a value that does not parse is refused with its
file, line and field. JSON Lines values keep their JSON types, and must already be of
the type named.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from engine.errors import UsageError

_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("an integer")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise ValueError("an integer") from None


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a number")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError("a number") from None
    if not math.isfinite(number):
        raise ValueError("a finite number")
    return value if isinstance(value, int) else number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("true or false (or 1/0, yes/no)")


def _to_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("text")
    return value if isinstance(value, str) else str(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {"int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str}


def parse_field_types(specs: tuple[str, ...]) -> dict[str, Callable[[Any], Any]]:
    """``("amount:int", "vip:bool")`` as field -> converter, or a one-line UsageError."""
    types = {}
    for spec in specs:
        name, sep, kind = spec.rpartition(":")
        if not sep or not name or kind not in CONVERTERS:
            raise UsageError(f"--field {spec!r}: expected NAME:TYPE with TYPE one of {', '.join(CONVERTERS)}")
        types[name] = CONVERTERS[kind]
    return types
