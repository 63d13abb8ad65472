"""The local backend: a pool of worker processes on this machine, started, fed, watched, replaced.

Each worker has two pipes of its own: an inbox written only by the coordinator and a
result pipe written only by that worker, so killing one worker can never corrupt a
channel another one uses. The coordinator writes rows straight into the inbox (no
feeder thread waiting for the GIL behind ledger writes); the pipes are enlarged so
the one answer to a worker's request for rows fits without blocking. Workers are
started with ``spawn``: a child builds its own curl handles and never inherits the
ledger's SQLite connection.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import time
from multiprocessing.connection import wait

from engine.auth.tokens import SharedToken
from engine.backend import Backend
from engine.delivery.allocator import sender_allocator
from engine.delivery.breaker import CircuitBreaker
from engine.delivery.ratelimit import Pacer
from engine.local.pipes import MessageWaits
from engine.local.worker import run_worker
from engine.sender_parts import SenderParts
from engine.wire import DRAIN_COMMAND, STOP_COMMAND, Dispatch, Report, decode_report, rows_command

_CONTEXT = multiprocessing.get_context("spawn")
#: Pipe buffer asked for (bytes); Linux caps it at /proc/sys/fs/pipe-max-size.
PIPE_BYTES = 1 << 20
#: A new worker's first heartbeat may come this late (s): a spawned interpreter imports first.
STARTUP_GRACE = 30.0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _pipe():
    """A one-way pipe with a large buffer (where the OS allows it)."""
    reader, writer = _CONTEXT.Pipe(duplex=False)
    try:
        fcntl.fcntl(writer.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass
    return reader, writer


class _Slot:
    def __init__(self, index: int, parts: SenderParts, shared: tuple, heartbeats):
        self.index = index
        inbox_reader, self.inbox = _pipe()
        self.results, results_writer = _pipe()
        self.message_waits = MessageWaits(self.results)
        heartbeats[index] = time.monotonic() + STARTUP_GRACE
        self.process = _CONTEXT.Process(
            target=run_worker,
            args=(index, parts, inbox_reader, results_writer, *shared),
            name=f"engine-worker-{index}",
            daemon=True,
        )
        with sender_allocator(parts.window):
            self.process.start()
        inbox_reader.close()
        results_writer.close()
        self.closed = False  # said goodbye, or was shut down: no longer watched
        self.eof = False  # its result pipe has ended (it exited or died)


class LocalBackend(Backend):
    """``size`` worker processes; ``events`` reports their messages and deaths.

    The pool owns the state its workers share: the circuit breaker, the pacer, the OAuth2
    access token (fetched by the first worker that needs it, once per expiry for the machine),
    and one heartbeat per worker (the monotonic time of its last loop), by which a worker that
    is alive but makes no progress is found.
    """

    def __init__(self, size: int, parts: SenderParts):
        self.size = size
        self.parts = parts
        self.breaker = CircuitBreaker.create(_CONTEXT, parts.breaker)
        self.pacer = Pacer.create(_CONTEXT, parts.rate, size, parts.window)
        self.heartbeats = _CONTEXT.Array("d", size, lock=False)
        self.tokens = SharedToken.create(_CONTEXT) if parts.spec.oauth else None
        self.slots = [self._start(index) for index in range(size)]

    @property
    def window(self) -> int:
        return self.size * self.parts.window

    def _start(self, index: int) -> _Slot:
        return _Slot(index, self.parts, (self.breaker, self.pacer, self.heartbeats, self.tokens), self.heartbeats)

    def events(self, timeout: float) -> tuple[list[Report], list[int]]:
        """Messages that arrived within ``timeout`` seconds, and the workers that died."""
        by_handle = {}
        for slot in self.slots:
            if not slot.closed:
                if not slot.eof:
                    by_handle[slot.results] = slot
                by_handle[slot.process.sentinel] = slot
        messages, dead = [], []
        for handle in wait(list(by_handle), timeout):
            slot = by_handle[handle]
            if handle is slot.results:
                messages.extend(self._receive(slot))
        for slot in self.slots:
            if not slot.closed and not slot.process.is_alive():
                if not slot.eof:
                    messages.extend(self._receive(slot))
                if not slot.closed:  # it left without saying goodbye
                    slot.closed = True
                    dead.append(slot.index)
        if dead:  # it may have died holding a lock of the state the workers share
            pids = [self.slots[index].process.pid or 0 for index in dead]
            self.breaker.state.recover(pids)
            self.pacer.state.recover(pids)
            if self.tokens is not None:
                self.tokens.lock.recover(pids)
        return messages, dead

    def _receive(self, slot: _Slot) -> list[Report]:
        messages = []
        try:
            while slot.message_waits():
                report = decode_report(slot.index, slot.results.recv())
                messages.append(report)
                if report.bye:
                    slot.closed = True
                    break
        except (EOFError, OSError):
            slot.eof = True
        return messages

    def replace(self, index: int) -> None:
        """Start a fresh worker in place of one that died."""
        self._close(self.slots[index])
        self.slots[index] = self._start(index)

    def stalled(self, limit: float) -> list[int]:
        """Live workers whose heartbeat is older than ``limit`` seconds (stopped, or stuck in C code)."""
        now = time.monotonic()
        return [
            slot.index
            for slot in self.slots
            if not slot.closed and now - self.heartbeats[slot.index] > limit and slot.process.is_alive()
        ]

    def kill(self, index: int) -> None:
        """SIGKILL one worker (it also ends a stopped one); :meth:`events` then reports it dead."""
        process = self.slots[index].process
        if process.is_alive():
            process.kill()

    def send_rows(self, index: int, rows: list[Dispatch]) -> None:
        """Hand one worker the rows it asked for, in one message of whole chunks."""
        self._send(self.slots[index], rows_command(rows, self.parts.chunk_size))

    def outage_since(self) -> float | None:
        return self.breaker.opened_at() if self.breaker.is_open() else None

    def drain(self) -> None:
        """Ask every worker to finish what is in flight, start nothing new, and leave."""
        for slot in self.slots:
            self._send(slot, DRAIN_COMMAND)

    def stop(self, timeout: float) -> None:
        for slot in self.slots:
            self._send(slot, STOP_COMMAND)
        for slot in self.slots:
            slot.process.join(timeout)

    @staticmethod
    def _send(slot: _Slot, message) -> None:
        if slot.closed:
            return
        try:
            slot.inbox.send(message)
        except OSError:  # it died; events() reports it and its rows are sent again
            pass

    def live(self) -> list[int]:
        return [slot.index for slot in self.slots if not slot.closed]

    def close(self) -> None:
        for slot in self.slots:
            self._close(slot)

    @staticmethod
    def _close(slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join(5)
        slot.inbox.close()
        slot.results.close()
        slot.closed = True
