"""The worker process: one CurlMulti kept full from the chunks the coordinator hands it.

Only plain data crosses the process boundary (:mod:`engine.wire`): the run's
:class:`~engine.sender_parts.SenderParts` at start, rows in, attempts out. Curl handles are built here, in
the child. SIGTERM (what ``systemctl stop`` sends the whole process group) drains the
worker: it starts nothing new, finishes what is in flight, reports it, and leaves.

The worker asks for more rows while its queue is short (:class:`~engine.local.demand.Demand`),
so the window refills as each transfer ends and a slow request never idles the rest of
its chunk. Retries wait in a heap until due; nothing ever sleeps while transfers are in
flight. What may start, and how, is the :class:`~engine.delivery.sender.Sender`'s start loop,
the one a worker node runs too.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from engine.auth.tokens import SharedToken
from engine.delivery.breaker import CircuitBreaker
from engine.delivery.gate import Gate
from engine.delivery.ratelimit import Pacer
from engine.delivery.sender import Sender
from engine.local.demand import Demand
from engine.local.limits import raise_open_file_limit
from engine.local.pipes import MessageWaits
from engine.sender_parts import SenderParts
from engine.wire import DRAIN, ROWS, STOP, Dispatch, decode_command, report_message

#: Longest a batch of results waits before it is sent to the coordinator (s).
FLUSH_INTERVAL = 0.02
#: Results per message at most.
FLUSH_SIZE = 512
#: How often the worker checks that the coordinator is still alive (s).
PARENT_CHECK_INTERVAL = 0.5


def run_worker(
    worker_id: int,
    parts: SenderParts,
    inbox,
    outbox,
    breaker: CircuitBreaker,
    pacer: Pacer,
    heartbeats,
    tokens: SharedToken | None = None,
) -> None:
    """Entry point of a worker process; returns when told to stop or when the coordinator dies.
    ``tokens`` is the pool's shared OAuth2 access token (None without ``--oauth2-token-url``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the coordinator, which drains us
    raise_open_file_limit()
    loop = WorkerLoop(parts, inbox, outbox, Gate(breaker, pacer), heartbeats, worker_id, tokens)
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.drain())
    try:
        loop.run()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass  # the coordinator is gone, or ended us: nothing more can be reported
    else:
        _leave_at_once()
    finally:
        loop.sender.close()


def _leave_at_once() -> None:
    """End a worker whose loop is over (its goodbye and every result are in the pipe, which outlives it,
    or its coordinator is gone) without freeing its handles and connections one by one: the kernel
    reclaims them at once. Freeing them took 0.45 s of the pass's end at 25,000 HTTP/2 transfers a
    worker, 0.3 s at 4,000 connections."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None when this process was started without one
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(0)


class WorkerLoop:
    """The state of one worker: queued rows, delayed retries, transfers in flight."""

    def __init__(
        self, parts: SenderParts, inbox, outbox, gate: Gate, heartbeats, index: int, tokens: SharedToken | None = None
    ):
        self.inbox, self.outbox = inbox, outbox
        self.message_waits = MessageWaits(inbox)
        self.gate = gate
        self.heartbeats, self.index = heartbeats, index
        self.sender = Sender(parts, gate, inbox.fileno(), tokens)
        self.transport = self.sender.transport
        self.ready = self.sender.ready
        self.demand = Demand(parts.window, parts.chunk_size)
        self.draining = False
        self.stopping = False
        self.parent = os.getppid()

    def run(self) -> None:
        last_flush = last_parent_check = time.monotonic()
        self._send(self._want())
        while not self._finished():
            self.heartbeats[self.index] = time.monotonic()
            self._read_inbox(block=self._idle())
            self.sender.release_due()
            if self.ready and not self.draining:
                self.sender.start()
            finished = self.sender.poll(self._poll_timeout())
            now = time.monotonic()
            self.demand.count_finished(finished, now)
            want = self._want()
            results = self.sender.records
            if (results and (len(results) >= FLUSH_SIZE or now - last_flush >= FLUSH_INTERVAL)) or want:
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
        return not (self.ready or self.sender.retries.waiting or self.transport.active or self.sender.records)

    def _want(self) -> int:
        return self.demand.want(len(self.ready), self.transport.active, self.draining)

    def _send(self, want: int, bye: bool = False) -> None:
        self.gate.report()
        free = self.demand.free(len(self.ready), self.transport.active)
        self.outbox.send(report_message(attempts=self.sender.take_records(), want=want, free=free, bye=bye))
        self.demand.sent(want, time.monotonic())

    def _read_inbox(self, block: bool) -> None:
        """Take every message waiting; when idle, wait for one (checking the coordinator lives)."""
        while block and not self.draining and not self.message_waits(PARENT_CHECK_INTERVAL):
            self.heartbeats[self.index] = time.monotonic()
            if os.getppid() != self.parent:
                raise EOFError
        while self.message_waits():
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
        self.sender.retries.hold(row, time.monotonic() + max(0.0, row.not_before - time.time()))

    def _poll_timeout(self) -> float:
        timeout = FLUSH_INTERVAL
        if self.ready and self.transport.has_room() and not self.draining and not self.gate.paused():
            if self.transport.active < self.gate.window():
                return min(timeout, self.gate.pace_ends_in())
            timeout = min(timeout, self.gate.rest_ends_in())
        return self.sender.retries.due_in(timeout)
