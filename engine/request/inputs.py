"""Streaming the input rows: CSV with a header, JSON Lines, or standard input.

Rows are yielded one at a time so a file of any length is read in constant memory.
Every problem is raised as an :class:`InputError` that names the file, the line and,
where there is one, the field.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from engine.errors import InputError, UsageError

FORMATS = ("csv", "jsonl")


class Row(NamedTuple):
    """One input row: where it came from, its unique id and its fields."""

    line: int
    row_id: str
    fields: dict[str, Any]


def detect_format(path: str, given: str | None) -> str:
    """The format named by ``--format``, or by the file's extension."""
    if given:
        return given
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    where = "standard input" if path == "-" else path
    raise UsageError(f"{where}: cannot tell the format from the name; pass --format csv or --format jsonl")


@contextmanager
def _open_text(path: str):
    if path == "-":
        if sys.stdin is None:  # started with it closed (``<&-``)
            raise InputError("<stdin>", None, "cannot read: standard input is closed")
        yield io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
        return
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as err:
        raise InputError(path, None, f"cannot open: {err.strerror}") from None
    with handle:
        yield handle


def read_rows(path: str, fmt: str, id_field: str) -> Iterator[Row]:
    """Yield every row of ``path`` in order, or raise the first problem found."""
    name = "<stdin>" if path == "-" else path
    reader = _read_csv if fmt == "csv" else _read_jsonl
    with _open_text(path) as handle:
        try:
            yield from reader(handle, name, id_field)
        except UnicodeDecodeError as err:
            raise InputError(name, _line_of_offset(path, err), f"not valid UTF-8 ({err.reason})") from None
        except OSError as err:
            raise InputError(name, None, f"cannot read: {err.strerror or err}") from None


def _read_csv(handle, name: str, id_field: str) -> Iterator[Row]:
    reader = csv.reader(handle, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(name, 1, "empty file: expected a header row") from None
    except csv.Error as err:
        raise InputError(name, reader.line_num or 1, f"malformed CSV header: {err}") from None
    header = [column.strip() for column in header]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    if id_field not in header:
        raise InputError(name, 1, f"missing column (the header has: {', '.join(header)})", id_field)
    _check_header(name, header)
    width, id_index = len(header), header.index(id_field)
    new_row = tuple.__new__  # Row's own constructor is a Python function: twice the cost, a million times
    line = reader.line_num + 1  # where the next record starts; a quoted field may span lines
    try:
        for values in reader:
            if len(values) != width:
                if values:
                    raise InputError(name, line, f"expected {width} fields as in the header, found {len(values)}")
                line = reader.line_num + 1  # a blank line
                continue
            row_id = values[id_index].strip()
            if not row_id:
                raise InputError(name, line, "empty id", id_field)
            yield new_row(Row, (line, row_id, dict(zip(header, values, strict=False))))  # widths checked above
            line = reader.line_num + 1
    except csv.Error as err:
        raise InputError(name, line, f"malformed CSV row: {err}") from None


def _check_header(name: str, header: list[str]) -> None:
    seen = set()
    for column in header:
        if not column:
            raise InputError(name, 1, "the header has an empty column name")
        if column in seen:
            raise InputError(name, 1, "column appears twice in the header", column)
        seen.add(column)


def _read_jsonl(handle, name: str, id_field: str) -> Iterator[Row]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
        except json.JSONDecodeError as err:
            raise InputError(name, line, f"malformed JSON: {err.msg} at column {err.colno}") from None
        except _TooLarge as err:
            raise InputError(name, line, str(err), _field_holding(text, err.text)) from None
        except ValueError as err:
            raise InputError(name, line, f"malformed JSON: {err}") from None
        if not isinstance(fields, dict):
            raise InputError(name, line, f"expected a JSON object, found {type(fields).__name__}")
        if "\\u" in text:  # only an escape can make a lone surrogate
            _check_values(fields, name, line)
        if id_field not in fields:
            raise InputError(name, line, "missing", id_field)
        row_id = fields[id_field]
        if isinstance(row_id, (dict, list, bool)) or row_id is None or str(row_id).strip() == "":
            raise InputError(name, line, "must be a non-empty string or number", id_field)
        yield Row(line, str(row_id), fields)


def _finite_float(text: str) -> float:
    """A JSON number as a double; one too large for it (``1e400``) is refused, not sent as null."""
    value = float(text)
    if math.isinf(value):
        raise _TooLarge(text)
    return value


class _TooLarge(ValueError):
    def __init__(self, text: str):
        super().__init__(f"number {text} is too large to send faithfully (beyond a double)")
        self.text = text


def _field_holding(line_text: str, number: str) -> str | None:
    """The top-level field whose value holds ``number`` (read again, numbers kept as text)."""
    fields = json.loads(line_text, parse_float=str)
    return next((key for key, value in fields.items() if number in json.dumps(value)), None)


def _check_values(fields: dict, name: str, line: int) -> None:
    """Refuse a lone surrogate (``"\\ud800"``): it is not text and cannot be sent as UTF-8."""
    for key, value in fields.items():
        for text in _strings(key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    name,
                    line,
                    "not valid Unicode (a lone surrogate such as \\ud800)",
                    key.encode("utf-8", "backslashreplace").decode(),
                ) from None


def _strings(key: str, value) -> Iterator[str]:
    yield key
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner_key, inner in value.items():
            yield from _strings(inner_key, inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings("", inner)


def _not_json(constant: str):
    """Python's reader accepts NaN and Infinity, which JSON does not: refuse them rather than guess."""
    raise ValueError(f"{constant} is not a JSON number")


def _line_of_offset(path: str, err: UnicodeDecodeError) -> int | None:
    """The line holding the first byte that is not UTF-8 (read again, since text I/O lost it)."""
    if path == "-":
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as raw:
            for line, data in enumerate(raw, start=1):
                try:
                    decoder.decode(data)
                except UnicodeDecodeError:
                    return line
    except OSError:
        return None
    return None
