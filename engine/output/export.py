"""A run's rows written out for a person or a program: CSV (header even when empty) or JSON Lines."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import TextIO

import orjson

from engine.ledger.store import FOUND_COLUMNS

EXPORT_FORMATS = ("csv", "jsonl")
#: The columns written: every found column but the ledger's internal row number.
WRITTEN_COLUMNS = tuple(column for column in FOUND_COLUMNS if column != "rid")


def write_export(rows: Iterable[dict], fmt: str, out: TextIO) -> int:
    """Write ``rows`` to ``out`` in ``fmt``; returns how many."""
    count = 0
    if fmt == "jsonl":
        for row in rows:
            out.write(orjson.dumps({column: row[column] for column in WRITTEN_COLUMNS}).decode() + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=WRITTEN_COLUMNS, extrasaction="ignore")
    writer.writeheader()  # even when no row matches: a file a program can read
    for row in rows:
        writer.writerow(row)
        count += 1
    return count
