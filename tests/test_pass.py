"""The local pass's scheduling, driven through the Backend interface by an in-process fake.

No processes and no network: the fake's workers answer every row they are handed at the
next ``events`` call, and a test can make one die holding rows. What is checked is the
pass's part: who gets how many rows, what a death does to the rows it held, what reaches
the ledger.
"""

from __future__ import annotations

import time

import pytest

from engine.backend import Backend
from engine.config import RunSettings
from engine.errors import EngineError
from engine.ledger import open_store
from engine.ledger.lease import HOLD_MARGIN, Holder
from engine.run.passes import MAX_DEATHS_PER_WORKER, LocalPass
from engine.run.supervisor import PassSupervisor
from engine.states import PENDING, SUCCEEDED, UNKNOWN
from engine.wire import Attempt, Dispatch, Report, attempt_record


class FakeBackend(Backend):
    """``size`` workers of ``slots`` slots each that ask for ``want`` rows (``free`` of them free
    slots) and answer every row at the next ``events`` call with ``outcome``."""

    def __init__(self, size: int, want: int, free: int | None = None, outcome: str = SUCCEEDED, slots: int = 10):
        self.size, self.want, self.free, self.outcome = size, want, want if free is None else free, outcome
        self.slots = slots
        self.held: dict[int, list[Dispatch]] = {worker: [] for worker in range(size)}
        self.asking = set(range(size))
        self.handed: list[tuple[int, list[Dispatch]]] = []  # every send_rows call, in order
        self.dying: set[int] = set()  # workers that die at the next events call, holding their rows
        self.dead: set[int] = set()
        self.replaced: list[int] = []
        self.outage_at: float | None = None
        self.stopped = self.closed = self.drained = False

    @property
    def window(self) -> int:
        return self.size * self.slots

    def events(self, timeout: float) -> tuple[list[Report], list[int]]:
        reports, died = [], []
        for worker in range(self.size):
            if worker in self.dead:
                continue
            if worker in self.dying:
                self.dying.discard(worker)
                self.dead.add(worker)
                died.append(worker)
                continue
            answers = [
                attempt_record(
                    rid=row.rid,
                    attempt=row.attempts + 1,
                    outcome=self.outcome,
                    http_status=200,
                    started_at=time.time(),
                    duration_ms=1.0,
                )
                for row in self.held[worker]
            ]
            self.held[worker] = []
            asks = worker in self.asking
            if answers or asks:
                reports.append(Report(worker, answers, self.want if asks else 0, self.free if asks else 0, False))
        return reports, died

    def send_rows(self, worker: int, rows: list[Dispatch]) -> None:
        self.handed.append((worker, list(rows)))
        self.held[worker].extend(rows)

    def replace(self, worker: int) -> None:
        self.replaced.append(worker)
        self.dead.discard(worker)
        self.held[worker] = []

    def stalled(self, limit: float) -> list[int]:
        return []

    def kill(self, worker: int) -> None:
        self.dying.add(worker)

    def outage_since(self) -> float | None:
        return self.outage_at

    def drain(self) -> None:
        self.asking.clear()
        self.drained = True  # nothing is in flight in a fake: its workers leave at once

    def stop(self, timeout: float) -> None:
        self.stopped = True

    def live(self) -> list[int]:
        return [] if self.drained else [worker for worker in range(self.size) if worker not in self.dead]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def ledger(tmp_path):
    with open_store(str(tmp_path / "pass.db")) as store:
        yield store


def new_pass(ledger, backend: FakeBackend, rows: int, **settings) -> LocalPass:
    settings = RunSettings(url="http://127.0.0.1:9/c/{id}", workers=backend.size, **settings)
    ledger.create_run("r", input="in.csv", url=settings.url, method="POST", options={}, not_before=None)
    ledger.insert_requests("r", [(n + 2, f"c{n}", 0.0, "{}", f"k{n}") for n in range(rows)])
    holder = Holder.this_process()
    ledger.acquire_lease("r", holder, settings.timeout)
    supervisor = PassSupervisor(ledger, "r", settings, holder=holder)
    return LocalPass(supervisor, (PENDING,), backend, total=rows)


def run(sender: LocalPass):
    """The pass, supervised to its end."""
    return sender.supervisor.run(sender)


def test_every_row_is_sent_once_and_recorded(ledger):
    backend = FakeBackend(size=2, want=30)
    sender = new_pass(ledger, backend, rows=250, concurrency=10)
    tally = run(sender)
    sent = [row.row_id for _, rows in backend.handed for row in rows]
    assert sorted(sent) == sorted(f"c{n}" for n in range(250)) and len(set(sent)) == 250
    assert (tally.attempts, tally.succeeded) == (250, 250)
    assert ledger.counts("r")[SUCCEEDED] == 250
    assert sender.supervisor.clean and backend.stopped and not backend.closed  # the backend's owner closes it


def test_near_the_end_a_worker_gets_only_its_free_slots_not_a_reserve(ledger):
    # 2 workers x 10 slots: once the rows left fit in that window, a worker asking for 30
    # (10 slots + a reserve of 20) gets only its 10 free slots, so no row queues behind it
    backend = FakeBackend(size=2, want=30, free=10)
    run(new_pass(ledger, backend, rows=100, concurrency=10))
    sizes = [len(rows) for _, rows in backend.handed]
    assert sizes[:2] == [30, 30]  # 100 rows left > window of 20: the reserve is granted
    assert all(size <= 10 for size in sizes[3:]), sizes
    assert sum(sizes) == 100


