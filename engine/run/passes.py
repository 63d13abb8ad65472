"""The local pool's distribution: rows handed to the workers of a :class:`~engine.backend.Backend`.

While a local pass runs, the coordinator is the ledger's only writer: it hands rows to the
backend's workers as they ask, and records every attempt they report in batched transactions.
Rows a dead worker may have sent go out again no sooner than an attempt sent just before the
death would have timed out (with their Idempotency-Key), or become ``unknown`` in a run without
keys. The lease, pauses, stop and ending are the :class:`~engine.run.supervisor.PassSupervisor`'s.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager

from engine.backend import Backend
from engine.delivery.records import unanswered_record
from engine.errors import EngineError
from engine.ledger import Page
from engine.ledger.lease import HOLD_MARGIN, later
from engine.run.result import rerun_command
from engine.run.supervisor import PassSupervisor, PassTally, no_outages
from engine.states import RETRYING, SUCCEEDED, UNKNOWN
from engine.wire import ATTEMPT, OUTCOME, RID, Attempt, Dispatch

#: How long the coordinator waits for worker messages before looking around again (s).
EVENT_WAIT = 0.2
#: Results written to the ledger per transaction at most, and how long they wait for it (s): at least
#: ``LEDGER_INTERVAL``; after a slow write, ``LEDGER_SLOWDOWN`` times as long as it took, up to
#: ``LEDGER_INTERVAL_MAX``. Bigger transactions write each ledger page once for many rows. Answers that
#: end in no particular order (a large window, latencies spread) each touch another page of the table
#: and of its indexes: at 16,000 in flight that was 19-21 µs a row written every 0.1 s, 10-12 at about
#: every 0.45 s; answers that end in row order stay cheap, and are written every 0.1 s. A crash can
#: lose only unwritten results, whose rows are then simply sent again with the same key.
LEDGER_BATCH = 16384
LEDGER_INTERVAL = 0.1
LEDGER_INTERVAL_MAX = 0.5
LEDGER_SLOWDOWN = 10
#: Worker deaths in one pass, per worker, after which the pass gives up instead of restarting them.
MAX_DEATHS_PER_WORKER = 5
#: How long (s) the backend gets to let its workers leave once every row is final.
STOP_TIMEOUT = 5


class LocalPass:
    """Every row in ``states`` handed to the backend's workers, as they ask, until it is final.

    The pass moves the lease's dispatch frontier forward before handing out rows beyond it.
    ``total`` rows are to be sent; once the rows left fit in the backend's window, workers get
    no reserve, so no row waits in one worker's queue while another worker has an empty slot.
    """

    def __init__(
        self,
        supervisor: PassSupervisor,
        states: Iterable[str],
        backend: Backend,
        *,
        total: int | None = None,
    ):
        self.supervisor, self.backend = supervisor, backend
        self.ledger, self.run_id, self.settings = supervisor.ledger, supervisor.run_id, supervisor.settings
        self.pages: Iterator[Page] | None = self.ledger.iter_pages(self.run_id, tuple(states))
        self.backlog: deque[Dispatch] = deque()
        self.outstanding: dict[int, dict[int, Dispatch]] = {worker: {} for worker in range(backend.size)}
        self.hungry: dict[int, tuple[int, int]] = {}  # worker -> (rows wanted, slots free now)
        self.left = total if total is not None else float("inf")  # rows not yet handed out
        self.held = False  # an operator paused the run: nothing is handed out
        self.frontier = supervisor.hold.frontier if supervisor.hold else None
        self._tally = PassTally()
        self.deaths = 0
        self.lost_at = -float("inf")  # when a worker last died with rows that may be in flight
        self.unwritten: list[tuple] = []
        self.written_at = time.monotonic()
        self.write_every = LEDGER_INTERVAL

    # -- the Distribution protocol ------------------------------------------------------------

    def start(self) -> bool:
        return True

    def step(self) -> None:
        self._handle_events(EVENT_WAIT)

    def finished(self) -> bool:
        return self.pages is None and not self.backlog and not any(self.outstanding.values())

    def outage_since(self) -> float | None:
        return self.backend.outage_since()

    def watch(self) -> None:
        """A worker that is alive but silent (stopped, stuck in C code) is killed; its rows are salvaged."""
        if self.supervisor.stopping:
            return  # a draining worker is let be until the drain's deadline
        for index in self.backend.stalled(self.settings.stall_timeout):
            self.supervisor.say(
                f"worker {index} made no progress for {self.settings.stall_timeout:g} s; replacing it",
                "worker_stalled",
                worker=index,
            )
            self.backend.kill(index)

    def hold_back(self, paused: bool) -> None:
        was_held, self.held = self.held, paused
        if was_held and not paused:
            self._serve_hungry()  # the workers an operator's pause held back

    def drain(self) -> None:
        """Ctrl-C: workers finish in-flight transfers, which are recorded; draining workers ask for nothing."""
        self.backend.drain()

    def drained(self) -> bool:
        return not self.backend.live()

    def outlast(self) -> AbstractContextManager[None]:
        return no_outages()

    def end(self, complete: bool) -> bool:
        """Every result received is written to the ledger, however the pass ends. The backend's
        owner ends the backend afterwards."""
        self._write_ledger()
        if complete:
            self.backend.stop(timeout=STOP_TIMEOUT)
            return True
        in_flight_lost = bool(self.backend.live())  # drained workers leave; one still here may be mid-transfer
        recently_lost = time.monotonic() - self.lost_at < self.settings.timeout + HOLD_MARGIN
        return not (in_flight_lost or recently_lost)

    def tally(self) -> PassTally:
        return self._tally

    # -- distribution -------------------------------------------------------------------------

    def _handle_events(self, timeout: float) -> None:
        messages, dead = self.backend.events(timeout)
        for message in messages:
            if message.want:
                self.hungry[message.worker] = (message.want, message.free)
        self._serve_hungry()  # first: a worker waiting for rows must not wait for the ledger too
        for message in messages:
            if message.attempts:
                self._record(message.worker, message.attempts)
            if message.bye and not self.supervisor.ending and not self.finished():
                self._left(message.worker)
        for index in dead:
            self._salvage(index)
        if dead:
            self._serve_hungry()  # the dead worker's rows, to whoever asks
        if self.unwritten and self._write_due():
            self._write_ledger()

    def _write_due(self) -> bool:
        """Whether the answers held have waited long enough for a write (see :data:`LEDGER_INTERVAL`)."""
        return time.monotonic() - self.written_at >= self.write_every

    def _write_ledger(self) -> None:
        started = time.monotonic()
        if self.unwritten:
            self.ledger.record(self.unwritten)
            self.unwritten = []
        self.written_at = time.monotonic()
        took = self.written_at - started
        self.write_every = min(LEDGER_INTERVAL_MAX, max(LEDGER_INTERVAL, LEDGER_SLOWDOWN * took))

    def _record(self, worker: int, attempts: list[tuple]) -> None:
        """Queue a worker's batch for the ledger, and forget the rows that reached a final state."""
        self.unwritten.extend(attempts)
        if len(self.unwritten) >= LEDGER_BATCH or self._write_due():
            self._write_ledger()
        outcomes = Counter(attempt[OUTCOME] for attempt in attempts)
        self._tally.add(outcomes)
        self._tally.weigh(attempts)
        outstanding = self.outstanding[worker]
        for attempt in attempts:
            if attempt[OUTCOME] != RETRYING:
                outstanding.pop(attempt[RID], None)
            elif attempt[RID] in outstanding:  # if its worker dies, the row goes out again as attempt n+1
                outstanding[attempt[RID]] = outstanding[attempt[RID]]._replace(attempts=attempt[ATTEMPT])
        if outcomes[SUCCEEDED] != len(attempts):
            for attempt in map(Attempt._make, attempts):
                if attempt.outcome != SUCCEEDED:
                    self.supervisor.events.failed_attempt(self.run_id, attempt)
        self.supervisor.progress.update(self._tally)

    def _salvage(self, index: int) -> None:
        """A worker died: what it had may have been sent. Keyed rows go back to the queue, held until
        an attempt sent just before the death would have timed out; rows without a key become ``unknown``."""
        lost = list(self.outstanding[index].values())
        self.outstanding[index] = {}
        self.hungry.pop(index, None)
        if lost:
            self.lost_at = time.monotonic()
        if self.settings.idempotency:
            not_before = time.time() + self.settings.timeout + HOLD_MARGIN
            self.left += len(lost)
            self.backlog.extendleft(reversed([row._replace(not_before=not_before) for row in lost]))
        else:
            self._record(index, [_unknown_attempt(row, "its worker process died") for row in lost])
        self.supervisor.say(
            f"worker {index} died; {len(lost)} rows recovered",
            "worker_died",
            worker=index,
            requeued=len(lost) if self.settings.idempotency else 0,
        )
        self.deaths += 1
        if self.deaths > MAX_DEATHS_PER_WORKER * self.backend.size:
            raise EngineError(
                f"worker processes died {self.deaths} times in this pass; stopping. Nothing is lost:"
                f" finish the run later with: {rerun_command(self.run_id, self.ledger.location)}"
            )
        if not self.supervisor.stop.count:
            self.backend.replace(index)

    def _left(self, index: int) -> None:
        """A worker drained itself (SIGTERM) and left: nothing of it is in flight; its queue goes back."""
        lost = list(self.outstanding[index].values())
        self.outstanding[index] = {}
        self.hungry.pop(index, None)
        self.left += len(lost)
        self.backlog.extendleft(reversed(lost))
        self.backend.replace(index)

    def _serve_hungry(self) -> None:
        if self.held:
            return
        window = self.backend.window
        for index, (want, free) in list(self.hungry.items()):
            count = want if self.left > window else free
            if count == 0:  # it only wanted a reserve, and none is handed out at the end: say so
                del self.hungry[index]
                self.backend.send_rows(index, [])
                continue
            rows = self._take(count)
            if not rows:
                return
            del self.hungry[index]
            self.left -= len(rows)
            self.outstanding[index].update((row.rid, row) for row in rows)
            if not self.settings.idempotency:  # write ahead: a crash from here on leaves them 'unknown'
                self._write_ledger()
                self.ledger.mark_in_flight([row.rid for row in rows])
            self.backend.send_rows(index, rows)

    def _take(self, want: int) -> list[Dispatch]:
        """The ``want`` rows a worker asked for (it sizes its own reserve), re-queued rows first.

        Exactly what was asked, not rounded up to whole chunks: rows hoarded by one worker
        would sit idle at the end of a pass while another worker's slots stand empty.
        """
        while len(self.backlog) < want and self.pages is not None:
            page = next(self.pages, None)
            if page is None:
                self.pages = None
            else:
                self.backlog.extend(self._admit(page))
        return [self.backlog.popleft() for _ in range(min(want, len(self.backlog)))]

    def _admit(self, page: Page) -> list[Dispatch]:
        """A page from the ledger, about to be handed out: move the frontier past it first (write-ahead),
        and hold the rows an earlier, dead pass may still have in flight."""
        self.frontier = later(self.frontier, (page.level, page.rows[-1].rid))
        self.supervisor.renew(self.frontier)
        hold = self.supervisor.hold
        if hold is None or hold.until <= time.time():
            return page.rows
        held = [row._replace(not_before=hold.until) if hold.covers(page.level, row.rid) else row for row in page.rows]
        count = sum(1 for row in held if row.not_before)
        if count:
            until = time.strftime("%H:%M:%S", time.localtime(hold.until))
            self.supervisor.say(
                f"{count} rows wait until {until}: their last attempt may still be in progress",
                "hold",
                rows=count,
                until=hold.until,
            )
        return held


def _unknown_attempt(row: Dispatch, why: str) -> tuple:
    """The record of an attempt whose request may or may not have been sent (no key to resend with)."""
    return unanswered_record(row, UNKNOWN, f"outcome unknown: {why} while it may have been sent")
