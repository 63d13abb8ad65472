"""``--not-before`` and ``--delay``: when a run may start sending.

``HH:MM`` means the next such time: 00:01 given at 18:47 is tomorrow's, and the
countdown says so. A full ISO 8601 time already past is refused: sending at once,
without a word, is not what was asked.
"""

from __future__ import annotations

import datetime as dt
import time

from engine.errors import UsageError


def start_time(not_before: str | None, delay: float | None, now: float | None = None) -> float | None:
    """The Unix time before which nothing is sent, or None to send at once."""
    now = time.time() if now is None else now
    if not_before and delay is not None:
        raise UsageError("give --not-before or --delay, not both")
    if delay is not None:
        if delay < 0:
            raise UsageError("--delay must not be negative")
        return now + delay
    if not not_before:
        return None
    if len(not_before) <= 8 and ":" in not_before:
        return _next_clock_time(not_before, now)
    try:
        when = dt.datetime.fromisoformat(not_before).timestamp()
    except ValueError:
        raise UsageError(f"--not-before {not_before!r}: expected ISO 8601 like 2026-11-23T18:00 or HH:MM") from None
    if when < now:
        shown = time.strftime("%Y-%m-%d %H:%M", time.localtime(now))
        raise UsageError(
            f"--not-before {not_before}: that time has passed (it is {shown} now); "
            "give a later time, or none to send at once"
        )
    return when


def _next_clock_time(text: str, now: float) -> float:
    try:
        clock = dt.time.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--not-before {text!r}: expected ISO 8601 like 2026-11-23T18:00 or HH:MM") from None
    today = dt.datetime.fromtimestamp(now).date()
    when = dt.datetime.combine(today, clock).timestamp()
    if when < now:  # already past today: the next one
        when = dt.datetime.combine(today + dt.timedelta(days=1), clock).timestamp()
    return when
