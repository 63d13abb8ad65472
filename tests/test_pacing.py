"""The pacer: its 429 rules as pure steps, then one contract (rate, window, 429s) on both carriers.

The ``pacers`` fixture is parametrised by carrier (the pool's shared memory, the nodes' Redis,
where taking a slot is the Lua twin of the Python step): every contract test runs on both.
"""

from __future__ import annotations

import multiprocessing
import secrets
import time
from dataclasses import replace

import pytest

from engine.delivery.breaker import BreakerSettings, CircuitBreaker
from engine.delivery.gate import REPORT_EVERY, Gate
from engine.delivery.policy import Outcome
from engine.delivery.ratelimit import Pacer, PacerSettings, PaceState

CONTEXT = multiprocessing.get_context("spawn")
POOL = PacerSettings(None, workers=2, concurrency=50)


class Epochs:
    """Epochs of one second each, fed to the pure rules."""

    def __init__(self, rules: PacerSettings = POOL):
        self.rules, self.now = rules, 0.0
        self.state = rules.initial(self.now)

    def end(self, answers: int, throttled: int) -> PaceState:
        self.now += 1.0
        self.state = self.rules.count(self.state, answers, throttled, self.now)
        return self.state

    def limit(self) -> int:
        return int(self.state.window)

    def rest(self) -> bool:
        return self.rules.rest_on_429(self.state)


# -- the 429 rules, pure ---------------------------------------------------------------------------------


def test_many_429s_shrink_the_window_and_it_recovers():
    epochs = Epochs()
    epochs.end(100, 60)  # 60 % throttled: halve
    assert epochs.limit() == 50 and POOL.window_of(epochs.state) == 25
    epochs.end(100, 0)  # a clean epoch: +5 % of 100
    assert epochs.limit() == 55


def test_answers_within_an_epoch_are_only_counted():
    state = POOL.count(POOL.initial(0.0), 100, 90, 0.5)
    assert state.window == 100 and state.answers == 100 and state.throttled == 90


def test_scattered_429s_change_nothing():
    epochs = Epochs()
    epochs.end(1000, 30)
    assert epochs.limit() == 100


def test_random_429s_are_learnt_as_noise_and_do_not_shrink_the_window():
    epochs = Epochs()
    assert epochs.rest()  # until shown otherwise, a 429 is about load
    epochs.end(1000, 300)  # 30 % throttled: cut to 70
    assert epochs.limit() == 70 and epochs.rest()
    epochs.end(700, 210)  # 30 % fewer successes, and still 30 % throttled: the cut is undone, noise suspected
    assert epochs.limit() == 100 and epochs.rest()
    epochs.end(1000, 300)  # cut again: one epoch can mislead
    assert epochs.limit() == 70
    epochs.end(700, 210)  # the same again: 30 % is learnt as the floor
    assert epochs.limit() == 100 and not epochs.rest()
    for _ in range(5):
        epochs.end(1000, 320)  # within 1.25 x the floor: nothing is cut
        assert epochs.limit() == 100 and not epochs.rest()


def test_429s_that_fall_with_the_load_keep_the_window_cut():
    epochs = Epochs()
    epochs.end(1000, 600)  # halve
    epochs.end(500, 100)  # the share fell with the window: it was load, cut again by 20 %
    assert epochs.limit() == 40 and epochs.rest()
    epochs.end(400, 0)  # a clean epoch grows it; no floor was learnt, so the next 429 is load again
    assert epochs.limit() == 45 and epochs.rest()


def test_a_slow_epoch_after_a_cut_at_capacity_does_not_undo_the_cut():
    epochs = Epochs()
    epochs.end(1000, 800)  # a server that takes 20 of 100: halve
    assert epochs.limit() == 50
    # capacity predicts 60 % now, noise 80 %; a starved machine also answered fewer (144 successes, not 200)
    epochs.end(400, 256)
    assert epochs.limit() == 25 and epochs.rest()  # 64 %: the server's capacity, cut again, not learnt as noise


def test_one_misleading_epoch_only_suspects_noise_and_a_cut_that_holds_clears_it():
    epochs = Epochs()
    epochs.end(1000, 800)  # halve
    epochs.end(400, 300)  # a starved machine: fewer successes, and 75 % still throttled
    assert epochs.limit() == 100 and epochs.rest()  # undone, but no floor: a 429 still rests its slot
    epochs.end(1000, 800)  # halve again
    epochs.end(1000, 600)  # as many successes at half the window: the server's capacity
    assert epochs.limit() == 25 and epochs.rest() and epochs.state.floor == 0 and not epochs.state.suspected


