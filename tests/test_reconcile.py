"""``reconcile``: unknown rows settled by asking the mock API, then a plain ``rerun`` sends only the rows
it never charged; nobody is charged twice, everyone once."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import copy_ledger, ledger_rows, run_engine, status_counts, write_csv

from engine.ledger import open_store
from engine.ledger.lease import Holder
from engine.mock.process import MockProcess
from engine.states import FAILED, PENDING, SUCCEEDED, UNKNOWN

ROWS = 60


#: The runs' --timeout (s): a 404 settles a row only once its last attempt cannot be in progress.
TIMEOUT = 1


def _bill(api: MockProcess, customers, db: str, *extra) -> None:
    """Bill ROWS customers as run ``u``, one attempt each: the dropped connections are left unsettled."""
    result = run_engine(
        "bill", customers(ROWS), "--url", api.charge_url(), "--db", db, "--run-id", "u",
        "--max-attempts", 1, "--timeout", TIMEOUT, "--quiet", *extra,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    api.configure(p_drop_after=0.0, p_drop_before=0.0)


def _unknown_run(api: MockProcess, customers, db: str) -> None:
    """Bill run ``u`` without keys through ``api``'s dropped connections (some after charging, some before):
    they leave ``unknown`` rows; then wait until none of its attempts can still be in progress at the API."""
    _bill(api, customers, db, "--no-idempotency")
    stats = api.stats()
    assert stats["dropped_after"] >= 3 and stats["dropped_before"] >= 3
    assert status_counts(db, "u")[UNKNOWN] == stats["dropped_after"] + stats["dropped_before"]
    time.sleep(TIMEOUT + 1.2)  # no attempt of the run can still be in progress at the API


def _fresh_unknowns(customers, db: str):
    with MockProcess(p_drop_after=0.15, p_drop_before=0.15, seed=7) as api:
        _unknown_run(api, customers, db)
        yield api


@pytest.fixture
def own_unknowns(customers, any_db):
    """The run ``u`` with ``unknown`` rows, billed for this test alone; the mock API, still running and no
    longer dropping (a test that charges through it changes what later lookups find)."""
    yield from _fresh_unknowns(customers, any_db)


@pytest.fixture(scope="module")
def unknown_run(tmp_path_factory):
    """The run ``u`` with ``unknown`` rows in a SQLite ledger, billed once for the module, and its mock API."""
    folder = tmp_path_factory.mktemp("unknown_run")
    db = str(folder / "ledger.db")
    with MockProcess(p_drop_after=0.15, p_drop_before=0.15, seed=7) as api:
        _unknown_run(api, lambda rows: write_csv(folder / "customers.csv", rows), db)
        yield db, api


@pytest.fixture
def unknowns(request, customers, any_db, tmp_path):
    """The run ``u`` with ``unknown`` rows in ``any_db``, and the mock API it was billed to, which its lookups
    ask. On SQLite a copy of the module's ledger (:func:`unknown_run`): the tests that take it charge nobody
    through that API, so every lookup finds what the bill left; on PostgreSQL a run of the test's own."""
    if any_db.startswith("postgres"):
        yield from _fresh_unknowns(customers, any_db)
        return
    template, api = request.getfixturevalue("unknown_run")
    assert copy_ledger(template, tmp_path) == any_db
    yield api


def _reconcile(db: str, url: str, *extra):
    return run_engine("reconcile", "u", "--db", db, "--lookup-url", url, *extra)


