"""Loading a run: every input row validated and written to the ledger before anything is sent.

This is the write-ahead half of the reliability contract: a row that is in flight when
a process dies is still ``pending`` or ``retrying`` in the ledger, and the next pass
sends it again with the same Idempotency-Key. A bad row stops the load with one line
naming its file, line and field; the caller then deletes the run, so nothing of a bad
input is ever sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote

from engine.config import RunSettings
from engine.errors import InputError, TemplateError
from engine.jsontext import json_text
from engine.ledger import DuplicateRow, Store
from engine.request.fieldtypes import parse_field_types
from engine.request.inputs import Row
from engine.request.template import CompiledRequest

#: Characters refused in anything sent in a URL or header line: C0 controls (CR, LF, NUL…) and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
    validator = RowValidator(request, settings, source)
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


class RowValidator:
    """Checks a row against the templates and options before it may enter the ledger."""

    def __init__(self, compiled: CompiledRequest, settings: RunSettings, source: str):
        self.compiled, self.settings, self.source = compiled, settings, source
        self.checks_rows = compiled.host_is_dynamic or bool(compiled.header_fields)
        # values that reach a URL or a header line (the id is in the default idempotency key)
        key_field = {settings.idempotency_key_field} if settings.idempotency_key_field else set()
        self.wire_fields = tuple(sorted(compiled.url.fields | compiled.header_fields | {settings.id_field} | key_field))
        self.url_fields = compiled.url.fields
        self.types = parse_field_types(settings.field_types)
        self.header_bound = compiled.header_fields | key_field

    def check(self, row: Row) -> float:
        for name, convert in self.types.items():
            self._convert(row, name, convert)
        missing = self.compiled.missing_fields(row.fields)
        if missing:
            raise InputError(self.source, row.line, "used in a template but missing from the row", missing[0])
        for name in self.wire_fields:
            self._check_wire_value(row, name)
        if self.checks_rows:
            try:
                self.compiled.check(row.fields)
            except TemplateError as err:
                raise InputError(self.source, row.line, str(err)) from None
        return self._priority(row)

    def _convert(self, row: Row, name: str, convert) -> None:
        if name not in row.fields:
            raise InputError(self.source, row.line, "typed with --field but missing from the row", name)
        value = row.fields[name]
        try:
            row.fields[name] = convert(value)
        except ValueError as err:
            raise InputError(self.source, row.line, f"expected {err}, found {value!r}", name) from None

    def _check_wire_value(self, row: Row, name: str) -> None:
        """A value bound for a URL or header: no control characters (header injection, NUL), no dot segment."""
        value = row.fields.get(name)
        if value is None:
            return
        text = value if isinstance(value, str) else str(value)
        bad = _CONTROL.search(text)
        if bad:
            raise InputError(
                self.source,
                row.line,
                f"control character {bad.group()!r} is not allowed in a value sent in a URL or header",
                name,
            )
        if name in self.header_bound and not text.isascii():
            raise InputError(
                self.source,
                row.line,
                "a header value must be ASCII (HTTP sends header bytes as they are); percent-encode it in the input",
                name,
            )
        if name in self.url_fields and text in (".", ".."):
            raise InputError(self.source, row.line, f"{text!r} would be read as a path segment and move the URL", name)

    def _priority(self, row: Row) -> float:
        name = self.settings.priority_field
        if not name:
            return 0.0
        value = row.fields.get(name)
        if value in (None, ""):
            return 0.0
        try:
            priority = float(value)
        except (TypeError, ValueError):
            priority = math.nan
        if not math.isfinite(priority):
            raise InputError(self.source, row.line, f"priority must be a finite number, found {value!r}", name)
        return priority

    def idempotency_key(self, row: Row, key_prefix: str) -> str:
        name = self.settings.idempotency_key_field
        if not name:  # percent-encoded if need be: a header carries it, and header values are ASCII
            row_id = row.row_id if row.row_id.isascii() else quote(row.row_id, safe="")
            return f"{key_prefix}:{row_id}"
        value = row.fields.get(name)
        if value in (None, ""):
            raise InputError(self.source, row.line, "idempotency key is missing or empty", name)
        return str(value)