def test_the_window_grows_back_at_the_noise_floor_and_load_above_it_is_still_cut():
    epochs = Epochs()
    for _ in range(2):
        epochs.end(1000, 300)
        epochs.end(700, 210)  # twice: floor learnt, 30 %
    epochs.end(1000, 600)  # far above the floor: cut by 30 % (the share above the floor)
    assert epochs.limit() == 70 and epochs.rest()
    epochs.end(1000, 300)  # as many successes, back at the floor: not undone, grown by 5 %
    assert epochs.limit() == 75 and not epochs.rest()


def test_gcra_takes_one_slot_per_interval_after_a_small_burst():
    rules = PacerSettings(10.0, workers=1, concurrency=10)
    wait, state = rules.take_slot(rules.initial(0.0), 5.0)
    assert wait == 0 and state.tat == 5.1
    wait, after = rules.take_slot(state, 5.0)
    assert wait == 0 and after.tat == pytest.approx(5.2)  # within the interval: admitted
    wait, same = rules.take_slot(after, 5.0)
    assert same == after and wait == pytest.approx(0.2 - 0.02)


# -- one contract, two carriers -------------------------------------------------------------------------


class Carried:
    """A pacer on one carrier, and a way to end its epoch now (as if a second had passed)."""

    def __init__(self, pacer, end_epoch):
        self.pacer, self.end_epoch = pacer, end_epoch

    def epoch(self, answers: int, throttled: int) -> None:
        self.end_epoch()
        self.pacer.report(answers, throttled)


@pytest.fixture(params=["shared", "redis"])
def pacers(request):
    """``pacers(rate, concurrency)``: one sender's pacer, on each carrier in turn."""
    if request.param == "shared":

        def shared(rate: float | None, concurrency: int) -> Carried:
            pacer = Pacer.create(CONTEXT, rate, workers=1, concurrency=concurrency)

            def end_epoch() -> None:  # the epoch began a second earlier, written as a writer would
                pacer.state.step(lambda state, now: (None, replace(state, epoch_start=state.epoch_start - 1.0)))

            return Carried(pacer, end_epoch)

        return shared
    import redis

    from engine.cluster.link import RedisLink
    from engine.cluster.pacing import NodePacer

    client = redis.Redis.from_url(request.getfixturevalue("broker"))

    def node(rate: float | None, concurrency: int) -> Carried:
        pacer = NodePacer(RedisLink(client, 5.0), secrets.token_hex(4), rate, concurrency)

        def end_epoch() -> None:
            state, _ = pacer.state.read()
            client.hset(pacer.key, "epoch_start", state.epoch_start - 1.0)

        return Carried(pacer, end_epoch)

    return node


def admitted_in(pacer, seconds: float) -> int:
    admitted, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pacer.acquire() == 0:
            admitted += 1
    return admitted


def test_rate_admits_about_rate_per_second(pacers):
    carried = pacers(100, concurrency=10)
    cpu_before = time.process_time()
    admitted = admitted_in(carried.pacer, 0.5)
    ran = time.process_time() - cpu_before  # this loop spins: the time it ran, less what other processes took
    assert admitted <= 55  # never above the rate
    assert admitted >= min(30, 60 * ran) * 0.8  # below the rate only while descheduled (or waiting on Redis)


def test_no_rate_means_no_wait(pacers):
    pacer = pacers(None, concurrency=10).pacer
    assert all(pacer.acquire() == 0 for _ in range(1_000))


def test_a_wait_says_how_long(pacers):
    pacer = pacers(10, concurrency=10).pacer
    waits = [pacer.acquire() for _ in range(3)]
    assert waits[0] == 0 and 0 < max(waits) <= 0.2


def test_many_429s_cut_window_and_rate_for_every_sender_and_they_recover(pacers):
    carried = pacers(100, concurrency=50)
    assert carried.pacer.window() == 50
    carried.epoch(100, 60)  # 60 % throttled: halve the window and the rate
    assert carried.pacer.window() == 25 and carried.pacer.rest_on_429()
    assert 12 <= admitted_in(carried.pacer, 0.5) <= 30
    carried.epoch(100, 0)  # a clean epoch: +5 % of 50
    assert carried.pacer.window() == 27


def test_a_gate_reports_to_its_pacer_on_its_own(pacers):
    """A sender whose loop never calls ``report`` (a node's chunk sender) still slows down on 429s."""
    carried = pacers(None, concurrency=20)
    gate = Gate(CircuitBreaker.create(CONTEXT, BreakerSettings()), carried.pacer)
    for rid in range(10):
        gate.settle(rid, Outcome(http_status=429 if rid < 6 else 200))
    carried.end_epoch()
    time.sleep(REPORT_EVERY)
    gate.settle(10, Outcome(http_status=200))
    assert gate.window() == 10  # 6 of 11 throttled: halved