def _closed_port() -> int:
    """A port nobody listens on: every lookup sent there fails to connect."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return closed.getsockname()[1]


def _lookup_attempts(db: str) -> int:
    return ledger_rows(db, "SELECT count(*) FROM attempts WHERE error LIKE ?", "lookup: %")[0][0]


def test_reconcile_then_rerun_charges_the_uncharged_once_and_resends_none_found_charged(any_db, own_unknowns):
    unknowns = own_unknowns
    before = unknowns.stats()
    url = f"{unknowns.base_url}/v1/customers/{{id}}/charges"
    result = _reconcile(any_db, url)
    assert result.returncode == 0, result.stderr
    charged, not_charged = before["dropped_after"], before["dropped_before"]
    assert f"{charged} found charged (succeeded), {not_charged} not charged (pending), 0 still" in result.stdout
    assert "python -m engine rerun u" in result.stdout
    assert status_counts(any_db, "u") == {SUCCEEDED: ROWS - not_charged, PENDING: not_charged}
    assert _lookup_attempts(any_db) == charged + not_charged
    assert unknowns.stats()["requests"] == before["requests"]  # a lookup charges nobody

    rerun = run_engine("rerun", "u", "--db", any_db, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    stats = unknowns.stats()
    assert stats["requests"] == before["requests"] + not_charged  # none of the rows found charged
    assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0
    assert status_counts(any_db, "u") == {SUCCEEDED: ROWS}


def test_a_dry_run_asks_and_counts_but_changes_nothing(any_db, unknowns):
    counts = status_counts(any_db, "u")
    attempts = ledger_rows(any_db, "SELECT count(*) FROM attempts")
    result = _reconcile(any_db, f"{unknowns.base_url}/v1/customers/{{id}}/charges", "--dry-run")
    assert result.returncode == 0, result.stderr
    stats = unknowns.stats()
    assert f"{stats['dropped_after']} found charged" in result.stdout and "dry run" in result.stdout
    assert status_counts(any_db, "u") == counts
    assert ledger_rows(any_db, "SELECT count(*) FROM attempts") == attempts
    assert ledger_rows(any_db, "SELECT count(*) FROM leases") == [(0,)]


def test_a_lookup_by_idempotency_key_settles_rows_of_a_keyed_run(customers, db):
    """The mock knows a key its request carried: ``{key}`` (URL-encoded) finds the charge made under it."""
    with MockProcess(p_drop_after=0.15, p_drop_before=0.15, seed=3) as api:
        _bill(api, customers, db)
        with open_store(db) as store:  # one attempt each: dropped rows failed; say they are unknown
            dropped = store.mark_unknown("u", (FAILED,), "as if the answer was lost")
        time.sleep(TIMEOUT + 1.2)  # no attempt of the run can still be in progress at the API
        before = api.stats()
        assert dropped == before["dropped_after"] + before["dropped_before"] > 0
        result = _reconcile(db, f"{api.base_url}/v1/charges/by-key/{{key}}")
        assert result.returncode == 0, result.stderr
        assert status_counts(db, "u") == {SUCCEEDED: ROWS - before["dropped_before"], PENDING: before["dropped_before"]}
        assert run_engine("rerun", "u", "--db", db, "--quiet").returncode == 0
        stats = api.stats()
        assert stats["requests"] == before["requests"] + before["dropped_before"]
        assert stats["customers_charged"] == ROWS and stats["customers_charged_more_than_once"] == 0


def test_a_lookup_without_an_answer_leaves_the_rows_unknown_and_records_it(any_db, unknowns):
    db = any_db
    port = _closed_port()
    unknown = status_counts(db, "u")[UNKNOWN]
    url = f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"
    refused = _reconcile(db, url)
    assert refused.returncode == 2 and f"--allow-host 127.0.0.1:{port}" in refused.stderr
    assert _lookup_attempts(db) == 0
    result = _reconcile(db, url, "--allow-host", f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert f"0 found charged (succeeded), 0 not charged (pending), {unknown} still unsettled" in result.stdout
    assert status_counts(db, "u")[UNKNOWN] == unknown
    errors = ledger_rows(db, "SELECT error FROM requests WHERE status = 'unknown'")
    assert all(error.startswith("lookup: ") and error.endswith("still unknown") for (error,) in errors)


def test_a_lookup_endpoint_that_goes_down_ends_the_lookups_after_max_pause(customers, db, api, start_engine):
    """The outage pause bounds a reconcile as it bounds a pass: the rows not settled stay unknown."""
    bill = run_engine(
        "bill", customers(40), "--url", api.charge_url(), "--db", db, "--run-id", "u", "--no-idempotency",
        "--workers", 1, "--concurrency", 1, "--pause-after", 2, "--max-pause", 1, "--timeout", TIMEOUT, "--quiet",
    )  # fmt: skip
    assert bill.returncode == 0, bill.stderr
    with open_store(db) as store:  # as if every answer was lost
        store.mark_unknown("u", (SUCCEEDED,), "as if the answer was lost")
    time.sleep(TIMEOUT + 1.2)  # no attempt of the run can still be in progress at the API
    api.reset()  # the API forgot every charge: each lookup answers 404
    api.configure(latency=0.2)  # one lookup at a time: 8 s for all of them
    process = start_engine("reconcile", "u", "--db", db, "--lookup-url", f"{api.base_url}/v1/customers/{{id}}/charges")
    deadline = time.monotonic() + 60
    while api.stats()["http_status"].get("404", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the endpoint was seen up
    api.configure(outage_at=0.0, outage_for=600.0)  # down from now on
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "the endpoint stayed down" in err, err
    counts = status_counts(db, "u")
    assert 2 <= counts[PENDING] < 40 and counts[PENDING] + counts[UNKNOWN] == 40
    assert f"{counts[PENDING]} not charged (pending), {counts[UNKNOWN]} still unsettled" in out


def test_reconcile_refuses_while_a_pass_holds_the_run(any_db, unknowns):
    holder = Holder.this_process()
    with open_store(any_db) as store:
        store.acquire_lease("u", holder, 30.0)
        try:
            result = _reconcile(any_db, f"{unknowns.base_url}/v1/customers/{{id}}/charges")
        finally:
            store.release_lease("u", holder, True)
    assert result.returncode == 2 and holder.host in result.stderr and str(holder.pid) in result.stderr
    assert _lookup_attempts(any_db) == 0


def test_after_a_dead_pass_reconcile_waits_out_its_requests_and_leaves_its_lease_for_the_next_pass(any_db, unknowns):
    """A lookup of a charge still being made would answer 404; the next pass must still see the dead
    pass's lease to settle what it had in flight."""
    dead = Holder.this_process()
    with open_store(any_db) as store:
        store.acquire_lease("u", dead, 1.0)
        store.renew_lease("u", dead, (0.0, 10**9))
        store.release_lease("u", dead, False)  # as a pass that did not end cleanly leaves it
        left = store.lease("u")
    result = _reconcile(any_db, f"{unknowns.base_url}/v1/customers/{{id}}/charges")
    assert result.returncode == 0, result.stderr
    first = ledger_rows(any_db, "SELECT min(started_at) FROM attempts WHERE error LIKE ?", "lookup: %")[0][0]
    assert first >= left["heartbeat_at"] + left["timeout"]
    with open_store(any_db) as store:
        lease = store.lease("u")
    assert lease is not None and lease["pid"] == 0 and lease["frontier_rid"] == 10**9


