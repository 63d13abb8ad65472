"""The worker process: one CurlMulti kept full from the chunks the coordinator hands it.

Only plain data crosses the process boundary (:mod:`engine.wire`): a
:class:`WorkerConfig` at start, rows in, attempts out. Curl handles are built here, in
the child. SIGTERM (what ``systemctl stop`` sends the whole process group) drains the
worker: it starts nothing new, finishes what is in flight, reports it, and leaves.

The worker asks for more rows while its queue is short (:class:`~engine.local.demand.Demand`),
so the window refills as each transfer ends and a slow request never idles the rest of
its chunk. Retries wait in a heap until due; nothing ever sleeps while transfers are in
flight. What may start is decided by the :class:`~engine.delivery.gate.Gate`.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass

from engine.config import RunSettings
from engine.delivery.breaker import CircuitBreaker
from engine.delivery.gate import GO, PROBE, WAIT, Gate
from engine.delivery.policy import RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.delivery.records import unsendable_record
from engine.delivery.retries import Retries
from engine.delivery.transport import Transport, TransportOptions
from engine.local.demand import Demand
from engine.local.limits import raise_open_file_limit
from engine.request.spec import RequestSpec
from engine.request.template import RowRequests
from engine.wire import DRAIN, ROWS, STOP, Dispatch, decode_command, report_message

#: Longest a batch of results waits before it is sent to the coordinator (s).
FLUSH_INTERVAL = 0.02
#: Results per message at most.
FLUSH_SIZE = 512
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

    @classmethod
    def for_run(cls, settings: RunSettings, spec: RequestSpec) -> WorkerConfig:
        """The worker's part of a run's settings; ``spec`` is the request built once from them."""
        return cls(
            spec=spec,
            policy=settings.policy(),
            transport=TransportOptions.for_run(settings),
            concurrency=settings.concurrency,
            chunk_size=settings.chunks,
            id_field=settings.id_field,
        )


def run_worker(
    worker_id: int, config: WorkerConfig, inbox, outbox, breaker: CircuitBreaker, pacer: Pacer, heartbeats
) -> None:
    """Entry point of a worker process; returns when told to stop or when the coordinator dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the coordinator, which drains us
    raise_open_file_limit()
    loop = WorkerLoop(config, inbox, outbox, Gate(breaker, pacer), heartbeats, worker_id)
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.drain())
    try:
        loop.run()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    finally:
        loop.transport.close()


class WorkerLoop:
    """The state of one worker: queued rows, delayed retries, transfers in flight."""

    def __init__(self, config: WorkerConfig, inbox, outbox, gate: Gate, heartbeats, index: int):
        self.config = config
        self.inbox, self.outbox = inbox, outbox
        self.gate = gate
        self.heartbeats, self.index = heartbeats, index
        self.requests = RowRequests(config.spec, config.id_field)
        self.transport = Transport(config.concurrency, config.transport, config.spec.method, inbox.fileno())
        self.demand = Demand(config.concurrency, config.chunk_size)
        self.ready: deque[Dispatch] = deque()
        self.retries = Retries(config.policy, gate, config.spec.secrets)  # retries and held rows wait here
        self.results: list[tuple] = []  # attempt records not yet sent
        self.draining = False
        self.stopping = False
        self.parent = os.getppid()

    def run(self) -> None:
        last_flush = last_parent_check = time.monotonic()
        self._send(self._want())
        while not self._finished():
            self.heartbeats[self.index] = time.monotonic()
            self._read_inbox(block=self._idle())
            self.retries.release_due(self.ready)
            self._start_transfers()
            finished = self.transport.poll(self._poll_timeout())
            self.results.extend(map(self.retries.settle, finished))
            now = time.monotonic()
            self.demand.count_finished(len(finished), now)
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
        return self.stopping or (self.draining and not self.transport.active)

    def _idle(self) -> bool:
        return not (self.ready or self.retries.waiting or self.transport.active or self.results)

    def _want(self) -> int:
        return self.demand.want(len(self.ready), self.transport.active, self.draining)

    def _send(self, want: int, bye: bool = False) -> None:
        self.gate.report()
        free = self.demand.free(len(self.ready), self.transport.active)
        self.outbox.send(report_message(attempts=self.results, want=want, free=free, bye=bye))
        self.results = []
        self.demand.sent(want, time.monotonic())

    def _read_inbox(self, block: bool) -> None:
        """Take every message waiting; when idle, wait for one (checking the coordinator lives)."""
        while block and not self.draining and not self.inbox.poll(PARENT_CHECK_INTERVAL):
            self.heartbeats[self.index] = time.monotonic()
            if os.getppid() != self.parent:
                raise EOFError
        while self.inbox.poll():
            command = decode_command(self.inbox.recv())
            if command.kind == ROWS:
                self._take_rows(command.chunks or [])
            elif command.kind == DRAIN:
                self.draining = True
            elif command.kind == STOP:
                self.stopping = True
                return

    def _take_rows(self, chunks: list) -> None:
        self.demand.answered(sum(map(len, chunks)), time.monotonic())
        for chunk in chunks:
            for row in map(Dispatch._make, chunk):
                if row.not_before:
                    self._hold(row)
                else:
                    self.ready.append(row)

    def _hold(self, row: Dispatch) -> None:
        """Keep a row whose earlier attempt may still be in progress until its ``not_before``."""
        self.retries.hold(row, time.monotonic() + max(0.0, row.not_before - time.time()))

    def _start_transfers(self) -> None:
        if self.draining or not self.ready:
            return
        window = self.transport.window(self.gate.window())
        while self.ready and self.transport.active < window:
            permit = self.gate.permit()
            if permit == WAIT:
                return
            if permit == PROBE:
                self._start(self.gate.take_probe(self.ready))
                return
            assert permit == GO
            self._start(self.ready.popleft())

    def _start(self, row: Dispatch) -> None:
        """Start the row's transfer; a row that cannot even be started is quarantined, and the worker
        goes on: re-queued, it would only take down worker after worker."""
        try:
            self.transport.start(row, *self.requests.render(row.row_id, row.payload, row.idempotency_key))
        except Exception as err:  # a row the coordinator validated should never get here
            self.results.append(unsendable_record(row, err))

    def _poll_timeout(self) -> float:
        timeout = FLUSH_INTERVAL
        if self.ready and self.transport.has_room() and not self.draining and not self.gate.paused():
            if self.transport.active < self.gate.window():
                return min(timeout, self.gate.pace_ends_in())
            timeout = min(timeout, self.gate.rest_ends_in())
        return self.retries.due_in(timeout)
