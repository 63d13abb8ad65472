"""Which rows of a run to show, export or send again: one immutable filter, one SQL condition.

The dashboard's failure filters, ``export``'s and ``rerun``'s options all build a
:class:`RowFilter`; the store turns it into a ``WHERE`` clause (with ``?`` placeholders) so
each reader sees exactly the same rows for the same filter.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.ledger.schema import SENT, UNSETTLED
from engine.states import FAILED, PENDING, REJECTED, RETRYING, SUCCEEDED, UNKNOWN

#: What "failures" means when no state is named: every row that ended without succeeding.
NOT_SUCCEEDED = (FAILED, REJECTED, UNKNOWN, RETRYING)


@dataclass(frozen=True)
class RowFilter:
    """Rows in ``states`` (empty: any), with this last HTTP status / curl error, whose error contains
    a text (case-insensitive), or with this row id."""

    states: tuple[str, ...] = NOT_SUCCEEDED
    http_status: int | None = None
    curl_error: int | None = None
    error_contains: str | None = None
    row_id: str | None = None

    def where(self, like: str = "LIKE") -> tuple[str, tuple]:
        """The SQL condition on ``requests`` (``like``: the case-insensitive LIKE of the store) and its values."""
        clauses: list[str] = []
        params: list = []
        if self.states:
            clauses.append(f"status IN ({', '.join('?' for _ in self.states)})")
            params += self.states
            if not {PENDING, SUCCEEDED} & set(self.states):  # the ledger reads its index of these rows
                clauses.append(UNSETTLED)
            elif PENDING not in self.states:
                clauses.append(SENT)
        for column in ("http_status", "curl_error", "row_id"):
            if getattr(self, column) is not None:
                clauses.append(f"{column} = ?")
                params.append(getattr(self, column))
        if self.error_contains:
            clauses.append(f"error {like} ? ESCAPE '\\'")
            params.append("%" + _escape_like(self.error_contains) + "%")
        return " AND ".join(clauses) or "1 = 1", tuple(params)

    def describe(self) -> str:
        """The filter in words, for a summary line or a page title."""
        parts = ["any state" if not self.states else "/".join(self.states)]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.curl_error is not None:
            parts.append(f"curl {self.curl_error}")
        if self.error_contains:
            parts.append(f"error contains {self.error_contains!r}")
        if self.row_id is not None:
            parts.append(f"row {self.row_id}")
        return ", ".join(parts)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Selection:
    """The rows an operator chose to send again: those matching ``rows`` and, if ``row_ids`` is not
    empty, whose id is listed there."""

    rows: RowFilter
    row_ids: tuple[str, ...] = ()
