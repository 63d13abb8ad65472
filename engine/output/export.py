"""A run's rows written out for a person or a program: CSV (header even when empty) or JSON Lines.

A run's ``--capture`` values are one CSV column per name (``captured_NAME`` where the name is
already a column, as ``status`` is), and one ``captured`` object in JSON Lines, whose missing
values are null (a row that never succeeded has no ``captured`` object: null).

In JSON Lines the payload is an object (``jq '.payload.amount'``); in CSV it is its JSON text. A
failure list shared outside the team leaves out customers' fields: ``--redact FIELD`` replaces
each named payload field's value by :data:`REDACTED` in both formats.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

import orjson

from engine.delivery.extract import capture_names, captured_values
from engine.ledger.store import FOUND_COLUMNS

EXPORT_FORMATS = ("csv", "jsonl")
#: The columns written: every found column but the ledger's internal row number, the raw captures
#: and the time of the row's last change.
WRITTEN_COLUMNS = tuple(column for column in FOUND_COLUMNS if column not in ("rid", "captured", "updated_at"))
#: What stands in place of a redacted payload field.
REDACTED = "[redacted]"


def run_captures(run: dict) -> tuple[str, ...]:
    """The ``--capture`` names of a run, as stored with its settings."""
    return capture_names(run["options"].get("captures") or ())


def capture_columns(names: Iterable[str]) -> dict[str, str]:
    """Each capture name's CSV column: the name, or ``captured_NAME`` where the name is already a column."""
    return {name: f"captured_{name}" if name in WRITTEN_COLUMNS else name for name in names}


def write_export(
    rows: Iterable[dict], fmt: str, out: TextIO, captures: Iterable[str] = (), redact: Iterable[str] = ()
) -> int:
    """Write ``rows`` to ``out`` in ``fmt``, with the values of the run's ``captures`` and the payload
    fields named in ``redact`` replaced; returns how many."""
    columns = capture_columns(captures)
    redact = frozenset(redact)
    count = 0
    if fmt == "jsonl":
        for row in rows:
            record = {column: row[column] for column in WRITTEN_COLUMNS}
            record["payload"] = payload_object(row["payload"], redact)
            if columns:
                values = captured_values(row["captured"])
                record["captured"] = {name: values.get(name) for name in columns} if row["captured"] else None
            out.write(orjson.dumps(record).decode() + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=(*WRITTEN_COLUMNS, *columns.values()), extrasaction="ignore")
    writer.writeheader()  # even when no row matches: a file a program can read
    for row in rows:
        payload = payload_object(row["payload"], redact)
        row = {**row, "payload": None if payload is None else orjson.dumps(payload).decode()}
        if columns:
            values = captured_values(row["captured"])
            row.update({column: _cell(values.get(name)) for name, column in columns.items()})
        writer.writerow(row)
        count += 1
    return count


def payload_object(payload: str | None, redact: frozenset[str] = frozenset()) -> dict | None:
    """A stored payload (JSON text; None once dropped by ``--keep-payload``) as an object, fields redacted."""
    if payload is None:
        return None
    fields = orjson.loads(payload)
    return {name: REDACTED if name in redact else value for name, value in fields.items()}


def _cell(value: object) -> object:
    """A captured value as a CSV cell: a list or an object as its JSON text."""
    return orjson.dumps(value).decode() if isinstance(value, (dict, list)) else value
