"""What a worker may start now: the outage pause, the pacer, and slots resting after a 429.

The breaker and the pacer are shared by every worker of the pool (or every node); the gate is one
worker's view of them plus what is its own: the probe it is sending, the rows that
already answered "down" in this pass, and the slots resting until a throttled row's retry.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Protocol

from engine.delivery.breaker import Answer, Permit, is_down
from engine.delivery.policy import Outcome
from engine.wire import Dispatch

#: What :meth:`Gate.permit` answers (the members of :class:`~engine.delivery.breaker.Permit`).
GO, PROBE, WAIT = Permit.GO, Permit.PROBE, Permit.WAIT
#: While answers arrive, a gate tells the pacer about them at least this often (s), so that every
#: sender adapts to 429s, also one whose loop never calls :meth:`Gate.report` (a node's chunk sender).
REPORT_EVERY = 0.25
#: Longest a ``RateLimit`` hint rests a worker (s): a far reset (a daily quota) is left to 429s and
#: their Retry-After rather than stalling a pass that can say nothing meanwhile.
QUOTA_REST_CAP = 60.0


class Breaker(Protocol):
    """The outage pause a gate asks: the pool's :class:`~engine.delivery.breaker.CircuitBreaker`, or the
    nodes' :class:`~engine.cluster.outage.SharedBreaker`."""

    def allow(self) -> Permit: ...

    def record(self, answer: Answer) -> None: ...

    def is_open(self) -> bool: ...


class Pacing(Protocol):
    """The window and rate a gate asks: the pool's :class:`~engine.delivery.ratelimit.Pacer`, or a node's
    :class:`~engine.cluster.pacing.NodePacer`."""

    def acquire(self) -> float: ...

    def window(self) -> int: ...

    def report(self, answers: int, throttled: int) -> None: ...

    def rest_on_429(self) -> bool: ...


class Gate:
    """Admission of one worker's transfers."""

    def __init__(self, breaker: Breaker, pacer: Pacing):
        self.breaker, self.pacer = breaker, pacer
        self.probe_rid: int | None = None
        self.failed_down: set[int] = set()  # rows that got a "down" answer in this pass
        self.cooling: list[float] = []  # release times (monotonic) of slots resting after a 429
        self.paced_until = 0.0
        self.quota_until = 0.0  # monotonic: the API said its quota is spent until then
        self.answers = self.throttled = 0  # since the last report to the pacer
        self.reported_at = time.monotonic()

    def window(self) -> int:
        """Transfers this worker may have in flight now: its share of the pool's window, less resting slots."""
        now = time.monotonic()
        while self.cooling and self.cooling[0] <= now:
            heapq.heappop(self.cooling)
        return self.pacer.window() - len(self.cooling)

    def permit(self) -> Permit:
        """:data:`GO` (counted by the pacer), :data:`PROBE` (send one row as the outage probe) or :data:`WAIT`."""
        if self.quota_until and time.monotonic() < self.quota_until:
            self.paced_until = self.quota_until  # before the breaker: a probe it grants is never left unsent
            return WAIT
        allowed = self.breaker.allow()
        if allowed is not GO:
            return allowed
        wait = self.pacer.acquire()
        if wait:
            self.paced_until = time.monotonic() + wait
            return WAIT
        return GO

    def take_probe(self, ready: deque[Dispatch]) -> Dispatch:
        """The row to probe the endpoint with, taken from ``ready``: one that has not failed yet, if any."""
        for index, row in enumerate(ready):
            if row.rid not in self.failed_down:
                del ready[index]
                break
        else:
            row = ready.popleft()
        self.probe_rid = row.rid
        return row

    def settle(self, rid: int, outcome: Outcome, final: bool = False) -> None:
        """Count an answer: for the breaker (a row's first "down" answer is evidence), and for the pacer.
        ``final``: the answer ended the row (no retry follows in this pass), so its "down" mark goes."""
        probe = rid == self.probe_rid
        if probe:
            self.probe_rid = None
        down = is_down(outcome.http_status, outcome.curl_error, outcome.connected)
        first_down = down and rid not in self.failed_down
        if final:
            self.failed_down.discard(rid)
        elif first_down:
            self.failed_down.add(rid)
        self.breaker.record(Answer.of(down, probe, first_down))
        self.answers += 1
        if outcome.http_status == 429:
            self.throttled += 1
        if time.monotonic() - self.reported_at >= REPORT_EVERY:
            self.report()

    def unsent(self, rid: int) -> None:
        """A started row that was never sent (its fence closed just before): if it was the probe, the
        breaker hands the probe to another sender at once instead of waiting for it to time out."""
        if rid == self.probe_rid:
            self.probe_rid = None
            self.breaker.record(Answer.PROBE_UNSENT)

    def rest(self, until: float) -> None:
        """A slot that got a 429 rests until its row's retry (monotonic ``until``), unless 429s are noise."""
        if self.pacer.rest_on_429():
            heapq.heappush(self.cooling, until)

    def rest_all(self, until: float) -> None:
        """The API's ``RateLimit`` headers say nothing is left until ``until`` (monotonic, capped at
        QUOTA_REST_CAP from now): no transfer of this worker starts before then. The pacer still
        applies after it, so a hint can slow a worker below ``--rate``, never speed it up."""
        self.quota_until = max(self.quota_until, min(until, time.monotonic() + QUOTA_REST_CAP))

    def report(self) -> None:
        """Tell the pacer how many answers were throttled since the last report."""
        self.reported_at = time.monotonic()
        if self.answers:
            self.pacer.report(self.answers, self.throttled)
            self.answers = self.throttled = 0

    def paused(self) -> bool:
        return self.breaker.is_open()

    def pace_ends_in(self) -> float:
        """Seconds until the pacer lets a transfer start."""
        return max(0.0, self.paced_until - time.monotonic())

    def rest_ends_in(self) -> float:
        """Seconds until the first resting slot is free (infinite when none rests)."""
        return max(0.0, self.cooling[0] - time.monotonic()) if self.cooling else float("inf")
