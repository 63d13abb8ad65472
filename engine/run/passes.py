"""The coordinator: it loads the input into the ledger, feeds the pool, records the results.

It is the ledger's only writer. Loading happens before anything is sent (write-ahead):
a row that is in flight when a process dies is still ``pending`` or ``retrying`` in
the ledger, and the next pass sends it again with the same Idempotency-Key.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import quote

from engine.config import RunSettings
from engine.errors import EngineError, InputError, TemplateError
from engine.request.fieldtypes import parse_field_types
from engine.request.inputs import Row
from engine.jsontext import json_text
from engine.ledger.lease import HEARTBEAT_INTERVAL, HOLD_MARGIN, Hold, Holder, later
from engine.ledger import DuplicateRow, Ledger, Page
from engine.local.pool import WorkerPool
from engine.states import RETRYING, SUCCEEDED, UNKNOWN
from engine.request.template import CompiledRequest
from engine.wire import Attempt, Dispatch

# positions in the plain Attempt tuples workers send
_RID = Attempt._fields.index("rid")
_ATTEMPT = Attempt._fields.index("attempt")
_OUTCOME = Attempt._fields.index("outcome")
#: Characters refused in anything sent in a URL or header line: C0 controls (CR, LF, NUL…) and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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
              source: str, on_progress: Callable[[int], None] = lambda n: None, key_prefix: str | None = None,
              digest=None) -> int:
    """Validate every row and write it to the ledger as ``pending``; return how many.

    Each row's idempotency key is ``<key_prefix>:<row id>`` (``key_prefix`` defaults to the
    run id) unless ``--idempotency-key-field`` names a field. ``digest``, a hashlib object,
    if given, is fed every row's id and payload: the identity of the input's content.
    Raises :class:`InputError` at the first bad row; the caller then deletes the run, so
    nothing of a bad input is ever sent.
    """
    compiled = CompiledRequest(settings.request_spec())
    validator = _RowValidator(compiled, settings, source)
    key_prefix = key_prefix or run_id
    batch, total = [], 0
    for row in rows:
        priority = validator.check(row)
        key = validator.idempotency_key(row, key_prefix)
        payload = json_text(row.fields)
        if digest is not None:
            digest.update(f"{row.row_id}\0{payload}\n".encode())
        batch.append((row.line, row.row_id, priority, payload, key))
        if len(batch) >= LOAD_BATCH:
            total += _insert(ledger, run_id, batch, source, settings.id_field)
            on_progress(total)
            batch = []
    if batch:
        total += _insert(ledger, run_id, batch, source, settings.id_field)
        on_progress(total)
    if settings.idempotency_key_field:  # two rows with one key: the API would charge only the first
        duplicate = ledger.duplicate_key(run_id)
        if duplicate is not None:
            key, first, second = duplicate
            raise InputError(source, second, f"duplicate idempotency key {key!r} (first on line {first})",
                             settings.idempotency_key_field)
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
        # values that reach a URL or a header line (the id is in the default idempotency key)
        self.wire_fields = tuple(sorted(compiled.url.fields | compiled.header_fields
                                        | {settings.id_field, settings.idempotency_key_field} - {None}))
        self.url_fields = compiled.url.fields
        self.types = parse_field_types(settings.field_types)
        self.header_bound = compiled.header_fields | {settings.idempotency_key_field} - {None}

    def check(self, row: Row) -> float:
        for name, convert in self.types.items():
            self._convert(row, name, convert)
        missing = self.compiled.missing_fields(row.fields)
        if missing:
            raise InputError(self.source, row.line, "used in a template but missing from the row", missing[0])
        for name in self.wire_fields:
            self._check_wire_value(row, name)
        if self.checks_rows:
            try:
                self.compiled.check(row.fields)
            except TemplateError as err:
                raise InputError(self.source, row.line, str(err)) from None
        return self._priority(row)

    def _convert(self, row: Row, name: str, convert) -> None:
        if name not in row.fields:
            raise InputError(self.source, row.line, "typed with --field but missing from the row", name)
        value = row.fields[name]
        try:
            row.fields[name] = convert(value)
        except ValueError as err:
            raise InputError(self.source, row.line, f"expected {err}, found {value!r}", name) from None

    def _check_wire_value(self, row: Row, name: str) -> None:
        """A value bound for a URL or header: no control characters (header injection, NUL), no dot segment."""
        value = row.fields.get(name)
        if value is None:
            return
        text = value if isinstance(value, str) else str(value)
        bad = _CONTROL.search(text)
        if bad:
            raise InputError(self.source, row.line, f"control character {bad.group()!r} is not allowed in a value "
                                                    "sent in a URL or header", name)
        if name in self.header_bound and not text.isascii():
            raise InputError(self.source, row.line, "a header value must be ASCII (HTTP sends header bytes "
                                                    "as they are); percent-encode it in the input", name)
        if name in self.url_fields and text in (".", ".."):
            raise InputError(self.source, row.line, f"{text!r} would be read as a path segment and move the URL",
                             name)

    def _priority(self, row: Row) -> float:
        name = self.settings.priority_field
        if not name:
            return 0.0
        value = row.fields.get(name)
        if value in (None, ""):
            return 0.0
        try:
            priority = float(value)
        except (TypeError, ValueError):
            priority = math.nan
        if not math.isfinite(priority):
            raise InputError(self.source, row.line, f"priority must be a finite number, found {value!r}", name)
        return priority

    def idempotency_key(self, row: Row, key_prefix: str) -> str:
        name = self.settings.idempotency_key_field
        if not name:  # percent-encoded if need be: a header carries it, and header values are ASCII
            row_id = row.row_id if row.row_id.isascii() else quote(row.row_id, safe="")
            return f"{key_prefix}:{row_id}"
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
    return WorkerPool(settings.workers, settings.worker_config(), rate=settings.rate, breaker=settings.breaker())


class Pass:
    """One pass over a run: every row in ``states`` is sent until it reaches a final state.

    The pass holds the run's lease (``holder``): it renews it every second and moves its
    dispatch frontier forward before handing out rows beyond it. ``hold``, left by an
    earlier pass that did not end cleanly, keeps the rows it may have had in flight until
    their attempt timeout has passed. ``clean`` says, at the end, whether nothing can still
    be in progress at the API, so the lease can be dropped.
    """

    def __init__(self, ledger: Ledger, run_id: str, settings: RunSettings, states: Iterable[str],
                 progress=None, events=None, stop: StopRequest | None = None, total: int | None = None,
                 holder: Holder | None = None, hold: Hold | None = None):
        self.ledger, self.run_id, self.settings = ledger, run_id, settings
        self.pages: Iterator[Page] | None = ledger.iter_pages(run_id, tuple(states))
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
        self.holder = holder or Holder.this_process()
        self.hold = hold
        self.frontier = hold.frontier if hold else None
        self.renewed_at = time.monotonic()
        self.interrupted = False
        self.gave_up: str | None = None  # why the pass ended before every row was final
        self.clean = False
        self.paused_since: float | None = None
        self.paused_total = 0.0
        self.deaths = 0
        self.lost_at = -float("inf")  # when a worker last died with rows that may be in flight
        self.unwritten: list[tuple] = []
        self.written_at = time.monotonic()

    def run(self, pool: WorkerPool | None = None) -> PassTally:
        """Send every row; ``pool``, if given, was started earlier (while the input loaded)."""
        with pool or start_pool(self.settings) as pool:
            try:
                self._send_all(pool)
            finally:
                self._write_ledger()
        return self.tally

    def _send_all(self, pool: WorkerPool) -> None:
        self.outstanding = {index: {} for index in range(self.settings.workers)}
        while not self._done():
            if self.stop.count or self.gave_up:
                self.interrupted = not self.gave_up
                self._drain(pool)
                break
            self._handle_events(pool, EVENT_WAIT)
            self._watch_breaker(pool)
            self._watch_workers(pool)
            self._renew_lease()
        else:
            pool.stop()
            pool.join(5)
            self.clean = True
            return
        self._write_ledger()
        in_flight_lost = bool(pool.live())  # drained workers leave; one still here may be mid-transfer
        recently_lost = time.monotonic() - self.lost_at < self.settings.timeout + HOLD_MARGIN
        hold_pending = self.hold is not None and self.hold.until > time.time()
        self.clean = not (in_flight_lost or recently_lost or hold_pending)

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
            if message.bye and not self.stop.count and not self.gave_up and not self._done():
                self._left(pool, message.worker)
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
        """Say when the pool pauses because the endpoint is down, and when it resumes; bound the pause."""
        paused = pool.breaker.is_open()
        now = time.monotonic()
        if paused != (self.paused_since is not None):
            if paused:
                self.paused_since = now
                since = time.strftime("%H:%M:%S", time.localtime(pool.breaker.opened_at()))
                self._say(f"paused: endpoint down since {since}", "pause", reason="endpoint down",
                          since=pool.breaker.opened_at())
            else:
                self.paused_total += now - self.paused_since
                self.paused_since = None
                self._say("resumed", "resume")
        if self.paused_since is not None and self.paused_total + now - self.paused_since > self.settings.max_pause:
            self.gave_up = (f"the endpoint stayed down: the pass paused {self.settings.max_pause:g} s in all"
                            " (--max-pause)")
            self._say("giving up: paused longer than --max-pause", "give_up", reason=self.gave_up)

    def _watch_workers(self, pool: WorkerPool) -> None:
        """A worker that is alive but silent (stopped, stuck in C code) is killed; its rows are salvaged."""
        for index in pool.stalled(self.settings.stall_timeout):
            self._say(f"worker {index} made no progress for {self.settings.stall_timeout:g} s; replacing it",
                      "worker_stalled", worker=index)
            pool.kill(index)

    def _say(self, note: str, event: str, **fields) -> None:
        if self.progress is not None:
            self.progress.note(note)
        if self.events is not None:
            self.events.emit(event, run_id=self.run_id, **fields)

    def _salvage(self, pool: WorkerPool, index: int) -> None:
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
        self._say(f"worker {index} died; {len(lost)} rows recovered", "worker_died", worker=index,
                  requeued=len(lost) if self.settings.idempotency else 0)
        self.deaths += 1
        if self.deaths > MAX_DEATHS_PER_WORKER * self.settings.workers:
            raise EngineError(f"worker processes died {self.deaths} times in this pass; stopping. Nothing is lost:"
                              f" finish the run later with: {rerun_command(self.run_id, self.ledger.path)}")
        if not self.stop.count:
            pool.replace(index)

    def _left(self, pool: WorkerPool, index: int) -> None:
        """A worker drained itself (SIGTERM) and left: nothing of it is in flight; its queue goes back."""
        lost = list(self.outstanding[index].values())
        self.outstanding[index] = {}
        self.hungry.pop(index, None)
        self.left += len(lost)
        self.backlog.extendleft(reversed(lost))
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
            if not self.settings.idempotency:  # write ahead: a crash from here on leaves them 'unknown'
                self._write_ledger()
                self.ledger.mark_in_flight([row.rid for row in rows])
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
            self._say(f"{count} rows wait until {until}: their last attempt may still be in progress",
                      "hold", rows=count, until=hold.until)
        return held

    def _drain(self, pool: WorkerPool) -> None:
        """Ctrl-C: let in-flight transfers finish and be recorded; a second Ctrl-C stops at once."""
        pool.drain()
        deadline = time.monotonic() + self.settings.timeout + DRAIN_GRACE
        while pool.live() and time.monotonic() < deadline and self.stop.count < 2:
            self._handle_events(pool, EVENT_WAIT)  # draining workers ask for nothing; the dead are not replaced
            self._renew_lease()


def _unknown_attempt(row: Dispatch, why: str) -> tuple:
    """The record of an attempt whose request may or may not have been sent (no key to resend with)."""
    return (row.rid, row.attempts + 1, UNKNOWN, None, None, f"outcome unknown: {why} while it may have been sent",
            None, time.time(), 0.0)


def rerun_command(run_id: str, db: str) -> str:
    """The one place the rerun hint is written."""
    return f"python -m engine rerun {run_id} --db {db}"
