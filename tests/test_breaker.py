"""The circuit breaker: its rules as a pure state machine, then one contract on both carriers.

The ``breakers`` fixture is parametrised by carrier (the pool's shared memory, the nodes' Redis),
as ``tests/test_ledger.py`` is by store: every contract test runs on both.
"""

from __future__ import annotations

import multiprocessing
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.delivery.breaker import (
    Answer,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Mode,
    Permit,
    is_down,
)

CONTEXT = multiprocessing.get_context("spawn")
RULES = BreakerSettings(threshold=3, first_interval=0.05, max_interval=0.2, probe_timeout=1.0)


def feed(state: BreakerState, *answers: Answer, now: float = 0.0, rules: BreakerSettings = RULES) -> BreakerState:
    for answer in answers:
        state = rules.record(state, answer, now)
    return state


# -- the rules, pure -------------------------------------------------------------------------------------


def test_a_streak_of_first_down_answers_opens_it_after_the_endpoint_was_seen_up():
    state = feed(RULES.initial(), Answer.UP, Answer.DOWN, Answer.DOWN, now=10.0)
    assert state.mode is Mode.CLOSED and state.streak == 2
    state = feed(state, Answer.DOWN, now=11.0)
    assert state.mode is Mode.OPEN and state.opened_at == 11.0 and state.probe_at == 11.0 + 0.05


def test_an_endpoint_never_seen_up_is_a_mistake_not_an_outage():
    state = feed(RULES.initial(), *[Answer.DOWN] * 10)
    assert state.mode is Mode.CLOSED and state.streak == 10


def test_rows_down_again_add_nothing_and_a_success_breaks_the_streak():
    state = feed(RULES.initial(), Answer.UP, Answer.DOWN, *[Answer.DOWN_AGAIN] * 10)
    assert state.streak == 1
    assert feed(state, Answer.UP).streak == 0
    assert feed(RULES.initial(), Answer.UP, Answer.DOWN, rules=BreakerSettings(threshold=0)).mode is Mode.CLOSED


def test_one_probe_at_growing_intervals_and_only_its_answer_closes():
    state = feed(RULES.initial(), Answer.UP, *[Answer.DOWN] * 3, now=0.0)
    assert RULES.allow(state, 0.04) == (Permit.WAIT, state)
    permit, probing = RULES.allow(state, 0.05)
    assert permit is Permit.PROBE and probing.mode is Mode.PROBING
    assert RULES.allow(probing, 0.06)[0] is Permit.WAIT  # one probe at a time
    assert feed(probing, Answer.UP) == probing  # a late success from before the pause proves nothing
    again = feed(probing, Answer.PROBE_DOWN, now=1.0)
    assert again.mode is Mode.OPEN and again.interval == 0.1 and again.probe_at == 1.1
    capped = feed(again, Answer.PROBE_DOWN, Answer.PROBE_DOWN, now=2.0)
    assert capped.interval == RULES.max_interval
    closed = feed(RULES.allow(again, 1.1)[1], Answer.PROBE_UP)
    assert closed.mode is Mode.CLOSED and closed.streak == 0 and closed.interval == RULES.first_interval


def test_a_probe_whose_answer_is_overdue_is_claimed_again():
    state = feed(RULES.initial(), Answer.UP, *[Answer.DOWN] * 3)
    probing = RULES.allow(state, 1.0)[1]
    assert RULES.allow(probing, 1.0 + RULES.probe_timeout)[0] is Permit.WAIT
    assert RULES.allow(probing, 1.1 + RULES.probe_timeout)[0] is Permit.PROBE


def test_a_probe_never_sent_hands_the_probe_on_at_once():
    """Its sender's fence closed just before libcurl sent it: nothing was learnt, and nobody waits out the
    probe timeout for it."""
    state = feed(RULES.initial(), Answer.UP, *[Answer.DOWN] * 3)
    probing = RULES.allow(state, 1.0)[1]
    unsent = feed(probing, Answer.PROBE_UNSENT, now=1.2)
    assert unsent.mode is Mode.OPEN and unsent.interval == probing.interval
    assert RULES.allow(unsent, 1.2)[0] is Permit.PROBE
    assert feed(state, Answer.PROBE_UNSENT, now=1.2) == state  # no probe out: nothing to hand on


def test_an_operators_hold_stops_every_start():
    held = BreakerState(held=True)
    assert RULES.allow(held, 0.0) == (Permit.WAIT, held)


def test_the_state_survives_its_encoding():
    state = BreakerState(Mode.PROBING, 4, 1.5, 0.2, 1.0, 1.25, True, True)
    assert BreakerState.decode(state.encode()) == state


def test_what_counts_as_down():
    assert is_down(503, None, True) and is_down(502, None, True) and is_down(None, 7, False)
    assert not is_down(500, None, True) and not is_down(429, None, True) and not is_down(None, 28, True)
    assert Answer.of(down=True, probe=False, counted=False) is Answer.DOWN_AGAIN
    assert Answer.of(down=False, probe=True, counted=True) is Answer.PROBE_UP


# -- one contract, two carriers -------------------------------------------------------------------------


