"""The attempt records a sender reports: one per finished transfer, secrets redacted, numbered per row."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from engine.delivery.capture import Finished  # plain Python: the coordinator writes records too
from engine.request.spec import redact
from engine.states import FAILED
from engine.wire import Dispatch, attempt_record

if TYPE_CHECKING:
    from engine.delivery.extract import Extractor


def finished_record(
    row: Dispatch, attempt: int, state: str, done: Finished, secrets: Iterable[str], extractor: Extractor | None = None
) -> tuple:
    """The record of the row's ``attempt``-th attempt of this pass (numbered after its earlier ones).

    An API that echoes the request must not put a token into the ledger or the log: the
    error, the excerpt and the captured values are redacted. Values are captured from 2xx
    answers only, here in the sending process: only they cross to the coordinator.
    """
    error, excerpt = done.error, done.excerpt
    status = done.outcome.http_status
    captured = extractor.extract(done.body) if extractor and status and 200 <= status < 300 else None
    if secrets:
        error, excerpt, captured = redact(error, secrets), redact(excerpt, secrets), redact(captured, secrets)
    return attempt_record(
        rid=row.rid,
        attempt=row.attempts + attempt,
        outcome=state,
        http_status=done.outcome.http_status,
        curl_error=done.outcome.curl_error,
        error=error,
        excerpt=excerpt,
        started_at=done.started_at,
        duration_ms=done.duration_ms,
        captured=captured,
        replayed=int(done.replayed),
    )


def unsendable_record(row: Dispatch, err: Exception) -> tuple:
    """A row that could not even be started is quarantined (``failed``): re-queued it would only fail again."""
    return unanswered_record(row, FAILED, f"cannot send this row: {type(err).__name__}: {err}")


def unanswered_record(row: Dispatch, outcome: str, error: str) -> tuple:
    """The record of the row's next attempt, ended now in ``outcome`` without an answer (``error`` says why)."""
    return attempt_record(rid=row.rid, attempt=row.attempts + 1, outcome=outcome, started_at=time.time(), error=error)
