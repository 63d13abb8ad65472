"""Failures grouped by cause: the state, the HTTP status or curl error, and the error text with its
numbers and ids folded ("timeout after 30012 ms for cus_8812" and "... 30344 ms for cus_17" are one
cause). Each group reruns through the one filter codec: its state, status, curl error and the longest
literal part of its text, so the failures page it opens shows exactly what a rerun of it sends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.ledger.selection import MAX_TEXT, RowFilter

#: Raw (state, status, error) groups read at most: the commonest; a run with more distinct errors
#: shows its commonest causes.
RAW_GROUPS = 2000
#: Causes a page shows at most.
SHOWN_GROUPS = 50
#: What is folded, in order: uuids, prefixed ids (``cus_42ab``), long hex ids, then any number.
_FOLDS = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b[A-Za-z]{2,12}_[A-Za-z0-9]+\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{12,}\b"), "<id>"),
    (re.compile(r"[0-9]+"), "<n>"),
)
_FOLDED = re.compile(r"<id>|<n>")
#: The shortest literal part of a folded text worth filtering on.
_SHORTEST_PART = 3


def fold(error: str | None) -> str:
    """``error`` with its ids and numbers replaced by ``<id>`` and ``<n>``."""
    text = error or ""
    for pattern, placeholder in _FOLDS:
        text = pattern.sub(placeholder, text)
    return text


@dataclass(frozen=True)
class Cause:
    """One group of failures: what they share, how many rows, and one of them."""

    status: str
    http_status: int | None
    curl_error: int | None
    error: str  # folded
    rows: int
    example: str  # a row id

    def rows_filter(self) -> RowFilter:
        """The filter that names this group's rows: the failures page's, and its rerun's."""
        return RowFilter.from_options(
            states=(self.status,),
            http_status=self.http_status,
            curl_error=self.curl_error,
            error_contains=_literal_part(self.error),
        )


def causes(raw: list[dict], shown: int = SHOWN_GROUPS) -> list[Cause]:
    """The ledger's raw groups (:meth:`~engine.ledger.roles.LedgerReader.failure_groups`) merged by
    folded text, commonest first; each keeps the example row of its largest raw group."""
    merged: dict[tuple, dict] = {}
    for group in raw:  # commonest first: the first seen of a cause is its example
        key = (group["status"], group["http_status"], group["curl_error"], fold(group["error"]))
        found = merged.setdefault(key, {"rows": 0, "example": group["row_id"]})
        found["rows"] += group["rows"]
    ranked = sorted(merged.items(), key=lambda item: -item[1]["rows"])[:shown]
    return [
        Cause(status, http, curl, error, rows=found["rows"], example=found["example"])
        for (status, http, curl, error), found in ranked
    ]


def _literal_part(folded: str) -> str | None:
    """The longest stretch of ``folded`` with nothing folded in it (a substring of every row's error)."""
    parts = sorted((part.strip() for part in _FOLDED.split(folded)), key=len, reverse=True)
    best = parts[0][:MAX_TEXT] if parts else ""
    return best if len(best) >= _SHORTEST_PART else None
