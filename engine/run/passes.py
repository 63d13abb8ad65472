"""A pass: every row in some states sent through a :class:`~engine.backend.Backend` until final.

The pass is the ledger's only writer while it runs: it hands rows to the backend's
workers as they ask, records every attempt they report in batched transactions, and
holds the run's lease. Rows a dead worker may have sent go out again no sooner than an
attempt sent just before the death would have timed out (with their Idempotency-Key),
or become ``unknown`` in a run without keys.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engine.backend import Backend
from engine.config import RunSettings
from engine.delivery.records import unanswered_record
from engine.errors import EngineError
from engine.ledger import Page, Store
from engine.ledger.lease import HEARTBEAT_INTERVAL, HOLD_MARGIN, Hold, Holder, later
from engine.output.events import EventLog
from engine.output.progress import Progress
from engine.run.pause import OperatorPause, PauseClock, PausePeriods
from engine.run.signals import StopRequest
from engine.states import RETRYING, SUCCEEDED, UNKNOWN
from engine.wire import ATTEMPT, OUTCOME, RID, Attempt, Dispatch

#: How long the coordinator waits for worker messages before looking around again (s).
EVENT_WAIT = 0.2
#: Results written to the ledger per transaction at most, and the longest they wait for it (s).
#: Bigger transactions write each ledger page once for many rows; a crash can lose only
#: unwritten results, whose rows are then simply sent again with the same key.
LEDGER_BATCH = 4096
LEDGER_INTERVAL = 0.1
#: Worker deaths in one pass, per worker, after which the pass gives up instead of restarting them.
MAX_DEATHS_PER_WORKER = 5
#: Extra time, beyond --timeout, that workers get to finish in-flight transfers on Ctrl-C (s).
DRAIN_GRACE = 5.0


@dataclass
class PassTally:
    """Counts a pass keeps as results arrive, for progress and the end-of-pass line."""

    attempts: int = 0
    succeeded: int = 0
    not_succeeded: int = 0
    retries: int = 0

    def add(self, outcomes: Counter) -> None:
        """Count a batch of attempts, given as outcome -> how many."""
        retries = outcomes.get(RETRYING, 0)
        succeeded = outcomes.get(SUCCEEDED, 0)
        total = sum(outcomes.values())
        self.attempts += total
        self.retries += retries
        self.succeeded += succeeded
        self.not_succeeded += total - retries - succeeded


class Pass:
    """One pass over a run: every row in ``states`` is sent until it reaches a final state.

    The pass holds the run's lease (``holder``): it renews it every second and moves its
    dispatch frontier forward before handing out rows beyond it. ``hold``, left by an
    earlier pass that did not end cleanly, keeps the rows it may have had in flight until
    their attempt timeout has passed. ``clean`` says, at the end, whether nothing can still
    be in progress at the API, so the lease can be dropped.
    """

    def __init__(
        self,
        ledger: Store,
        run_id: str,
        settings: RunSettings,
        states: Iterable[str],
        backend: Backend,
        *,
        progress: Progress | None = None,
        events: EventLog | None = None,
        stop: StopRequest | None = None,
        total: int | None = None,
        holder: Holder | None = None,
        hold: Hold | None = None,
    ):
        self.ledger, self.run_id, self.settings = ledger, run_id, settings
        self.backend = backend
        self.pages: Iterator[Page] | None = ledger.iter_pages(run_id, tuple(states))
        self.backlog: deque[Dispatch] = deque()
        self.outstanding: dict[int, dict[int, Dispatch]] = {worker: {} for worker in range(backend.size)}
        self.hungry: dict[int, tuple[int, int]] = {}  # worker -> (rows wanted, slots free now)
        # rows not yet handed out; once they fit in the pool's window, workers get no reserve, so
        # no row waits in one worker's queue while another worker has an empty slot
        self.left = total if total is not None else float("inf")
        self.tally = PassTally()
        self.progress = progress or Progress(0, "pass", quiet=True)
        self.events = events or EventLog(None)
        self.stop = stop or StopRequest()
        self.holder = holder or Holder.this_process()
        self.hold = hold
        self.frontier = hold.frontier if hold else None
        self.renewed_at = time.monotonic()
        self.interrupted = False
        self.gave_up: str | None = None  # why the pass ended before every row was final
        self.clean = False
        periods = PausePeriods(ledger, run_id)
        self.pause = PauseClock(settings.max_pause, periods)
        self.operator = OperatorPause(ledger, run_id, periods)
        self.deaths = 0
        self.lost_at = -float("inf")  # when a worker last died with rows that may be in flight
        self.unwritten: list[tuple] = []
        self.written_at = time.monotonic()

    def run(self) -> PassTally:
        """Send every row; the backend's owner ends it afterwards. Every result received is
        written to the ledger, however the pass ends."""
        try:
            self._send_all()
        finally:
            self._write_ledger()
        return self.tally

    def _send_all(self) -> None:
        while not self._done():
            if self.stop.count or self.gave_up:
                self.interrupted = not self.gave_up
                self._drain()
                break
            self._handle_events(EVENT_WAIT)
            self._watch_outage()
            self._watch_workers()
            self._renew_lease()
            was_paused = self.operator.paused
            if not self.operator.check(self._say) and was_paused:
                self._serve_hungry()  # the workers an operator's pause held back
        else:
            self.backend.stop(timeout=5)
            self.clean = True
            return
        self._write_ledger()
        in_flight_lost = bool(self.backend.live())  # drained workers leave; one still here may be mid-transfer
        recently_lost = time.monotonic() - self.lost_at < self.settings.timeout + HOLD_MARGIN
        hold_pending = self.hold is not None and self.hold.until > time.time()
        self.clean = not (in_flight_lost or recently_lost or hold_pending)

    def _done(self) -> bool:
        return self.pages is None and not self.backlog and not any(self.outstanding.values())

    def _handle_events(self, timeout: float) -> None:
        messages, dead = self.backend.events(timeout)
        for message in messages:
            if message.want:
                self.hungry[message.worker] = (message.want, message.free)
        self._serve_hungry()  # first: a worker waiting for rows must not wait for the ledger too
        for message in messages:
            if message.attempts:
                self._record(message.worker, message.attempts)
            if message.bye and not self.stop.count and not self.gave_up and not self._done():
                self._left(message.worker)
        for index in dead:
            self._salvage(index)
        if dead:
            self._serve_hungry()  # the dead worker's rows, to whoever asks
        if self.unwritten and time.monotonic() - self.written_at >= LEDGER_INTERVAL:
            self._write_ledger()

    def _write_ledger(self) -> None:
        if self.unwritten:
            self.ledger.record(self.unwritten)
            self.unwritten = []
        self.written_at = time.monotonic()

    def _renew_lease(self, frontier: tuple[float, int] | None = None) -> None:
        """Heartbeat once a second; a new frontier is written (and committed) at once."""
        if frontier is None and time.monotonic() - self.renewed_at < HEARTBEAT_INTERVAL:
            return
        self.ledger.renew_lease(self.run_id, self.holder, frontier)
        self.renewed_at = time.monotonic()

    def _record(self, worker: int, attempts: list[tuple]) -> None:
        """Queue a worker's batch for the ledger, and forget the rows that reached a final state."""
        self.unwritten.extend(attempts)
        if len(self.unwritten) >= LEDGER_BATCH or time.monotonic() - self.written_at >= LEDGER_INTERVAL:
            self._write_ledger()
        outcomes = Counter(attempt[OUTCOME] for attempt in attempts)
        self.tally.add(outcomes)
        outstanding = self.outstanding[worker]
        for attempt in attempts:
            if attempt[OUTCOME] != RETRYING:
                outstanding.pop(attempt[RID], None)
            elif attempt[RID] in outstanding:  # if its worker dies, the row goes out again as attempt n+1
                outstanding[attempt[RID]] = outstanding[attempt[RID]]._replace(attempts=attempt[ATTEMPT])
        if outcomes[SUCCEEDED] != len(attempts):
            for attempt in map(Attempt._make, attempts):
                if attempt.outcome != SUCCEEDED:
                    self.events.failed_attempt(self.run_id, attempt)
        self.progress.update(self.tally)

    def _watch_outage(self) -> None:
        """Say when the workers pause because the endpoint is down, and when they resume; bound the pause."""
        reason = self.pause.observe(self.backend.outage_since(), self._say)
        if reason:
            self.gave_up = reason

    def _watch_workers(self) -> None:
        """A worker that is alive but silent (stopped, stuck in C code) is killed; its rows are salvaged."""
        for index in self.backend.stalled(self.settings.stall_timeout):
            self._say(
                f"worker {index} made no progress for {self.settings.stall_timeout:g} s; replacing it",
                "worker_stalled",
                worker=index,
            )
            self.backend.kill(index)

    def _say(self, note: str, event: str, **fields) -> None:
        self.progress.note(note)
        self.events.emit(event, run_id=self.run_id, **fields)

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
        self._say(
            f"worker {index} died; {len(lost)} rows recovered",
            "worker_died",
            worker=index,
            requeued=len(lost) if self.settings.idempotency else 0,
        )
        self.deaths += 1
        if self.deaths > MAX_DEATHS_PER_WORKER * self.settings.workers:
            raise EngineError(
                f"worker processes died {self.deaths} times in this pass; stopping. Nothing is lost:"
                f" finish the run later with: {rerun_command(self.run_id, self.ledger.location)}"
            )
        if not self.stop.count:
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
        if self.operator.paused:
            return
        window = self.settings.workers * self.settings.concurrency
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
        self._renew_lease(self.frontier)
        hold = self.hold
        if hold is None or hold.until <= time.time():
            return page.rows
        held = [row._replace(not_before=hold.until) if hold.covers(page.level, row.rid) else row for row in page.rows]
        count = sum(1 for row in held if row.not_before)
        if count:
            until = time.strftime("%H:%M:%S", time.localtime(hold.until))
            self._say(
                f"{count} rows wait until {until}: their last attempt may still be in progress",
                "hold",
                rows=count,
                until=hold.until,
            )
        return held

    def _drain(self) -> None:
        """Ctrl-C: let in-flight transfers finish and be recorded; a second Ctrl-C stops at once."""
        self.backend.drain()
        deadline = time.monotonic() + self.settings.timeout + DRAIN_GRACE
        while self.backend.live() and time.monotonic() < deadline and self.stop.count < 2:
            self._handle_events(EVENT_WAIT)  # draining workers ask for nothing; the dead are not replaced
            self._renew_lease()


def _unknown_attempt(row: Dispatch, why: str) -> tuple:
    """The record of an attempt whose request may or may not have been sent (no key to resend with)."""
    return unanswered_record(row, UNKNOWN, f"outcome unknown: {why} while it may have been sent")


def rerun_command(run_id: str, db: str) -> str:
    """The one place the rerun hint is written."""
    return f"python -m engine rerun {run_id} --db {db}"