@pytest.mark.parametrize(
    "option, said",
    [
        (["--status", "succeeded"], "reconcile settles only unknown, key_conflict, rejected rows, not succeeded"),
        (["--status", "pending"], "not pending"),
        (["--lookup-url", "charges/{key}"], "--lookup-url 'charges/{key}': expected an absolute"),
        (["--lookup-url", "http://127.0.0.1/{key:>3}"], "--lookup-url: use plain {field} placeholders"),
    ],
)
def test_only_rows_in_doubt_are_reconciled_and_a_bad_lookup_url_is_one_line(any_db, unknowns, option, said):
    result = _reconcile(any_db, f"{unknowns.base_url}/v1/customers/{{id}}/charges", *option)
    assert result.returncode == 2 and said in result.stderr and len(result.stderr.splitlines()) == 1
    assert _lookup_attempts(any_db) == 0


def test_a_secret_in_the_lookup_url_is_never_printed(any_db, unknowns, monkeypatch):
    monkeypatch.setenv("LOOKUP_TOKEN", "s3cr3t-lookup-token")
    url = "http://127.0.0.1:9/v1/charges/{key}?token=${LOOKUP_TOKEN}"
    refused = _reconcile(any_db, url)
    assert refused.returncode == 2 and "[redacted]" in refused.stderr and "s3cr3t" not in refused.stderr
    unsettled = _reconcile(any_db, url, "--allow-host", "127.0.0.1:9")
    assert unsettled.returncode == 1 and "s3cr3t" not in unsettled.stdout + unsettled.stderr
    errors = ledger_rows(any_db, "SELECT error, excerpt FROM attempts WHERE error LIKE ?", "lookup: %")
    assert errors and "s3cr3t" not in repr(errors)


def test_reconcile_has_help_with_an_example(run):
    result = run("reconcile", "--help")
    assert result.exit_code == 0 and "Example:" in result.output and "--lookup-url" in result.output


def test_a_404_while_the_last_attempt_may_still_be_in_progress_settles_nothing(customers, db):
    """A charge still being made answers 404 to a lookup too: before the run's --timeout has passed
    since a row's last attempt, a 404 leaves it unknown (a rerun would charge it twice)."""
    with MockProcess(p_drop_after=0.15, p_drop_before=0.15, seed=7) as api:
        run = run_engine(
            "bill", customers(ROWS), "--url", api.charge_url(), "--db", db, "--run-id", "u",
            "--max-attempts", 1, "--timeout", 30, "--no-idempotency", "--quiet",
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        api.configure(p_drop_after=0.0, p_drop_before=0.0)
        stats = api.stats()
        result = _reconcile(db, f"{api.base_url}/v1/customers/{{id}}/charges")
        assert result.returncode == 1, result.stderr
        assert f"{stats['dropped_after']} found charged (succeeded), 0 not charged" in result.stdout
        assert status_counts(db, "u")[UNKNOWN] == stats["dropped_before"]
        # each row names its own time to try again (its last change + --timeout + 1 s): rows whose last
        # change straddles a second boundary carry two texts
        errors = {row[0] for row in ledger_rows(db, "SELECT error FROM requests WHERE status = 'unknown'")}
        assert errors and all("may still be in progress; reconcile again after" in error for error in errors), errors
        rerun = run_engine("rerun", "u", "--db", db, "--quiet")
        assert api.stats()["requests"] == stats["requests"]  # nothing in doubt was resent
        assert rerun.returncode in (0, 1)
