"""The pass supervisor alone: a fake clock, a fake store, and a scripted distribution.

No rows, no workers, no sleeping: each look advances the fake clock by one step. What is
checked is what both backends share: the lease heartbeat, the outage bound, an operator's
pause, Ctrl-C and its drain deadline, and how the pass says it ended.
"""

from __future__ import annotations

import contextlib

import pytest

from engine.config import RunSettings
from engine.ledger.lease import Hold, Holder
from engine.run.pause import ENDPOINT_DOWN, OPERATOR
from engine.run.signals import StopRequest
from engine.run.supervisor import CANCELLED, DRAIN_GRACE, PassSupervisor, PassTally

#: Fake seconds each look of the fake distribution takes.
STEP = 0.25


class FakeClock:
    """Both clocks of a pass, moved only by :meth:`advance`."""

    def __init__(self):
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    """The few ledger calls a supervisor makes, recorded."""

    def __init__(self):
        self.renewals: list[tuple[float, tuple | None]] = []
        self.pauses: list[tuple[str, bool]] = []
        self.paused = False
        self.cancelled = False
        self.clock: FakeClock | None = None

    def renew_lease(self, run_id, holder, frontier=None) -> None:
        assert self.clock is not None
        self.renewals.append((self.clock.now, frontier))

    def pause_began(self, run_id, reason) -> None:
        self.pauses.append((reason, True))

    def pause_ended(self, run_id, reason) -> None:
        self.pauses.append((reason, False))

    def is_paused(self, run_id) -> bool:
        return self.paused or self.cancelled

    def is_cancelled(self, run_id) -> bool:
        return self.cancelled


class FakeDistribution:
    """Finishes after ``looks`` looks (never, if None); each look takes :data:`STEP` fake seconds."""

    def __init__(self, clock: FakeClock, looks: int | None = None, *, drains: bool = False, quiet: bool = True):
        self.clock, self.looks, self.drains, self.quiet = clock, looks, drains, quiet
        self.steps = 0
        self.down_since: float | None = None
        self.held: list[bool] = []
        self.drain_calls = 0
        self.ended: bool | None = None
        self.started = True
        self.on_step = lambda step: None

    def start(self) -> bool:
        return self.started

    def step(self) -> None:
        self.clock.advance(STEP)
        self.steps += 1
        self.on_step(self.steps)

    def finished(self) -> bool:
        return self.looks is not None and self.steps >= self.looks

    def outage_since(self) -> float | None:
        return self.down_since

    def watch(self) -> None:
        pass

    def hold_back(self, paused: bool) -> None:
        if not self.held or self.held[-1] != paused:
            self.held.append(paused)

    def drain(self) -> None:
        self.drain_calls += 1

    def drained(self) -> bool:
        return self.drains and self.drain_calls > 0

    def outlast(self):
        return contextlib.nullcontext()

    def end(self, complete: bool) -> bool:
        self.ended = complete
        return self.quiet

    def tally(self) -> PassTally:
        return PassTally(attempts=self.steps)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(clock):
    store = FakeStore()
    store.clock = clock
    return store


def supervisor(store, clock, hold: Hold | None = None, **settings) -> PassSupervisor:
    settings = RunSettings(url="http://127.0.0.1:9/c/{id}", **settings)
    return PassSupervisor(
        store, "r", settings, stop=StopRequest(), holder=Holder.this_process(), hold=hold, clock=clock
    )


def test_a_pass_that_finishes_is_clean_and_renews_its_lease_once_a_second(store, clock):
    distribution = FakeDistribution(clock, looks=40)  # 10 fake seconds
    sup = supervisor(store, clock)
    tally = sup.run(distribution)
    assert tally.attempts == 40 and distribution.ended is True
    assert (sup.clean, sup.interrupted, sup.gave_up) == (True, False, None)
    assert distribution.drain_calls == 0
    assert 9 <= len(store.renewals) <= 10
    gaps = [b[0] - a[0] for a, b in zip(store.renewals, store.renewals[1:], strict=False)]
    assert all(gap >= 1.0 for gap in gaps), gaps


def test_an_outage_longer_than_max_pause_gives_up_drains_and_notes_the_pause(store, clock):
    distribution = FakeDistribution(clock, drains=False, quiet=False)
    distribution.down_since = clock.time()
    sup = supervisor(store, clock, max_pause=3.0, timeout=2.0)
    sup.run(distribution)
    assert "stayed down" in sup.gave_up and not sup.interrupted and not sup.clean
    assert distribution.drain_calls == 1 and distribution.ended is False
    assert store.pauses == [(ENDPOINT_DOWN, True)]
    # paused past 3 s, then drained until --timeout + DRAIN_GRACE had passed
    assert 3.0 + 2.0 + DRAIN_GRACE <= distribution.steps * STEP <= 3.0 + 2.0 + DRAIN_GRACE + 3 * STEP


