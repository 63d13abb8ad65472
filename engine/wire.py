"""What crosses between the coordinator and its workers: plain, picklable records.

Free of pycurl and SQL, so both sides import it cheaply. Rows travel to workers as
plain :class:`Dispatch` tuples and results come back as plain :class:`Attempt`
tuples (they pickle ten times faster than the NamedTuples); each side rebuilds the
named form with ``_make`` where it reads fields by name.
"""

from __future__ import annotations

from typing import NamedTuple


class Dispatch(NamedTuple):
    """A row as the coordinator hands it to a worker."""

    rid: int
    row_id: str
    payload: str
    idempotency_key: str
    attempts: int
    #: Wall-clock time before which the row must not be sent (0: now). Set when an earlier
    #: attempt of the row may still be in progress at the API (its sender died or stalled).
    not_before: float = 0.0


class Attempt(NamedTuple):
    """One finished attempt, as a worker reports it; ``outcome`` is the row's new state."""

    rid: int
    attempt: int
    outcome: str
    http_status: int | None
    curl_error: int | None
    error: str | None
    excerpt: str | None
    started_at: float
    duration_ms: float


# Messages from the coordinator to a worker: (kind, payload).
ROWS, DRAIN, STOP = "rows", "drain", "stop"
