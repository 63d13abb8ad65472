"""``--capture NAME=JSONPATH``: the values kept from each 2xx JSON answer (a charge id, its status).

JSONPath is python-jsonpath's (RFC 9535, maintained, pure Python, no dependencies). An
:class:`Extractor` compiles its paths once per sending process and runs in that process, so
only the small captured values cross to the coordinator, as one JSON text per attempt:
``{"values": {"charge_id": "ch_1"}, "missing": {"status": "no match in the answer"}}``.
A capture missing from an answer is recorded as missing with its reason, never as an error of
the row: the charge happened whatever the answer's shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

from engine.errors import UsageError

#: Most bytes of an answer kept to capture from, per transfer in flight; past it the answer's
#: captures are recorded as missing (a window of 1,000 transfers holds at most 64 MB of bodies).
CAPTURE_BODY_BYTES = 64 * 1024
#: A capture's name: one CSV column and one key of the ``captured`` object.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Why a capture is missing.
NO_MATCH = "no match in the answer"
TOO_LARGE = f"answer over {CAPTURE_BODY_BYTES} bytes"
NOT_JSON = "answer is not JSON"


def parse_capture(text: str) -> tuple[str, str]:
    """``NAME=JSONPATH`` as ``(name, path)``; a :class:`UsageError` names what is wrong."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not _NAME.match(name) or not path:
        raise UsageError(f"--capture {text!r}: expected NAME=JSONPATH, e.g. --capture charge_id=$.id")
    import jsonpath  # here: its import (30-40 ms, its grammar's regular expressions) only for --capture

    try:
        jsonpath.compile(path)
    except jsonpath.JSONPathError as err:
        raise UsageError(f"--capture {name}: not a JSONPath: {str(err).splitlines()[0]}") from None
    return name, path


def capture_names(captures: Iterable[str]) -> tuple[str, ...]:
    """The names of ``NAME=JSONPATH`` texts, in order, each once (a repeated name is refused)."""
    names = tuple(parse_capture(text)[0] for text in captures)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--capture {repeated[0]}: given twice")
    return names


class Extractor:
    """Compiled paths, evaluated on an answer's body: the ``captured`` JSON text of one attempt."""

    def __init__(self, captures: Iterable[str]):
        parsed = [parse_capture(text) for text in captures]
        self.paths: tuple = ()
        if parsed:
            import jsonpath

            self.paths = tuple((name, jsonpath.compile(path)) for name, path in parsed)

    def __bool__(self) -> bool:
        return bool(self.paths)

    def extract(self, body: bytes | None) -> str:
        """The values found in ``body`` (None: the answer was over :data:`CAPTURE_BODY_BYTES`)."""
        values: dict[str, object] = {}
        missing: dict[str, str] = {}
        document, unreadable = _parse(body)
        for name, path in self.paths:
            if unreadable:
                missing[name] = unreadable
                continue
            found = path.findall(document) if isinstance(document, (dict, list)) else []
            if found:
                values[name] = found[0] if len(found) == 1 else found
            else:
                missing[name] = NO_MATCH
        return orjson.dumps({"values": values, "missing": missing} if missing else {"values": values}).decode()


def _parse(body: bytes | None) -> tuple[object, str | None]:
    """The answer as JSON, or why it cannot be read."""
    if body is None:
        return None, TOO_LARGE
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError:
        return None, NOT_JSON


def captured_values(captured: str | None) -> dict:
    """The values of a ``captured`` JSON text (none for a row never captured)."""
    return orjson.loads(captured).get("values", {}) if captured else {}