def test_an_outage_that_ends_in_time_is_only_noted(store, clock):
    distribution = FakeDistribution(clock, looks=20)
    distribution.down_since = clock.time()
    distribution.on_step = lambda step: setattr(distribution, "down_since", None if step > 4 else clock.time())
    sup = supervisor(store, clock, max_pause=3.0)
    sup.run(distribution)
    assert sup.gave_up is None and sup.clean
    assert store.pauses == [(ENDPOINT_DOWN, True), (ENDPOINT_DOWN, False)]


def test_ctrl_c_drains_until_the_senders_leave_and_says_interrupted(store, clock):
    distribution = FakeDistribution(clock, drains=True)
    sup = supervisor(store, clock)
    distribution.on_step = lambda step: setattr(sup.stop, "count", 1 if step >= 3 else 0)
    sup.run(distribution)
    assert sup.interrupted and sup.gave_up is None and sup.clean  # the senders left: nothing in progress
    assert distribution.drain_calls == 1 and distribution.steps == 3


def test_a_drain_that_never_ends_is_cut_at_timeout_plus_grace_and_a_second_ctrl_c_at_once(store, clock):
    slow = FakeDistribution(clock, quiet=False)
    sup = supervisor(store, clock, timeout=4.0)
    slow.on_step = lambda step: setattr(sup.stop, "count", 1)
    sup.run(slow)
    assert sup.interrupted and not sup.clean
    assert 4.0 + DRAIN_GRACE < slow.steps * STEP <= 4.0 + DRAIN_GRACE + 2 * STEP

    twice = FakeDistribution(clock, quiet=False)
    sup = supervisor(store, clock, timeout=4.0)
    twice.on_step = lambda step: setattr(sup.stop, "count", 2)
    sup.run(twice)
    assert sup.interrupted and twice.steps == 1 and twice.drain_calls == 1


def test_an_operators_pause_holds_the_senders_back_and_is_noted(store, clock):
    distribution = FakeDistribution(clock, looks=30)
    distribution.on_step = lambda step: setattr(store, "paused", 5 <= step < 15)
    sup = supervisor(store, clock)
    sup.run(distribution)
    assert distribution.held == [False, True, False]
    assert store.pauses == [(OPERATOR, True), (OPERATOR, False)]
    assert sup.clean


def test_an_operators_cancel_holds_the_senders_back_then_drains_and_ends_the_pass(store, clock):
    distribution = FakeDistribution(clock, drains=True)
    distribution.on_step = lambda step: setattr(store, "cancelled", step >= 3)
    sup = supervisor(store, clock)
    sup.run(distribution)
    assert sup.gave_up == CANCELLED and not sup.interrupted
    assert distribution.held[-1] is True and distribution.drain_calls == 1


def test_the_first_reason_to_give_up_is_told_and_the_senders_drain_once(store, clock):
    distribution = FakeDistribution(clock, drains=True)
    sup = supervisor(store, clock)

    def two_reasons(step):
        if step == 2:
            sup.give_up("no live node can send")
            sup.give_up("another reason")

    distribution.on_step = two_reasons
    sup.run(distribution)
    assert sup.gave_up == "no live node can send" and not sup.interrupted
    assert distribution.drain_calls == 1


def test_an_earlier_pass_still_holding_rows_keeps_a_stopped_pass_from_being_clean(store, clock):
    hold = Hold(until=clock.time() + 60, frontier=(0.0, 10))
    distribution = FakeDistribution(clock, drains=True)
    sup = supervisor(store, clock, hold=hold)
    distribution.on_step = lambda step: setattr(sup.stop, "count", 1)
    sup.run(distribution)
    assert sup.interrupted and not sup.clean  # its rows may still be in progress at the API

    finished = FakeDistribution(clock, looks=2)
    sup = supervisor(store, clock, hold=hold)
    sup.run(finished)
    assert sup.clean  # every row is final: nothing of this run can be in progress


def test_a_pass_stopped_before_it_began_is_interrupted_and_ended(store, clock):
    distribution = FakeDistribution(clock, looks=5, quiet=False)  # e.g. nodes waiting out an earlier pass
    distribution.started = False
    sup = supervisor(store, clock)
    sup.run(distribution)
    assert sup.interrupted and not sup.clean and distribution.ended is False and distribution.steps == 0


def test_a_failing_look_still_ends_the_distribution(store, clock):
    distribution = FakeDistribution(clock)

    def boom(step):
        raise RuntimeError("the ledger broke")

    distribution.on_step = boom
    sup = supervisor(store, clock)
    with pytest.raises(RuntimeError):
        sup.run(distribution)
    assert distribution.ended is False and not sup.clean
