"""A run's rows written out for a person or a program: CSV (header even when empty) or JSON Lines.

In JSON Lines the payload is an object (``jq '.payload.amount'``); in CSV it is its JSON text. A
failure list shared outside the team leaves out customers' fields: ``--redact FIELD`` replaces
each named payload field's value by :data:`REDACTED` in both formats.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

import orjson

from engine.ledger.store import FOUND_COLUMNS

EXPORT_FORMATS = ("csv", "jsonl")
#: The columns written: every found column but the ledger's internal row number.
WRITTEN_COLUMNS = tuple(column for column in FOUND_COLUMNS if column != "rid")
#: What stands in place of a redacted payload field.
REDACTED = "[redacted]"


def write_export(rows: Iterable[dict], fmt: str, out: TextIO, redact: Iterable[str] = ()) -> int:
    """Write ``rows`` to ``out`` in ``fmt``, the payload fields named in ``redact`` replaced; returns how many."""
    redact = frozenset(redact)
    count = 0
    if fmt == "jsonl":
        for row in rows:
            written = {column: row[column] for column in WRITTEN_COLUMNS}
            written["payload"] = payload_object(row["payload"], redact)
            out.write(orjson.dumps(written).decode() + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=WRITTEN_COLUMNS, extrasaction="ignore")
    writer.writeheader()  # even when no row matches: a file a program can read
    for row in rows:
        payload = payload_object(row["payload"], redact)
        writer.writerow({**row, "payload": None if payload is None else orjson.dumps(payload).decode()})
        count += 1
    return count


def payload_object(payload: str | None, redact: frozenset[str] = frozenset()) -> dict | None:
    """A stored payload (JSON text; None once dropped by ``--keep-payload``) as an object, fields redacted."""
    if payload is None:
        return None
    fields = orjson.loads(payload)
    return {name: REDACTED if name in redact else value for name, value in fields.items()}
