"""The worker process: one CurlMulti kept full from the chunks the coordinator hands it.

Only plain data crosses the process boundary: a :class:`WorkerConfig` at start,
lists of :class:`~engine.wire.Dispatch` rows in, lists of
:class:`~engine.wire.Attempt` records out. Curl handles are built here, in the child.
SIGTERM (what ``systemctl stop`` sends the whole process group) drains the worker:
it starts nothing new, finishes what is in flight, reports it, and leaves.

The worker asks for more rows while its queue is short, so the window refills as
each transfer ends and a slow request never idles the rest of its chunk. Retries
wait in a heap until due; nothing ever sleeps while transfers are in flight.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass

from engine.delivery.breaker import CircuitBreaker, is_down
from engine.delivery.policy import FAILED, RETRYING, RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.request.template import CompiledRequest, RequestSpec, redact
from engine.delivery.transport import Transport, TransportOptions, raise_open_file_limit
from engine.wire import DRAIN, ROWS, STOP, Attempt, Dispatch

#: Longest a batch of results waits before it is sent to the coordinator (s).
FLUSH_INTERVAL = 0.02
#: Results per message at most.
FLUSH_SIZE = 512
#: A worker keeps queued, beyond its window, the rows it expects to finish during this many
#: coordinator round trips (measured), so the window never waits for rows...
RESERVE_ROUND_TRIPS = 3
#: ...but never more than this many chunks, so few rows sit idle in one worker at the end of a pass,
RESERVE_CHUNKS = 5
#: ...and none at all when it would be smaller than this: against a slow API the round trip is
#: negligible, and a row held back here can cost a whole extra latency at the end of a pass.
RESERVE_MIN = 10
#: How often the worker checks that the coordinator is still alive (s).
PARENT_CHECK_INTERVAL = 0.5


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Everything a worker needs, sent once when it starts."""

    spec: RequestSpec
    policy: RetryPolicy
    transport: TransportOptions
    concurrency: int
    chunk_size: int
    id_field: str = "id"