def test_a_worker_asking_only_for_a_reserve_at_the_end_is_told_no_rows_are_coming(ledger):
    backend = FakeBackend(size=2, want=5, free=0)  # a full window asks for a reserve only
    sender = new_pass(ledger, backend, rows=4, concurrency=10)
    sender._handle_events(0)
    assert backend.handed == [(0, []), (1, [])]  # 4 rows left fit in the window: no reserve, and it is told so
    assert sender.hungry == {}


def test_a_dead_workers_rows_go_out_again_no_sooner_than_a_timeout_later(ledger):
    backend = FakeBackend(size=2, want=10)
    sender = new_pass(ledger, backend, rows=40, concurrency=10, timeout=7.0)
    sender._handle_events(0)  # both workers ask and get 10 rows each
    lost = {row.rid for row in backend.held[0]}
    backend.dying.add(0)
    died_at = time.time()
    sender._handle_events(0)  # worker 0 dies holding its rows; worker 1 answers and asks again
    assert backend.replaced == [0]
    run(sender)
    resent = [row for _, rows in backend.handed[2:] for row in rows if row.rid in lost]
    assert {row.rid for row in resent} == lost and len(resent) == len(lost) == 10
    assert all(row.not_before >= died_at + 7.0 + HOLD_MARGIN - 0.5 for row in resent)
    assert ledger.counts("r")[SUCCEEDED] == 40


def test_without_idempotency_keys_a_dead_workers_rows_become_unknown(ledger):
    backend = FakeBackend(size=2, want=10)
    sender = new_pass(ledger, backend, rows=40, concurrency=10, idempotency=False)
    sender._handle_events(0)
    lost = {row.rid for row in backend.held[0]}
    backend.dying.add(0)
    run(sender)
    assert ledger.counts("r")[UNKNOWN] == len(lost) == 10
    assert ledger.counts("r")[SUCCEEDED] == 30
    errors = {row["error"] for row in ledger.iter_rows("r", (UNKNOWN,))}
    assert errors == {"outcome unknown: its worker process died while it may have been sent"}


def test_too_many_deaths_stop_the_pass_with_the_rerun_command_and_keep_what_was_recorded(ledger):
    backend = FakeBackend(size=1, want=5)
    sender = new_pass(ledger, backend, rows=100, concurrency=5)
    real_events, calls = backend.events, []

    def every_third_call_it_dies(timeout):  # asks, answers and asks again, dies holding rows
        calls.append(timeout)
        if len(calls) % 3 == 0:
            backend.dying.add(0)
        return real_events(timeout)

    backend.events = every_third_call_it_dies
    with pytest.raises(EngineError, match=f"rerun r --db {ledger.location}"):
        run(sender)
    assert sender.deaths == MAX_DEATHS_PER_WORKER + 1
    recorded = sum(count for state, count in ledger.counts("r").items() if state != PENDING)
    assert recorded == sender.tally().attempts > 0


def test_an_outage_longer_than_max_pause_ends_the_pass(ledger):
    backend = FakeBackend(size=1, want=5)
    sender = new_pass(ledger, backend, rows=50, concurrency=5, max_pause=0.3)
    backend.outage_at = time.time()
    backend.want = 0  # paused workers ask for nothing
    backend.asking.clear()
    started = time.monotonic()
    run(sender)
    assert "stayed down" in sender.supervisor.gave_up and time.monotonic() - started < 5
    assert not sender.supervisor.interrupted


class SteadyBackend(FakeBackend):
    """A fake whose workers answer a few rows every few milliseconds, as a steady stream."""

    def events(self, timeout: float) -> tuple[list[Report], list[int]]:
        time.sleep(0.005)
        return super().events(timeout)


def test_a_slow_ledger_write_is_followed_by_a_longer_wait_so_the_next_one_writes_more_rows(ledger, monkeypatch):
    backend = SteadyBackend(size=2, want=10)
    sender = new_pass(ledger, backend, rows=5000, concurrency=10)
    writes: list[tuple[float, float, int]] = []  # (started, ended, rows)
    record = ledger.record

    def slow_record(attempts):  # rows scattered over the ledger: each write takes 30 ms
        started = time.monotonic()
        time.sleep(0.03)
        record(attempts)
        writes.append((started, time.monotonic(), len(attempts)))

    monkeypatch.setattr(ledger, "record", slow_record)
    run(sender)
    assert ledger.counts("r")[SUCCEEDED] == 5000
    during = writes[:-1]  # the last one is the pass's end, whenever it comes
    assert len(during) >= 3
    waits = [later[0] - earlier[1] for earlier, later in zip(during, during[1:], strict=False)]
    assert min(waits) >= 0.25, waits  # ten times the write's 30 ms, where 0.1 s was the rule
    assert max(waits) <= 1.0, waits  # and never much beyond LEDGER_INTERVAL_MAX


def test_attempts_travel_as_plain_tuples_in_attempt_order():
    record = attempt_record(rid=3, attempt=2, outcome=SUCCEEDED, http_status=201, started_at=1.0, duration_ms=2.0)
    assert type(record) is tuple
    assert Attempt._make(record)._asdict() == {
        "rid": 3,
        "attempt": 2,
        "outcome": SUCCEEDED,
        "http_status": 201,
        "curl_error": None,
        "error": None,
        "excerpt": None,
        "started_at": 1.0,
        "duration_ms": 2.0,
        "captured": None,
        "replayed": 0,
    }
