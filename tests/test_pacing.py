"""The pool-wide pacer and circuit breaker, driven directly (shared memory, no processes)."""

import multiprocessing
import time

from engine.delivery.breaker import BreakerSettings, CircuitBreaker, is_down
from engine.delivery.ratelimit import Pacer

CONTEXT = multiprocessing.get_context("spawn")


def test_rate_admits_about_rate_per_second():
    pacer = Pacer.create(CONTEXT, 100, workers=2, concurrency=10)
    admitted, deadline, cpu_before = 0, time.monotonic() + 0.5, time.process_time()
    while time.monotonic() < deadline:
        if pacer.acquire() == 0:
            admitted += 1
    ran = time.process_time() - cpu_before  # this loop spins: the time it ran, less what other processes took
    assert admitted <= 55  # never above the rate
    assert admitted >= 60 * ran  # 30 in a half second that was all ours: below the rate only while descheduled


def test_no_rate_means_no_wait():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=10)
    assert all(pacer.acquire() == 0 for _ in range(10_000))


def test_many_429s_shrink_the_window_and_it_recovers():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=50)
    assert pacer.window() == 50
    pacer.shared[3] -= 1.0  # the epoch is over
    pacer.report(100, 60)  # 60 % throttled: halve
    assert pacer.in_flight_limit() == 50 and pacer.window() == 25
    pacer.shared[3] -= 1.0
    pacer.report(100, 0)  # a clean epoch: +5 % of 100
    assert pacer.in_flight_limit() == 55


def test_scattered_429s_change_nothing():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=50)
    pacer.shared[3] -= 1.0
    pacer.report(1000, 30)
    assert pacer.in_flight_limit() == 100


def end_epoch(pacer: Pacer, answers: int, throttled: int) -> None:
    """One epoch of ``answers`` (``throttled`` of them 429) that took a second."""
    pacer.shared[3] -= 1.0
    pacer.report(answers, throttled)


def test_random_429s_are_learnt_as_noise_and_do_not_shrink_the_window():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=50)
    assert pacer.rest_on_429()  # until shown otherwise, a 429 is about load
    end_epoch(pacer, 1000, 300)  # 30 % throttled: cut to 70
    assert pacer.in_flight_limit() == 70 and pacer.rest_on_429()
    end_epoch(pacer, 700, 210)  # 30 % fewer successes, and still 30 % throttled: the cut is undone
    assert pacer.in_flight_limit() == 100 and not pacer.rest_on_429()
    for _ in range(5):
        end_epoch(pacer, 1000, 320)  # within 1.25 x the floor: nothing is cut
        assert pacer.in_flight_limit() == 100 and not pacer.rest_on_429()


def test_429s_that_fall_with_the_load_keep_the_window_cut():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=50)
    end_epoch(pacer, 1000, 600)  # halve
    end_epoch(pacer, 500, 100)  # the share fell with the window: it was load, cut again by 20 %
    assert pacer.in_flight_limit() == 40 and pacer.rest_on_429()
    end_epoch(pacer, 400, 0)  # a clean epoch grows it; no floor was learnt, so the next 429 is load again
    assert pacer.in_flight_limit() == 45 and pacer.rest_on_429()


def test_the_window_grows_back_at_the_noise_floor_and_load_above_it_is_still_cut():
    pacer = Pacer.create(CONTEXT, None, workers=2, concurrency=50)
    end_epoch(pacer, 1000, 300)
    end_epoch(pacer, 700, 210)  # floor learnt: 30 %
    end_epoch(pacer, 1000, 600)  # far above the floor: cut by 30 % (the share above the floor)
    assert pacer.in_flight_limit() == 70 and pacer.rest_on_429()
    end_epoch(pacer, 1000, 300)  # as many successes, back at the floor: not undone, grown by 5 %
    assert pacer.in_flight_limit() == 75 and not pacer.rest_on_429()


def test_breaker_opens_after_a_streak_and_one_probe_closes_it():
    breaker = CircuitBreaker.create(CONTEXT, BreakerSettings(threshold=3, first_interval=0.05))
    for _ in range(2):
        breaker.record(down=True)
    breaker.record(down=False)  # an answer breaks the streak
    for _ in range(3):
        breaker.record(down=True)
    assert breaker.is_open() and breaker.allow() is False
    time.sleep(0.06)
    assert breaker.allow() == "probe"
    assert breaker.allow() is False  # only one probe at a time
    breaker.record(down=True, probe=True)  # still down: wait twice as long
    assert 0.05 < breaker.wait_time() <= 0.1
    time.sleep(0.11)
    assert breaker.allow() == "probe"
    breaker.record(down=False, probe=True)
    assert not breaker.is_open() and breaker.allow() is True


def test_what_counts_as_down():
    assert is_down(503, None, True) and is_down(502, None, True) and is_down(None, 7, False)
    assert not is_down(500, None, True) and not is_down(429, None, True) and not is_down(None, 28, True)
