"""``--max-failure-rate``: a run whose rows are refused stops early, exit 4, the rest ``pending``."""

import pytest
import test_cluster
from conftest import run_engine, status_counts

from engine.errors import UsageError
from engine.run.killswitch import KillSwitch

nodes = test_cluster.nodes  # the fixture that starts worker nodes


def test_the_switch_trips_only_past_the_sample_and_the_share():
    switch = KillSwitch(max_rate=0.2, min_sample=50)
    assert switch.tripped(refused=49, definitive=49) is None  # too few outcomes to judge
    assert switch.tripped(refused=10, definitive=50) is None  # exactly 20%: not above
    assert "kill switch" in switch.tripped(refused=11, definitive=50)


def test_the_option_reads_off_zero_and_a_share():
    assert KillSwitch.from_option(None, None, 0.5) == KillSwitch(max_rate=0.5, min_sample=50)
    assert KillSwitch.from_option(None, None, None) is None
    assert KillSwitch.from_option("off", None, 0.5) is None
    assert KillSwitch.from_option("0", None, 0.5) is None
    assert KillSwitch.from_option("0.2", 10, None) == KillSwitch(max_rate=0.2, min_sample=10)
    for bad in ("1.5", "half", "-0.1"):
        with pytest.raises(UsageError):
            KillSwitch.from_option(bad, None, 0.5)


def _bill(run, api, path, db, *extra):
    return run(
        "bill", path, "--url", api.charge_url(), "--db", db, "--run-id", "k1", "--workers", 1,
        "--concurrency", 10, "--quiet", *extra,
    )  # fmt: skip


def test_a_run_with_half_its_customers_refused_stops_early(customers, any_db, run):
    from engine.mock.process import MockProcess

    with MockProcess(latency=0.02, refuse_rate=0.5) as api:
        result = _bill(run, api, customers(3000), any_db, "--max-failure-rate", 0.2)
        assert result.exit_code == 4, result.output
        assert "stopped by the kill switch" in result.output
        assert "python -m engine rerun k1" in result.output
        requests = api.stats()["requests"]
        assert requests < 400, requests
        counts = status_counts(any_db, "k1")
        assert counts["pending"] >= 2500 and counts["rejected"] >= 25
        assert set(counts) <= {"succeeded", "rejected", "pending"}

        api.configure(refuse_rate=0.0)
        again = run("rerun", "k1", "--db", any_db, "--quiet")
        assert again.exit_code == 1, again.output  # the rejected rows are final: only an opt-in resends them
        counts = status_counts(any_db, "k1")
        assert "pending" not in counts and counts["succeeded"] == 3000 - counts["rejected"]
        assert api.stats()["customers_charged_more_than_once"] == 0


def test_customers_that_keep_failing_with_503_trip_it_before_their_attempts_run_out(customers, db, run):
    """Half the customers answered 503 every time (the mock's ``--fail-rate``): a row answered "try
    again" a second time weighs as refused, so the switch does not wait for 5 attempts each."""
    from engine.mock.process import MockProcess

    with MockProcess(latency=0.02, fail_rate=0.5) as api:
        result = _bill(run, api, customers(3000), db, "--max-failure-rate", 0.2, "--backoff-base", 0.05)
        assert result.exit_code == 4, result.output
        assert "stopped by the kill switch" in result.output
        requests = api.stats()["requests"]
        assert requests < 600, requests  # within the first few hundred requests
        counts = status_counts(db, "k1")
        assert counts["pending"] >= 2400
        assert api.stats()["customers_charged_more_than_once"] == 0


def test_failed_rows_count_too_and_off_lets_the_run_finish(customers, db, run):
    from engine.mock.process import MockProcess

    with MockProcess(fail_rate=0.5) as api:
        stopped = _bill(run, api, customers(1000), db, "--max-attempts", 1)  # the bill default: 0.5
        assert stopped.exit_code == 4, stopped.output
        assert status_counts(db, "k1")["pending"] > 500

    with MockProcess(refuse_rate=0.5) as api:
        finished = run(
            "bill", customers(300, name="other.csv"), "--url", api.charge_url(), "--db", db, "--run-id", "k2",
            "--max-failure-rate", "off", "--quiet",
        )  # fmt: skip
        assert finished.exit_code == 1, finished.output
        assert "pending" not in status_counts(db, "k2")


def test_nothing_listening_stops_a_bill_once_the_sample_has_failed(customers, db, run):
    """The default of ``bill`` (0.5): a wrong URL fails the sample, not the whole input."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"
    result = run("bill", customers(2000), "--url", url, "--db", db, "--run-id", "k3", "--quiet")
    assert result.exit_code == 4, result.output
    counts = status_counts(db, "k3")
    waiting = counts.get("pending", 0) + counts.get("retrying", 0)
    assert waiting > 1000 and counts.get("failed", 0) + counts.get("retrying", 0) >= 50, counts


def test_the_kill_switch_stops_every_worker_node(customers, postgres_url, broker, nodes):
    from conftest import bill_args

    from engine.mock.process import MockProcess

    nodes(2)
    # 0.2 s an answer: the nodes send a few hundred rows a second, so the stop may take seconds to reach them
    # on a busy machine and still come well before the end (at 0.02 s a loaded run left 620 of 6000 pending)
    with MockProcess(latency=0.2, refuse_rate=0.5) as api:
        path = customers(6000)
        args = bill_args(path, api, postgres_url, "kn", broker=broker)
        result = run_engine(*args, "--chunks", 20, "--max-failure-rate", 0.2, "--quiet", timeout=120)
        assert result.returncode == 4, result.stderr
        assert "stopped by the kill switch" in result.stdout
        counts = status_counts(postgres_url, "kn")
        assert counts["pending"] > 1500, counts  # stopped well before the end, on both nodes
        sent = api.stats()["requests"]
        assert sent < 4500, sent  # the stop reached both nodes well before the end
