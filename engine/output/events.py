"""The run's event log: one JSON object per line, for operators to grep.

It records run events (start, pass start and end, pause, resume, finish) and every
failed attempt. It never sees headers or payloads, so nothing secret can reach it.
"""

from __future__ import annotations

import json
import time

from engine.errors import UsageError
from engine.wire import Attempt


class EventLog:
    """Append JSON lines to ``path``; a ``None`` path makes every call a no-op."""

    def __init__(self, path: str | None):
        self.handle = None
        if path:
            try:
                self.handle = open(path, "a", encoding="utf-8")
            except OSError as err:
                raise UsageError(f"--log-file {path}: cannot open: {err.strerror}") from None

    def emit(self, event: str, **fields) -> None:
        if self.handle is None:
            return
        record = {"time": round(time.time(), 3), "event": event, **fields}
        self.handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.handle.flush()

    def failed_attempt(self, run_id: str, attempt: Attempt) -> None:
        self.emit(
            "attempt_failed",
            run_id=run_id,
            rid=attempt.rid,
            attempt=attempt.attempt,
            outcome=attempt.outcome,
            http_status=attempt.http_status,
            curl_error=attempt.curl_error,
            error=attempt.error,
            duration_ms=round(attempt.duration_ms, 1),
        )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
