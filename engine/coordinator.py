"""The coordinator: it loads the input into the ledger, feeds the pool, records the results.

It is the ledger's only writer. Loading happens before anything is sent (write-ahead):
a row that is in flight when a process dies is still ``pending`` or ``retrying`` in
the ledger, and the next pass sends it again with the same Idempotency-Key.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from engine.config import RunSettings
from engine.errors import EngineError, InputError, TemplateError
from engine.inputs import Row
from engine.jsontext import json_text
from engine.ledger import Attempt, Dispatch, DuplicateRow, Ledger
from engine.policy import RETRYING, SUCCEEDED
from engine.pool import WorkerPool
from engine.template import CompiledRequest

# positions in the plain Attempt tuples workers send
_RID = Attempt._fields.index("rid")
_ATTEMPT = Attempt._fields.index("attempt")
_OUTCOME = Attempt._fields.index("outcome")
#: Rows per insert transaction while loading.
LOAD_BATCH = 2000
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


def load_rows(ledger: Ledger, run_id: str, rows: Iterable[Row], settings: RunSettings,
              source: str, on_progress: Callable[[int], None] = lambda n: None) -> int:
    """Validate every row and write it to the ledger as ``pending``; return how many.

    Raises :class:`InputError` at the first bad row; the caller then deletes the run, so
    nothing of a bad input is ever sent.
    """
    compiled = CompiledRequest(settings.request_spec())
    validator = _RowValidator(compiled, settings, source)
    batch, total = [], 0
    for row in rows:
        priority = validator.check(row)
        key = validator.idempotency_key(row, run_id)
        batch.append((row.line, row.row_id, priority, json_text(row.fields), key))
        if len(batch) >= LOAD_BATCH:
            total += _insert(ledger, run_id, batch, source, settings.id_field)
            on_progress(total)
            batch = []
    if batch:
        total += _insert(ledger, run_id, batch, source, settings.id_field)
        on_progress(total)
    return total


def _insert(ledger: Ledger, run_id: str, batch: list, source: str, id_field: str) -> int:
    try:
        ledger.insert_requests(run_id, batch)
    except DuplicateRow as dup:
        raise InputError(source, dup.line, f"duplicate id {dup.row_id!r} (first on line {dup.first_line})",
                         id_field) from None
    return len(batch)


class _RowValidator:
    """Checks a row against the templates and options before it may enter the ledger."""

    def __init__(self, compiled: CompiledRequest, settings: RunSettings, source: str):
        self.compiled, self.settings, self.source = compiled, settings, source
        self.checks_rows = compiled.host_is_dynamic or bool(compiled.header_fields)

    def check(self, row: Row) -> float:
        missing = self.compiled.missing_fields(row.fields)
        if missing:
            raise InputError(self.source, row.line, "used in a template but missing from the row", missing[0])
        if self.checks_rows:
            try:
                self.compiled.check(row.fields)
            except TemplateError as err:
                raise InputError(self.source, row.line, str(err)) from None
        return self._priority(row)

    def _priority(self, row: Row) -> float:
        name = self.settings.priority_field
        if not name:
            return 0.0
        value = row.fields.get(name)
        if value in (None, ""):
            return 0.0
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(self.source, row.line, f"priority must be a number, found {value!r}", name) from None

    def idempotency_key(self, row: Row, run_id: str) -> str:
        name = self.settings.idempotency_key_field
        if not name:
            return f"{run_id}:{row.row_id}"
        value = row.fields.get(name)
        if value in (None, ""):
            raise InputError(self.source, row.line, "idempotency key is missing or empty", name)
        return str(value)


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


class StopRequest:
    """SIGINT/SIGTERM become a counter the pass loop reads: 1 = drain, 2 = abort now."""

    def __init__(self):
        self.count = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def start_pool(settings: RunSettings) -> WorkerPool:
    """The worker processes for a pass, started and left to import while the caller works on."""
    return WorkerPool(settings.workers, settings.worker_config(), rate=settings.rate)


class Pass:
    """One pass over a run: every row in ``states`` is sent until it reaches a final state."""

    def __init__(self, ledger: Ledger, run_id: str, settings: RunSettings, states: Iterable[str],
                 progress=None, events=None, stop: StopRequest | None = None, total: int | None = None):
        self.ledger, self.run_id, self.settings = ledger, run_id, settings
        self.pages: Iterator[list[Dispatch]] | None = ledger.iter_to_send(run_id, tuple(states))
        self.backlog: deque[Dispatch] = deque()
        self.outstanding: dict[int, dict[int, Dispatch]] = {}
        self.hungry: dict[int, tuple[int, int]] = {}  # worker -> (rows wanted, slots free now)
        # rows not yet handed out; once they fit in the pool's window, workers get no reserve, so
        # no row waits in one worker's queue while another worker has an empty slot
        self.left = total if total is not None else float("inf")
        self.tally = PassTally()
        self.progress = progress
        self.events = events
        self.stop = stop or StopRequest()
        self.interrupted = False
        self.paused = False
        self.deaths = 0
        self.unwritten: list[tuple] = []
        self.written_at = time.monotonic()

    def run(self, pool: WorkerPool | None = None) -> PassTally:
        """Send every row; ``pool``, if given, was started earlier (while the input loaded)."""
        with pool or start_pool(self.settings) as pool:
            self.outstanding = {index: {} for index in range(self.settings.workers)}
            while not self._done():
                if self.stop.count:
                    self._drain(pool)
                    break
                self._handle_events(pool, EVENT_WAIT)
                self._watch_breaker(pool)
            else:
                pool.stop()
                pool.join(5)
            self._write_ledger()
        return self.tally

    def _done(self) -> bool:
        return self.pages is None and not self.backlog and not any(self.outstanding.values())

    def _handle_events(self, pool: WorkerPool, timeout: float) -> None:
        messages, dead = pool.events(timeout)
        for message in messages:
            if message.want:
                self.hungry[message.worker] = (message.want, message.free)
        self._serve_hungry(pool)  # first: a worker waiting for rows must not wait for the ledger too
        for message in messages:
            if message.attempts:
                self._record(message.worker, message.attempts)
        for index in dead:
            self._salvage(pool, index)
        if dead:
            self._serve_hungry(pool)  # the dead worker's rows, to whoever asks
        if self.unwritten and time.monotonic() - self.written_at >= LEDGER_INTERVAL:
            self._write_ledger()

    def _write_ledger(self) -> None:
        if self.unwritten:
            self.ledger.record(self.unwritten)
            self.unwritten = []
        self.written_at = time.monotonic()

    def _record(self, worker: int, attempts: list[tuple]) -> None:
        """Queue a worker's batch for the ledger, and forget the rows that reached a final state."""
        self.unwritten.extend(attempts)
        if len(self.unwritten) >= LEDGER_BATCH or time.monotonic() - self.written_at >= LEDGER_INTERVAL:
            self._write_ledger()
        outcomes = Counter(attempt[_OUTCOME] for attempt in attempts)
        self.tally.add(outcomes)
        outstanding = self.outstanding[worker]
        for attempt in attempts:
            if attempt[_OUTCOME] != RETRYING:
                outstanding.pop(attempt[_RID], None)
            elif attempt[_RID] in outstanding:  # if its worker dies, the row goes out again as attempt n+1
                outstanding[attempt[_RID]] = outstanding[attempt[_RID]]._replace(attempts=attempt[_ATTEMPT])
        if self.events is not None and outcomes[SUCCEEDED] != len(attempts):
            for attempt in map(Attempt._make, attempts):
                if attempt.outcome != SUCCEEDED:
                    self.events.failed_attempt(self.run_id, attempt)
        if self.progress is not None:
            self.progress.update(self.tally)

    def _watch_breaker(self, pool: WorkerPool) -> None:
        """Say when the pool pauses because the endpoint is down, and when it resumes."""
        paused = pool.breaker.is_open()
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            since = time.strftime("%H:%M:%S", time.localtime(pool.breaker.opened_at()))
            if self.progress is not None:
                self.progress.note(f"paused: endpoint down since {since}")
            if self.events is not None:
                self.events.emit("pause", run_id=self.run_id, reason="endpoint down", since=pool.breaker.opened_at())
        else:
            if self.progress is not None:
                self.progress.note("resumed")
            if self.events is not None:
                self.events.emit("resume", run_id=self.run_id)

    def _salvage(self, pool: WorkerPool, index: int) -> None:
        """A worker died: its unfinished rows go back to the front of the queue; a new worker starts."""
        lost = list(self.outstanding[index].values())
        self.outstanding[index] = {}
        self.left += len(lost)
        self.backlog.extendleft(reversed(lost))
        self.hungry.pop(index, None)
        if self.events is not None:
            self.events.emit("worker_died", run_id=self.run_id, worker=index, requeued=len(lost))
        self.deaths += 1
        if self.deaths > MAX_DEATHS_PER_WORKER * self.settings.workers:
            raise EngineError(f"worker processes died {self.deaths} times in this pass; stopping. Nothing is lost:"
                              f" finish the run later with: python -m engine rerun {self.run_id}")
        if not self.stop.count:
            pool.replace(index)

    def _serve_hungry(self, pool: WorkerPool) -> None:
        window = self.settings.workers * self.settings.concurrency
        for index, (want, free) in list(self.hungry.items()):
            count = want if self.left > window else free
            if count == 0:  # it only wanted a reserve, and none is handed out at the end: say so
                del self.hungry[index]
                pool.send_chunks(index, [])
                continue
            rows = self._take(count)
            if not rows:
                return
            del self.hungry[index]
            self.left -= len(rows)
            self.outstanding[index].update((row.rid, row) for row in rows)
            chunk = self.settings.chunks
            # whole chunks of --chunks rows, the last one cut to what was asked; plain tuples pickle faster
            pool.send_chunks(index, [[tuple(row) for row in rows[i:i + chunk]] for i in range(0, len(rows), chunk)])

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
                self.backlog.extend(page)
        return [self.backlog.popleft() for _ in range(min(want, len(self.backlog)))]

    def _drain(self, pool: WorkerPool) -> None:
        """Ctrl-C: let in-flight transfers finish and be recorded; a second Ctrl-C stops at once."""
        self.interrupted = True
        pool.drain()
        deadline = time.monotonic() + self.settings.timeout + DRAIN_GRACE
        while pool.live() and time.monotonic() < deadline and self.stop.count < 2:
            self._handle_events(pool, EVENT_WAIT)  # draining workers ask for nothing; the dead are not replaced
