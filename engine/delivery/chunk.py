"""Sending one chunk's rows to a final state with one CurlMulti: what a worker node does per chunk.

Rows start as slots free up; a retryable failure waits its back-off (or the server's
``Retry-After``) in a heap while the other transfers go on; nothing sleeps while
transfers are in flight. The result is the attempt records of every row, for the ledger
to commit together with the chunk's done-mark.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.delivery.breaker import is_down
from engine.delivery.policy import RetryPolicy
from engine.delivery.transport import Transport, TransportOptions
from engine.request.spec import RequestSpec, redact
from engine.request.template import RowRequests
from engine.states import FAILED, RETRYING
from engine.wire import Dispatch, attempt_record

#: Longest wait for transfers in one poll (s): the heartbeat and due retries are looked at this often.
POLL = 0.05


class ChunkSender:
    """One CurlMulti with ``window`` transfers at most, reused chunk after chunk."""

    def __init__(
        self,
        spec: RequestSpec,
        id_field: str,
        policy: RetryPolicy,
        options: TransportOptions,
        window: int,
        pace: Callable[[], float] | None = None,
        breaker: Any = None,
    ):
        self.requests = RowRequests(spec, id_field)
        self.policy = policy
        self.transport = Transport(window, options, spec.method)
        self.rng = random.Random()
        #: Seconds to wait before the next start (0: start now, its slot is taken); None: no rate.
        self.pace = pace
        #: The outage pause shared with other senders (``allow``/``record`` as CircuitBreaker's), or None.
        self.breaker = breaker
        self.probe_rid: int | None = None
        self.failed_down: set[int] = set()  # rows that answered "down" once: later ones are no evidence

    def send(
        self,
        rows: list[Dispatch],
        heartbeat: Callable[[], None] = lambda: None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> list[tuple]:
        """Every row to a final state (or its last attempt); the attempt records, in the order they ended.

        Once ``stopped()`` says so, nothing new starts: what is in flight finishes and is recorded,
        and the rows not started are left as they are (for a rerun).
        """
        ready = deque(rows)
        delayed: list[tuple[float, int, Dispatch]] = []
        tries: dict[int, int] = {}
        records: list[tuple] = []
        beat = time.monotonic()
        while ready or delayed or self.transport.active:
            now = time.monotonic()
            while delayed and delayed[0][0] <= now:
                ready.append(heapq.heappop(delayed)[2])
            paced = self._start_ready(ready, records)
            wait = POLL if not delayed else min(POLL, max(0.0, delayed[0][0] - now))
            wait = min(wait, paced)
            for done in self.transport.poll(wait):
                row: Dispatch = done.token
                attempt = tries.get(row.rid, 0) + 1
                self._count_for_outage(row.rid, done.outcome)
                decision = self.policy.decide(done.outcome, attempt, self.rng)
                if decision.state == RETRYING:
                    tries[row.rid] = attempt
                    heapq.heappush(delayed, (time.monotonic() + decision.delay, row.rid, row))
                records.append(self._record(row, attempt, decision.state, done))
            if now - beat >= 1.0:
                heartbeat()
                beat = now
            if (ready or delayed) and stopped():
                ready.clear()
                delayed.clear()
        return records

    def _start_ready(self, ready: deque[Dispatch], records: list[tuple]) -> float:
        """Start rows while there is room and the rate allows; how long until the rate allows the next."""
        while ready and self.transport.has_room():
            permit = self.breaker.allow() if self.breaker else True
            if not permit:
                return POLL
            if permit == "probe":  # one row asks whether the endpoint is back; nothing else starts
                row = next((row for row in ready if row.rid not in self.failed_down), ready[0])
                ready.remove(row)
                self.probe_rid = row.rid
                self._start(row, records)
                return POLL
            wait = self.pace() if self.pace else 0.0
            if wait:
                return wait
            self._start(ready.popleft(), records)
        return POLL

    def _count_for_outage(self, rid: int, outcome) -> None:
        if self.breaker is None:
            return
        probe = rid == self.probe_rid
        if probe:
            self.probe_rid = None
        down = is_down(outcome.http_status, outcome.curl_error, outcome.connected)
        first_down = down and rid not in self.failed_down
        if first_down:
            self.failed_down.add(rid)
        self.breaker.record(down, probe, counted=first_down)

    def _start(self, row: Dispatch, records: list[tuple]) -> None:
        try:
            self.transport.start(row, *self.requests.render(row.row_id, row.payload, row.idempotency_key))
        except Exception as err:  # a row the coordinator validated should never get here
            records.append(
                attempt_record(
                    rid=row.rid,
                    attempt=row.attempts + 1,
                    outcome=FAILED,
                    error=f"cannot send this row: {type(err).__name__}: {err}",
                    started_at=time.time(),
                )
            )

    def _record(self, row: Dispatch, attempt: int, state: str, done) -> tuple:
        secrets = self.requests.secrets
        return attempt_record(
            rid=row.rid,
            attempt=row.attempts + attempt,
            outcome=state,
            http_status=done.outcome.http_status,
            curl_error=done.outcome.curl_error,
            error=redact(done.error, secrets),
            excerpt=redact(done.excerpt, secrets),
            started_at=done.started_at,
            duration_ms=done.duration_ms,
        )

    def close(self) -> None:
        self.transport.close()
