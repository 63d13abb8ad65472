"""The pool-wide circuit breaker: when the endpoint goes down, the whole run pauses.

Only evidence that the *endpoint* is down trips it, never a few customers that fail on
their own:

- an answer counts as evidence only if it is "down" (connection refused, connect
  timeout, 502/503/504) **and** it is that row's first down answer in this pass, so a
  streak is made of distinct rows; rows that keep failing (a customer whose charge
  always gets 503) add nothing, however often they are retried;
- any success breaks the streak; ``threshold`` counted answers in a row open the breaker;
- it opens only once the endpoint has answered at least once in this pass: an endpoint
  never seen up (wrong port, wrong host) is a mistake to report, not an outage to wait
  out, so its rows use their attempts and fail with the reason.

While open no worker starts a transfer. At growing intervals (capped at
``max_interval``) exactly one worker claims a probe and sends one request, preferring a
row that has not failed yet; only the probe's answer closes the breaker (a late success
of a transfer started before the pause does not). The coordinator bounds the total
pause of a pass (``--max-pause``). The state lives in shared memory, so the pause is
pool-wide, not per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.delivery.shared import SharedState

CLOSED, OPEN, PROBING = 0.0, 1.0, 2.0
_STATE, _STREAK, _PROBE_AT, _INTERVAL, _OPENED_AT, _PROBE_STARTED, _LAST_UP = range(7)

#: HTTP statuses that mean "the endpoint is down", not "this request failed".
DOWN_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When to open (``threshold`` 0: never), how the probe interval grows, when a probe is lost."""

    threshold: int = 20
    first_interval: float = 0.5
    max_interval: float = 2.0
    probe_timeout: float = 35.0


class CircuitBreaker(SharedState):
    """A breaker over a shared ``multiprocessing.Array('d', 7)``; create it with :meth:`create`."""

    def __init__(self, shared, settings: BreakerSettings = BreakerSettings()):
        super().__init__(shared)
        self.settings = settings

    @classmethod
    def create(cls, context, settings: BreakerSettings = BreakerSettings()) -> CircuitBreaker:
        return cls(context.Array("d", [CLOSED, 0, 0, settings.first_interval, 0, 0, 0]), settings)

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

    def record(self, down: bool, probe: bool = False, counted: bool = True) -> None:
        """Count one answer. ``probe``: the answer to this worker's probe; ``counted``: a down
        answer that is evidence (the row's first down answer in this pass)."""
        if not down:
            self.view[_LAST_UP] = time.monotonic()  # one aligned double: a plain store is atomic
            if self.view[_STATE] == CLOSED and self.view[_STREAK] == 0:
                return
        elif not (probe or counted):
            return
        s = self.shared
        with s.get_lock():
            if probe:
                self._answer_probe(down)
            elif not down:
                if s[_STATE] == CLOSED:  # while open, a late success from before the pause proves nothing
                    s[_STREAK] = 0
            elif s[_STATE] == CLOSED:
                s[_STREAK] += 1
                if self.settings.threshold and s[_STREAK] >= self.settings.threshold and s[_LAST_UP]:
                    s[_STATE], s[_OPENED_AT], s[_PROBE_AT] = OPEN, time.time(), time.monotonic() + s[_INTERVAL]

    def _answer_probe(self, down: bool) -> None:
        s = self.shared
        if down:
            s[_INTERVAL] = min(self.settings.max_interval, s[_INTERVAL] * 2)
            s[_STATE], s[_PROBE_AT] = OPEN, time.monotonic() + s[_INTERVAL]
        else:
            s[_STATE], s[_STREAK], s[_INTERVAL] = CLOSED, 0, self.settings.first_interval

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
