"""Whether a row may enter the ledger, and the idempotency key it is sent with.

Each check answers before anything is sent: a value typed with ``--field`` converts, every
field a template uses is there, nothing bound for a URL or header line can inject a line or
move the URL, a priority is a finite number. A bad row raises :class:`InputError` naming its
file, line and field. Built from plain fields, so loading, a dashboard or a test can use it
without a run's settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from urllib.parse import quote

from engine.errors import InputError, TemplateError
from engine.request.fieldtypes import parse_field_types
from engine.request.inputs import Row
from engine.request.template import CompiledRequest

#: Characters refused in anything sent in a URL or header line: C0 controls (CR, LF, NUL…) and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RowValidator:
    """Checks a row against the templates and options before it may enter the ledger."""

    def __init__(
        self,
        compiled: CompiledRequest,
        source: str,
        *,
        id_field: str = "id",
        field_types: Iterable[str] = (),
        priority_field: str | None = None,
        idempotency_key_field: str | None = None,
    ):
        self.compiled, self.source = compiled, source
        self.priority_field, self.key_field = priority_field, idempotency_key_field
        self.checks_rows = compiled.host_is_dynamic or bool(compiled.header_fields)
        # values that reach a URL or a header line (the id is in the default idempotency key)
        key_field = {idempotency_key_field} if idempotency_key_field else set()
        self.wire_fields = tuple(sorted(compiled.url.fields | compiled.header_fields | {id_field} | key_field))
        self.url_fields = compiled.url.fields
        self.types = parse_field_types(tuple(field_types))
        self.header_bound = compiled.header_fields | key_field

    def check(self, row: Row) -> float:
        """The row's priority, once every check passed (a million rows take this path: few calls)."""
        fields = row.fields
        for name, convert in self.types.items():
            self._convert(row, name, convert)
        if not self.compiled.fields <= fields.keys():  # every row has them: only a bad one is sorted out
            missing = self.compiled.missing_fields(fields)
            raise InputError(self.source, row.line, "used in a template but missing from the row", missing[0])
        for name in self.wire_fields:
            value = fields.get(name)
            if value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            if not (text.isprintable() and text.isascii() and text not in (".", "..")):  # the common value, in C
                self._check_wire_value(row, name, text)
        if self.checks_rows:
            try:
                self.compiled.check(fields)
            except TemplateError as err:
                raise InputError(self.source, row.line, str(err)) from None
        return self._priority(row, self.priority_field) if self.priority_field else 0.0

    def _convert(self, row: Row, name: str, convert) -> None:
        if name not in row.fields:
            raise InputError(self.source, row.line, "typed with --field but missing from the row", name)
        value = row.fields[name]
        try:
            row.fields[name] = convert(value)
        except ValueError as err:
            raise InputError(self.source, row.line, f"expected {err}, found {value!r}", name) from None

    def _check_wire_value(self, row: Row, name: str, text: str) -> None:
        """A value bound for a URL or header: no control characters (header injection, NUL), no dot segment
        (:meth:`check` asks it only of a value that is not printable ASCII, or is a dot segment)."""
        bad = None if text.isprintable() else _CONTROL.search(text)  # controls are never printable
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

    def _priority(self, row: Row, name: str) -> float:
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
        """The row's key: the ``--idempotency-key-field`` value, else ``<key_prefix>:<row id>``."""
        name = self.key_field
        if not name:  # percent-encoded if need be: a header carries it, and header values are ASCII
            row_id = row.row_id if row.row_id.isascii() else quote(row.row_id, safe="")
            return f"{key_prefix}:{row_id}"
        value = row.fields.get(name)
        if value in (None, ""):
            raise InputError(self.source, row.line, "idempotency key is missing or empty", name)
        return str(value)
