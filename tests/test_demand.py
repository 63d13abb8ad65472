"""A worker's asking for rows (Demand) and its admission of transfers (Gate), without processes or network."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque

import pytest

from engine.delivery.breaker import BreakerSettings, CircuitBreaker
from engine.delivery.gate import GO, PROBE, WAIT, Gate
from engine.delivery.policy import Outcome, RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.delivery.retries import Retries
from engine.delivery.transport import Finished
from engine.local.demand import ASK_EVERY, RESERVE_CHUNKS, RESERVE_MIN, Demand
from engine.wire import Attempt, Dispatch

CONTEXT = multiprocessing.get_context("spawn")


def busy_demand(rate: float, round_trip: float, window: int = 100, chunk: int = 100) -> Demand:
    demand = Demand(window, chunk, now=0.0)
    demand.rate, demand.round_trip = rate, round_trip
    return demand


def test_a_fresh_worker_asks_for_its_window_and_then_waits_for_the_answer():
    demand = Demand(window=100, chunk_size=100)
    assert demand.want(queued=0, in_flight=0) == 100
    demand.sent(100, now=1.0)
    assert demand.want(queued=0, in_flight=0) == 0  # one request for rows at a time
    demand.answered(100, now=1.05)
    assert demand.want(queued=0, in_flight=100) == 0  # a full window with nothing queued needs no reserve yet
    assert demand.round_trip == pytest.approx(0.8 * 0.01 + 0.2 * 0.05)


def test_the_reserve_covers_three_round_trips_of_finishing_and_an_ask_adds_what_finishes_meanwhile():
    # 10,000 rows/s finishing, 10 ms to get rows: 300 rows would finish while waiting for three answers,
    # and an ask brings what finishes in ASK_EVERY on top; together capped at five chunks
    assert busy_demand(10_000, 0.01).want(queued=0, in_flight=100) == 300 + int(10_000 * ASK_EVERY)
    assert busy_demand(1_000_000, 0.01).want(queued=0, in_flight=100) == RESERVE_CHUNKS * 100
    # against a slow API the reserve would be a handful of rows: none, so none idle at the pass's end
    assert busy_demand(100, 0.01).want(queued=0, in_flight=100) == 0
    assert 100 * 0.01 * 3 < RESERVE_MIN


def test_a_worker_asks_again_only_once_it_is_down_to_its_reserve():
    demand = busy_demand(10_000, 0.01)  # reserve 300, and 200 rows finish in ASK_EVERY
    assert demand.want(queued=301, in_flight=100) == 0
    assert demand.want(queued=300, in_flight=100) == 200


def test_once_the_coordinator_has_no_rows_left_to_spare_only_free_slots_are_asked_for():
    demand = busy_demand(10_000, 0.01)
    demand.sent(400, now=1.0)
    demand.answered(0, now=1.01)
    assert demand.want(queued=0, in_flight=60) == 40
    assert demand.free(queued=0, in_flight=60) == 40
    assert demand.want(queued=0, in_flight=0, draining=True) == 0


def test_the_finishing_rate_is_measured_over_quarter_second_windows():
    demand = Demand(10, 10, now=0.0)
    demand.count_finished(50, now=0.1)
    assert demand.rate == 0.0
    demand.count_finished(50, now=0.5)
    assert demand.rate == 0.5 * 100 / 0.5


def gate(rate: float | None = None, threshold: int = 3) -> Gate:
    breaker = CircuitBreaker.create(CONTEXT, BreakerSettings(threshold=threshold, first_interval=0.05))
    return Gate(breaker, Pacer.create(CONTEXT, rate, workers=1, concurrency=10))


def rows(*rids: int) -> deque:
    return deque(Dispatch(rid, f"c{rid}", "{}", f"k{rid}", 0) for rid in rids)


def test_the_outage_probe_is_a_row_that_has_not_failed_yet():
    admit = gate()
    admit.settle(1, Outcome(http_status=200))  # the endpoint was up once
    for rid in (1, 2, 3):
        admit.settle(rid, Outcome(http_status=503))
    assert admit.paused() and admit.permit() == WAIT
    time.sleep(0.06)
    assert admit.permit() == PROBE
    ready = rows(1, 2, 3, 4, 5)
    assert admit.take_probe(ready).rid == 4 and [row.rid for row in ready] == [1, 2, 3, 5]
    admit.settle(4, Outcome(http_status=200))  # only the probe's answer resumes
    assert not admit.paused() and admit.permit() == GO


def test_one_row_failing_again_and_again_is_not_an_outage():
    admit = gate()
    admit.settle(7, Outcome(http_status=200))
    for _ in range(10):
        admit.settle(9, Outcome(http_status=503))
    assert not admit.paused()


def test_a_slot_that_got_a_429_rests_until_its_rows_retry():
    admit = gate()
    assert admit.window() == 10
    admit.rest(time.monotonic() + 0.05)
    assert admit.window() == 9 and 0 < admit.rest_ends_in() <= 0.05
    time.sleep(0.06)
    assert admit.window() == 10 and admit.rest_ends_in() == float("inf")


def test_a_rate_makes_the_gate_wait_and_say_how_long():
    admit = gate(rate=10.0)
    started = [admit.permit() for _ in range(5)]
    assert started[0] == GO and WAIT in started
    assert 0 < admit.pace_ends_in() <= 1.0


def test_without_keys_a_gateway_outage_opens_the_breaker_but_resends_none_of_its_rows():
    """502/504 are "down" for the breaker, and without keys they are also unknown: the pause and its
    probe must take only rows never sent, never one the gateway may have passed on."""
    admit = gate()
    retries = Retries(RetryPolicy(idempotent=False), admit, ())
    admit.settle(100, Outcome(http_status=200))  # the endpoint was up once
    states = []
    for row in rows(1, 2, 3):
        status = 502 if row.rid % 2 else 504
        record = retries.settle(Finished(row, Outcome(http_status=status), time.time(), 5.0, None, None))
        states.append(Attempt(*record).outcome)
    assert states == ["unknown"] * 3 and not retries.waiting  # none waits to be sent again
    assert admit.paused()
    time.sleep(0.06)
    assert admit.permit() == PROBE
    ready = rows(4, 5)
    retries.release_due(ready)
    assert admit.take_probe(ready).rid == 4  # the probe is a row never sent