@pytest.fixture(params=["shared", "redis"])
def breakers(request):
    """``breakers(settings, views)``: ``views`` handles on one breaker, as ``views`` worker processes
    (or nodes) each hold one."""
    if request.param == "shared":

        def shared(settings: BreakerSettings, views: int = 1) -> list:
            first = CircuitBreaker.create(CONTEXT, settings)
            return [first] + [CircuitBreaker(first.state, settings) for _ in range(views - 1)]

        return shared
    import redis

    from engine.cluster.link import RedisLink
    from engine.cluster.outage import SharedBreaker

    client = redis.Redis.from_url(request.getfixturevalue("broker"))
    run_id = secrets.token_hex(4)
    return lambda settings, views=1: [SharedBreaker(RedisLink(client, 5.0), run_id, 1, settings) for _ in range(views)]


#: Intervals long enough that a busy machine (a Redis round trip delayed, a process descheduled) does not
#: outlast a wait the test expects to see (margins of 0.5 s and 0.3 s below).
SLOW_RULES = BreakerSettings(threshold=3, first_interval=0.5, max_interval=2.0, probe_timeout=5.0)


def test_breaker_opens_after_a_streak_and_one_probe_closes_it(breakers):
    (breaker,) = breakers(SLOW_RULES)
    assert breaker.allow() is Permit.GO and not breaker.is_open()
    for answer in (Answer.UP, Answer.DOWN, Answer.DOWN):
        breaker.record(answer)
    time.sleep(0.11)  # Redis counts a success at most every 0.1 s: make sure this one is
    breaker.record(Answer.UP)  # an answer breaks the streak
    for _ in range(3):
        breaker.record(Answer.DOWN)
    assert breaker.is_open() and breaker.allow() is Permit.WAIT  # a probe in 0.5 s
    time.sleep(0.55)
    assert breaker.allow() is Permit.PROBE
    breaker.record(Answer.PROBE_DOWN)  # still down: wait twice as long, 1 s
    time.sleep(0.7)
    assert breaker.allow() is Permit.WAIT  # past 0.5 s: the interval doubled
    time.sleep(0.35)
    assert breaker.allow() is Permit.PROBE
    breaker.record(Answer.PROBE_UP)
    assert not breaker.is_open() and breaker.allow() is Permit.GO


def test_rows_failing_again_and_again_are_not_an_outage(breakers):
    (breaker,) = breakers(RULES)
    breaker.record(Answer.UP)
    breaker.record(Answer.DOWN)
    for _ in range(10):
        breaker.record(Answer.DOWN_AGAIN)
    assert not breaker.is_open() and breaker.allow() is Permit.GO


def test_of_many_workers_exactly_one_takes_the_probe(breakers):
    views = breakers(RULES, views=4)
    views[0].record(Answer.UP)
    for view in views[1:]:
        view.record(Answer.DOWN)
    assert all(view.is_open() for view in views)
    time.sleep(0.06)
    permits = [view.allow() for view in views for _ in range(3)]
    assert permits.count(Permit.PROBE) == 1 and set(permits) == {Permit.PROBE, Permit.WAIT}


def test_the_outage_clock_is_wall_time(breakers):
    (breaker,) = breakers(RULES)
    for answer in (Answer.UP, Answer.DOWN, Answer.DOWN, Answer.DOWN):
        breaker.record(answer)
    opened = breaker.opened_at() if isinstance(breaker, CircuitBreaker) else breaker.outage_since()
    assert abs(opened - time.time()) < 1.0


def test_workers_asking_at_once_still_take_one_probe(breakers):
    """The transaction (Redis) or the lock (shared memory) is what keeps a second probe out."""
    views = breakers(RULES, views=8)
    for answer in (Answer.UP, Answer.DOWN, Answer.DOWN, Answer.DOWN):
        views[0].record(answer)
    time.sleep(0.06)
    start = threading.Barrier(len(views))

    def ask(view) -> list[Permit]:
        start.wait()
        return [view.allow() for _ in range(20)]

    with ThreadPoolExecutor(len(views)) as pool:
        permits = [permit for answers in pool.map(ask, views) for permit in answers]
    assert permits.count(Permit.PROBE) == 1


# -- a process of the pool that dies holding the lock ------------------------------------------------


def _hold_the_lock_mid_write(breaker: CircuitBreaker, holding) -> None:
    """A worker caught inside a write: the lock taken, the version made odd, then frozen."""
    breaker.state.lock.acquire()
    breaker.state.view[0] += 1
    holding.set()
    time.sleep(60)


def test_a_worker_killed_inside_a_write_leaves_the_lock_to_the_pool_not_to_wait_on_forever():
    fork = multiprocessing.get_context("fork")
    breaker = CircuitBreaker.create(fork, RULES)
    holding = fork.Event()
    frozen = fork.Process(target=_hold_the_lock_mid_write, args=(breaker, holding))
    frozen.start()
    assert holding.wait(10)
    frozen.kill()  # what the pool does to a worker that stopped making progress
    frozen.join(10)
    breaker.state.recover([frozen.pid])  # the pool, once it saw the worker die
    stepped = threading.Thread(target=breaker.record, args=(Answer.DOWN,), daemon=True)
    stepped.start()
    stepped.join(5)
    assert not stepped.is_alive(), "a step still waits for the dead worker's lock"
    assert breaker.state.view[0] % 2 == 0 and breaker.state.read().streak == 1
