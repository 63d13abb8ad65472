"""Loading a run: every input row validated and written to the ledger before anything is sent.

This is the write-ahead half of the reliability contract: a row that is in flight when
a process dies is still ``pending`` or ``retrying`` in the ledger, and the next pass
sends it again with the same Idempotency-Key. A bad row stops the load with one line
naming its file, line and field; the caller then deletes the run, so nothing of a bad
input is ever sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from engine.config import RunSettings
from engine.errors import InputError
from engine.jsontext import json_text
from engine.ledger import DuplicateRow, Store
from engine.request.inputs import Row
from engine.request.template import CompiledRequest
from engine.request.validation import RowValidator

#: Rows per insert transaction while loading.
LOAD_BATCH = 2000


def load_rows(
    ledger: Store,
    run_id: str,
    rows: Iterable[Row],
    settings: RunSettings,
    request: CompiledRequest,
    source: str,
    on_progress: Callable[[int], None] = lambda n: None,
    key_prefix: str | None = None,
    digest=None,
) -> int:
    """Validate every row and write it to the ledger as ``pending``; return how many.

    Each row's idempotency key is ``<key_prefix>:<row id>`` (``key_prefix`` defaults to the
    run id) unless ``--idempotency-key-field`` names a field. ``digest``, a hashlib object,
    if given, is fed every row's id and payload: the identity of the input's content.
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
    key_prefix = key_prefix or run_id
    batch, total = [], 0
    for row in rows:
        priority = validator.check(row)
        key = validator.idempotency_key(row, key_prefix)
        payload = json_text(row.fields)
        if digest is not None:
            digest.update(f"{row.row_id}\0{payload}\n".encode())
        batch.append((row.line, row.row_id, priority, payload, key))
        if len(batch) >= LOAD_BATCH:
            total += _insert(ledger, run_id, batch, source, settings.id_field)
            on_progress(total)
            batch = []
    if batch:
        total += _insert(ledger, run_id, batch, source, settings.id_field)
        on_progress(total)
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
    return total


def _insert(ledger: Store, run_id: str, batch: list, source: str, id_field: str) -> int:
    try:
        ledger.insert_requests(run_id, batch)
    except DuplicateRow as dup:
        raise InputError(
            source, dup.line, f"duplicate id {dup.row_id!r} (first on line {dup.first_line})", id_field
        ) from None
    return len(batch)
