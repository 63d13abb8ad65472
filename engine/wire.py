"""What crosses between the coordinator and its workers: plain, picklable records.

Free of pycurl and SQL, so both sides import it cheaply, and the one owner of the
records' field order: a record is built here by keyword (:func:`attempt_record`,
:func:`report_message`, :func:`rows_command`) and read back here
(:meth:`Attempt._make`, :func:`decode_report`, :func:`decode_command`).

Rows and attempts travel as plain tuples in the field order of :class:`Dispatch` and
:class:`Attempt` (they pickle ten times faster than the NamedTuples), and the ledger
stores an attempt tuple as it arrives.
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
    #: ``--capture`` values of a 2xx answer, as JSON text (:mod:`engine.delivery.extract`), or None.
    captured: str | None = None
    #: 1 when the API answered ``Idempotent-Replayed: true``: an earlier attempt's answer, not a new charge.
    replayed: int = 0


def attempt_record(
    *,
    rid: int,
    attempt: int,
    outcome: str,
    http_status: int | None = None,
    curl_error: int | None = None,
    error: str | None = None,
    excerpt: str | None = None,
    started_at: float,
    duration_ms: float = 0.0,
    captured: str | None = None,
    replayed: int = 0,
) -> tuple:
    """An :class:`Attempt` as the plain tuple that travels (``Attempt._make`` reads it back)."""
    return (rid, attempt, outcome, http_status, curl_error, error, excerpt, started_at, duration_ms, captured, replayed)


#: Where each field sits in an attempt tuple, for the coordinator's hot path.
RID, ATTEMPT, OUTCOME = (Attempt._fields.index(name) for name in ("rid", "attempt", "outcome"))


class Report(NamedTuple):
    """A worker's message: finished attempts (plain tuples), rows it wants (window plus reserve),
    slots it could start now, whether it is leaving."""

    worker: int
    attempts: list
    want: int
    free: int
    bye: bool


def report_message(*, attempts: list, want: int, free: int, bye: bool = False) -> tuple:
    """What a worker sends; the pool adds which worker it came from (:func:`decode_report`)."""
    return (attempts, want, free, bye)


def decode_report(worker: int, message: tuple) -> Report:
    return Report(worker, *message)


# What the coordinator tells a worker.
ROWS, DRAIN, STOP = "rows", "drain", "stop"


class Command(NamedTuple):
    """``ROWS`` with chunks of plain :class:`Dispatch` tuples (none: the pass is ending, ask for
    free slots only), or ``DRAIN`` (finish what is in flight, then leave) or ``STOP``."""

    kind: str
    chunks: list | None = None


def rows_command(rows: list[Dispatch], chunk_size: int) -> tuple:
    """``rows`` as whole chunks of ``chunk_size``, the last one cut to what was asked."""
    return (ROWS, [[tuple(row) for row in rows[i : i + chunk_size]] for i in range(0, len(rows), chunk_size)])


def decode_command(message: tuple) -> Command:
    return Command(*message)


DRAIN_COMMAND, STOP_COMMAND = (DRAIN, None), (STOP, None)