def run_worker(worker_id: int, config: WorkerConfig, inbox, outbox, breaker: CircuitBreaker, pacer: Pacer,
               heartbeats) -> None:
    """Entry point of a worker process; returns when told to stop or when the coordinator dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the coordinator, which drains us
    raise_open_file_limit()
    loop = WorkerLoop(config, inbox, outbox, breaker, pacer, heartbeats, worker_id)
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.drain())
    try:
        loop.run()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    finally:
        loop.transport.close()


class WorkerLoop:
    """The state of one worker: queued rows, delayed retries, transfers in flight."""

    def __init__(self, config: WorkerConfig, inbox, outbox, breaker: CircuitBreaker, pacer: Pacer, heartbeats,
                 index: int):
        self.config = config
        self.breaker, self.pacer = breaker, pacer
        self.heartbeats, self.index = heartbeats, index
        self.probe_rid: int | None = None
        self.failed_down: set[int] = set()  # rows that got a "down" answer in this pass
        self.answers = self.throttled = 0
        self.cooling: list[float] = []  # release times of slots resting after a 429
        self.paced_until = 0.0
        self.inbox, self.outbox = inbox, outbox
        self.request = CompiledRequest(config.spec)
        self.secrets = config.spec.secrets
        # the common case, a URL like /customers/{id}/charges and the row as the body, needs no parsing
        self.needs_fields = bool(self.request.fields - {config.id_field}) or config.spec.body not in ("json", "none")
        self.idempotency_header = config.spec.idempotency_header
        self.policy = config.policy
        self.transport = Transport(config.concurrency, config.transport, config.spec.method, inbox.fileno())
        self.ready: deque[Dispatch] = deque()
        self.delayed: list[tuple[float, int, Dispatch]] = []
        self.pass_attempts: dict[int, int] = {}
        self.results: list[Attempt] = []
        self.asked = False
        self.reserve_refused = False  # the pass is ending: ask only for free slots from now on
        self.asked_at = 0.0
        self.round_trip = 0.01  # seconds from asking for rows to having them (moving average)
        self.finished = 0
        self.rate = 0.0  # transfers finished per second (moving average)
        self.rate_since = time.monotonic()
        self.draining = False
        self.stopping = False
        self.rng = random.Random()
        self.parent = os.getppid()

    def run(self) -> None:
        last_flush = last_parent_check = time.monotonic()
        self._send(want=self._want())
        while not self._finished():
            self.heartbeats[self.index] = time.monotonic()
            self._read_inbox(block=self._idle())
            self._release_due()
            self._start_transfers()
            finished = self.transport.poll(self._poll_timeout())
            for done in finished:
                self._settle(done)
            self.finished += len(finished)
            now = time.monotonic()
            self._measure(now)
            want = self._want()
            if (self.results and (len(self.results) >= FLUSH_SIZE or now - last_flush >= FLUSH_INTERVAL)) or want:
                self._send(want)
                last_flush = now
            if now - last_parent_check >= PARENT_CHECK_INTERVAL:
                last_parent_check = now
                if os.getppid() != self.parent:
                    return
        self._send(0, bye=True)

    def drain(self) -> None:
        """Start nothing new; leave once what is in flight has finished and been reported."""
        self.draining = True

    def _finished(self) -> bool:
        if self.stopping:
            return True
        return self.draining and not self.transport.active

    def _idle(self) -> bool:
        return not (self.ready or self.delayed or self.transport.active or self.results)

    def _want(self) -> int:
        """Rows to ask for: enough to fill the window and keep a reserve queued behind it.

        The reserve covers what this worker finishes during a few round trips to the
        coordinator (busy writing the ledger), so a fast server never finds the window
        empty, while a slow one does not leave rows idling here at the end of a pass.
        """
        if self.asked or self.draining:
            return 0
        backlog = len(self.ready) + self.transport.active
        ceiling = RESERVE_CHUNKS * self.config.chunk_size
        reserve = min(ceiling, int(self.rate * self.round_trip * RESERVE_ROUND_TRIPS))
        if reserve < RESERVE_MIN or self.reserve_refused:
            reserve = 0
        if backlog > self.config.concurrency + reserve // 2:
            return 0
        return max(0, self.config.concurrency + reserve - backlog)

    def _measure(self, now: float) -> None:
        """Update the finishing rate (per 0.25 s window, smoothed)."""
        elapsed = now - self.rate_since
        if elapsed >= 0.25:
            self.rate = 0.5 * self.rate + 0.5 * self.finished / elapsed
            self.finished, self.rate_since = 0, now

    def _send(self, want: int, bye: bool = False) -> None:
        if self.answers:
            self.pacer.report(self.answers, self.throttled)
            self.answers = self.throttled = 0
        free = max(0, self.config.concurrency - len(self.ready) - self.transport.active)
        self.outbox.send((self.results, want, free, bye))
        self.results = []
        if want:
            self.asked = True
            self.asked_at = time.monotonic()

    def _read_inbox(self, block: bool) -> None:
        """Take every message waiting; when idle, wait for one (checking the coordinator lives)."""
        while block and not self.draining and not self.inbox.poll(PARENT_CHECK_INTERVAL):
            self.heartbeats[self.index] = time.monotonic()
            if os.getppid() != self.parent:
                raise EOFError
        while self.inbox.poll():
            kind, chunks = self.inbox.recv()
            if kind == ROWS:
                self.asked = False
                self.round_trip = 0.8 * self.round_trip + 0.2 * (time.monotonic() - self.asked_at)
                if not chunks:
                    self.reserve_refused = True
                for chunk in chunks:
                    for row in map(Dispatch._make, chunk):
                        if row.not_before:
                            self._hold(row)
                        else:
                            self.ready.append(row)
            elif kind == DRAIN:
                self.draining = True
            elif kind == STOP:
                self.stopping = True
                return

    def _hold(self, row: Dispatch) -> None:
        """Keep a row whose earlier attempt may still be in progress until its ``not_before``."""
        due = time.monotonic() + max(0.0, row.not_before - time.time())
        heapq.heappush(self.delayed, (due, row.rid, row))

    def _release_due(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])

    def _start_transfers(self) -> None:
        if self.draining or not self.ready:
            return
        window = self._window()
        while self.ready and self.transport.active < window:
            permit = self.breaker.allow()
            if not permit:
                return
            if permit == "probe":
                row = self._probe_row()
                self.probe_rid = row.rid
                self._start(row)
                return
            wait = self.pacer.acquire()
            if wait:
                self.paced_until = time.monotonic() + wait
                return
            self._start(self.ready.popleft())

    def _window(self) -> int:
        """Transfers this worker may have in flight now: its share of the pool's window, less resting slots."""
        now = time.monotonic()
        while self.cooling and self.cooling[0] <= now:
            heapq.heappop(self.cooling)
        return self.pacer.window() - len(self.cooling)

    def _probe_row(self) -> Dispatch:
        """A row to probe the endpoint with: one that has not failed yet, if there is one here."""
        for index, row in enumerate(self.ready):
            if row.rid not in self.failed_down:
                del self.ready[index]
                return row
        return self.ready.popleft()

    def _start(self, row: Dispatch) -> None:
        """Start the row's transfer; a row that cannot even be started is quarantined (``failed``), and
        the worker goes on: re-queued, it would only take down worker after worker."""
        try:
            fields = json.loads(row.payload) if self.needs_fields else {self.config.id_field: row.row_id}
            url, headers, body = self.request.render(fields, row.payload)
            if self.idempotency_header:
                headers = headers + [f"{self.idempotency_header}: {row.idempotency_key}"]
            self.transport.start(row, url, headers, body)
        except Exception as err:  # a row the coordinator validated should never get here
            self._record(row, FAILED, None, None, f"cannot send this row: {type(err).__name__}: {err}",
                         time.time(), 0.0, None)

    def _settle(self, done) -> None:
        row: Dispatch = done.token
        outcome = done.outcome
        probe = row.rid == self.probe_rid
        if probe:
            self.probe_rid = None
        down = is_down(outcome.http_status, outcome.curl_error, outcome.connected)
        first_down = down and row.rid not in self.failed_down
        if first_down:
            self.failed_down.add(row.rid)
        self.breaker.record(down, probe, counted=first_down)
        self.answers += 1
        if outcome.http_status == 429:
            self.throttled += 1
        attempt = self.pass_attempts.get(row.rid, 0) + 1 if self.pass_attempts else 1
        decision = self.policy.decide(outcome, attempt, self.rng)
        if decision.state == RETRYING:
            self.pass_attempts[row.rid] = attempt
            due = time.monotonic() + decision.delay
            heapq.heappush(self.delayed, (due, row.rid, row))
            if outcome.http_status == 429 and self.pacer.rest_on_429():
                heapq.heappush(self.cooling, due)  # the slot rests too, or it would spin on instant 429s
        else:
            self.pass_attempts.pop(row.rid, None)
            self.failed_down.discard(row.rid)
        self._record(row, decision.state, outcome.http_status, outcome.curl_error, done.error,
                     done.started_at, done.duration_ms, done.excerpt, attempt)

    def _record(self, row, state, http_status, curl_error, error, started_at, duration_ms, excerpt,
                attempt: int = 1) -> None:
        if self.secrets:  # an API that echoes the request must not put a token into the ledger or the log
            error, excerpt = redact(error, self.secrets), redact(excerpt, self.secrets)
        # a plain tuple in Attempt's field order: it pickles ten times faster than the NamedTuple
        self.results.append((row.rid, row.attempts + attempt, state, http_status, curl_error, error, excerpt,
                             started_at, duration_ms))

    def _poll_timeout(self) -> float:
        timeout = FLUSH_INTERVAL
        if self.ready and self.transport.has_room() and not self.draining and not self.breaker.is_open():
            if self.transport.active < self._window():
                return max(0.0, min(timeout, self.paced_until - time.monotonic()))
            if self.cooling:  # the window is full of resting slots: wake when the first is free
                timeout = min(timeout, max(0.0, self.cooling[0] - time.monotonic()))
        if self.delayed:
            timeout = min(timeout, max(0.0, self.delayed[0][0] - time.monotonic()))
        return timeout
