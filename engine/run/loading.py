"""Loading a run: every input row validated and written to the ledger before anything is sent.

This is the write-ahead half of the reliability contract: a row that is in flight when
a process dies is still ``pending`` or ``retrying`` in the ledger, and the next pass
sends it again with the same Idempotency-Key. A bad row stops the load with one line
naming its file, line and field; the caller then deletes the run, so nothing of a bad
input is ever sent.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from engine.config import RunSettings
from engine.errors import InputError
from engine.jsontext import json_text
from engine.ledger import DuplicateRow, Store
from engine.request.inputs import Row
from engine.request.template import CompiledRequest
from engine.request.validation import RowValidator
from engine.run.read_ahead import read_ahead

#: Rows the reader hands over at a time, each batch one insert.
LOAD_BATCH = 2000
#: Rows written per ledger transaction while loading, at most, and the longest one stays open (s).
#: Customer ids in no particular order put each row's index entry on a page of its own, and SQLite
#: writes every page a transaction changed at its commit: a million random ids loaded in 27 s
#: committing every 2,000 rows, 11 s every 25,000, 9 s every 50,000 and 8 s every 100,000, where ids
#: in order took 4.3, 4.3, 4.5 and 4.8 s (the reader waits while a large commit is written). The time
#: bound keeps the write lock short for the ledger's other users.
LOAD_COMMIT_ROWS = 50_000
LOAD_COMMIT_SECONDS = 1.0


class Loaded(NamedTuple):
    """What a load wrote: how many rows, and the SHA-256 (hex) of its seed and every row's id and payload."""

    rows: int
    digest: str


def load_rows(
    ledger: Store,
    run_id: str,
    rows: Iterable[Row],
    settings: RunSettings,
    request: CompiledRequest,
    source: str,
    on_progress: Callable[[int], None] = lambda n: None,
    key_prefix: str | None = None,
    digest_seed: str = "",
    ahead: bool = False,
) -> Loaded:
    """Validate every row and write it to the ledger as ``pending``.

    Each row's idempotency key is ``<key_prefix>:<row id>`` (``key_prefix`` defaults to the
    run id) unless ``--idempotency-key-field`` names a field. The digest, seeded with
    ``digest_seed``, is the identity of the input's content. ``ahead``: ``rows`` are read and
    validated in a helper process (:mod:`engine.run.read_ahead`) while this one writes.
    Raises :class:`InputError` at the first bad row; the caller then deletes the run, so
    nothing of a bad input is ever sent.
    """
    validator = RowValidator(
        request,
        source,
        id_field=settings.id_field,
        field_types=settings.field_types,
        priority_field=settings.priority_field,
        idempotency_key_field=settings.idempotency_key_field,
    )
    digest = hashlib.sha256(digest_seed.encode())

    def batches() -> Iterator[list[tuple]]:
        return _ledger_rows(rows, validator, key_prefix or run_id)

    def insert_all(ledger_rows: Iterable[list[tuple]], ready: Callable[[], bool]) -> int:
        return _insert_all(ledger, run_id, ledger_rows, ready, source, settings.id_field, on_progress, digest)

    if ahead:
        with read_ahead(batches) as received:
            total = insert_all(received, received.ready)
    else:  # a batch is read here only once asked for: never wait for it with a transaction open
        total = insert_all(batches(), lambda: False)
    loaded = Loaded(total, digest.hexdigest())
    if settings.idempotency_key_field:  # two rows with one key: the API would charge only the first
        duplicate = ledger.duplicate_key(run_id)
        if duplicate is not None:
            key, first, second = duplicate
            raise InputError(
                source,
                second,
                f"duplicate idempotency key {key!r} (first on line {first})",
                settings.idempotency_key_field,
            )
    return loaded


def _ledger_rows(rows: Iterable[Row], validator: RowValidator, key_prefix: str) -> Iterator[list[tuple]]:
    """Each row checked, keyed and encoded, in batches of ledger rows ``(line, id, priority, payload, key)``."""
    batch: list[tuple] = []
    check, key_of = validator.check, validator.idempotency_key  # looked up once, not a million times
    for row in rows:
        priority = check(row)
        batch.append((row.line, row.row_id, priority, json_text(row.fields), key_of(row, key_prefix)))
        if len(batch) >= LOAD_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _insert_all(
    ledger: Store,
    run_id: str,
    batches: Iterable[list[tuple]],
    ready: Callable[[], bool],
    source: str,
    id_field: str,
    on_progress: Callable[[int], None],
    digest,
) -> int:
    """Insert every batch; ``digest`` is updated with each row's id and payload as it is written.

    A transaction takes batches while the next one is ``ready`` (already read: a transaction never waits for
    the input, which may be slow), up to :data:`LOAD_COMMIT_ROWS` rows or :data:`LOAD_COMMIT_SECONDS`."""
    total, batches = 0, iter(batches)
    while True:
        with ledger.loading():
            committed, since = total, time.monotonic()
            for batch in batches:
                _insert(ledger, run_id, batch, source, id_field)
                digest.update("".join([f"{row_id}\0{payload}\n" for _, row_id, _, payload, _ in batch]).encode())
                total += len(batch)
                on_progress(total)
                full = total - committed >= LOAD_COMMIT_ROWS or time.monotonic() - since >= LOAD_COMMIT_SECONDS
                if full or not ready():
                    break
            else:
                return total


def _insert(ledger: Store, run_id: str, batch: list[tuple], source: str, id_field: str) -> None:
    try:
        ledger.insert_requests(run_id, batch)
    except DuplicateRow as dup:
        raise InputError(
            source, dup.line, f"duplicate id {dup.row_id!r} (first on line {dup.first_line})", id_field
        ) from None
