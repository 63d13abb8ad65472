"""When a run may start: HH:MM is the next such time; an ISO time already past is refused."""

import datetime as dt

import pytest

from engine.errors import UsageError
from engine.starttime import start_time

EVENING = dt.datetime(2026, 11, 24, 18, 47).timestamp()


def test_a_clock_time_already_past_today_means_tomorrow():
    assert start_time("00:01", None, now=EVENING) == dt.datetime(2026, 11, 25, 0, 1).timestamp()


def test_a_clock_time_later_today_means_today():
    assert start_time("19:30", None, now=EVENING) == dt.datetime(2026, 11, 24, 19, 30).timestamp()


def test_an_iso_time_in_the_past_is_refused():
    with pytest.raises(UsageError, match="has passed"):
        start_time("2026-11-24T09:00", None, now=EVENING)


def test_delay_and_nothing():
    assert start_time(None, 90, now=EVENING) == EVENING + 90
    assert start_time(None, None, now=EVENING) is None
    with pytest.raises(UsageError):
        start_time("19:00", 5, now=EVENING)


def test_the_cli_refuses_a_past_time_in_one_line(customers, api, db, run):
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--not-before", "2020-01-01T00:00")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "has passed" in result.output
    assert api.stats()["requests"] == 0
