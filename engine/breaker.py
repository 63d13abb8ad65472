"""The pool-wide circuit breaker: when the endpoint is down, the whole run pauses.

Every worker reports each outcome; after ``threshold`` "down" outcomes in a row
(connection refused, connect timeout, 502/503/504) across all workers, the breaker
opens and no worker starts a transfer. At growing intervals exactly one worker
claims a probe and sends one request; an answer closes the breaker and the run
resumes, another "down" reopens it for twice as long. Its state lives in shared
memory, so the pause is pool-wide, not per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.shared import SharedState

CLOSED, OPEN, PROBING = 0.0, 1.0, 2.0
_STATE, _STREAK, _PROBE_AT, _INTERVAL, _OPENED_AT, _PROBE_STARTED = range(6)

#: HTTP statuses that mean "the endpoint is down", not "this request failed".
DOWN_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When to open, and how the probe interval grows."""

    threshold: int = 20
    first_interval: float = 1.0
    max_interval: float = 10.0
    probe_timeout: float = 35.0


class CircuitBreaker(SharedState):
    """A breaker over a shared ``multiprocessing.Array('d', 6)``; create it with :meth:`create`."""

    def __init__(self, shared, settings: BreakerSettings = BreakerSettings()):
        super().__init__(shared)
        self.settings = settings

    @classmethod
    def create(cls, context, settings: BreakerSettings = BreakerSettings()) -> "CircuitBreaker":
        return cls(context.Array("d", [CLOSED, 0, 0, settings.first_interval, 0, 0]), settings)

    def allow(self) -> bool | str:
        """True to send normally, ``"probe"`` to send this one transfer as the probe, False to wait."""
        if self.view[_STATE] == CLOSED:
            return True
        s = self.shared
        now = time.monotonic()
        with s.get_lock():
            stuck_probe = s[_STATE] == PROBING and now - s[_PROBE_STARTED] > self.settings.probe_timeout
            if (s[_STATE] == OPEN and now >= s[_PROBE_AT]) or stuck_probe:
                s[_STATE], s[_PROBE_STARTED] = PROBING, now
                return "probe"
            return s[_STATE] == CLOSED

    def record(self, down: bool, probe: bool = False) -> None:
        """Count one outcome; ``probe`` marks the answer to this worker's probe."""
        if not down and self.view[_STATE] == CLOSED and self.view[_STREAK] == 0:
            return
        s = self.shared
        with s.get_lock():
            if not down:
                s[_STATE], s[_STREAK], s[_INTERVAL] = CLOSED, 0, self.settings.first_interval
            elif probe:
                s[_INTERVAL] = min(self.settings.max_interval, s[_INTERVAL] * 2)
                s[_STATE], s[_PROBE_AT] = OPEN, time.monotonic() + s[_INTERVAL]
            else:
                s[_STREAK] += 1
                if s[_STATE] == CLOSED and s[_STREAK] >= self.settings.threshold:
                    now = time.monotonic()
                    s[_STATE], s[_OPENED_AT], s[_PROBE_AT] = OPEN, time.time(), now + s[_INTERVAL]

    def wait_time(self) -> float:
        """Seconds until a probe may be claimed (0 when closed)."""
        view = self.view
        return 0.0 if view[_STATE] == CLOSED else max(0.0, view[_PROBE_AT] - time.monotonic())

    def is_open(self) -> bool:
        return self.view[_STATE] != CLOSED

    def opened_at(self) -> float:
        """Wall-clock time the breaker last opened."""
        return self.view[_OPENED_AT]


def is_down(http_status: int | None, curl_error: int | None, connected: bool) -> bool:
    """Does this outcome say the endpoint is down (rather than that one request failed)?"""
    if curl_error is not None:
        return not connected
    return http_status in DOWN_STATUSES
