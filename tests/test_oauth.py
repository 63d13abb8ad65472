"""--oauth2-token-url: one client-credentials token per machine, refreshed before it expires and once on a 401."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import bill_args, ledger_rows, run_engine, status_counts
from test_cluster import nodes  # noqa: F401 (the fixture)

from engine.auth import tokens as tokens_module
from engine.auth.oauth import OAuthClient, TokenError
from engine.auth.tokens import Authorizer, SharedToken, refresh_at
from engine.errors import UsageError
from engine.mock.process import MockProcess

CLIENT = {"OAUTH_CLIENT_ID": "billing-batch", "OAUTH_CLIENT_SECRET": "cs_live_TOPSECRETclient77"}


def client(api: MockProcess, **environ) -> OAuthClient:
    return OAuthClient.from_environment(f"{api.base_url}/oauth/token", "charges:write", {**CLIENT, **environ})


def charge(api: MockProcess, token: str | None) -> int:
    request = urllib.request.Request(f"{api.base_url}/v1/customers/cus_1/charges", data=b"{}", method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_mock_charges_only_with_a_valid_token_and_expires_it():
    with MockProcess(require_token=True, token_expires_in=0.5) as api:
        token = client(api).fetch()
        assert 0.4 < token.expires_at - token.fetched_at <= 0.5
        assert charge(api, None) == 401 and charge(api, "forged") == 401
        assert charge(api, token.value) == 200
        time.sleep(0.6)
        assert charge(api, token.value) == 401
        assert api.stats()["token_requests"] == 1


def test_missing_credentials_are_named_and_a_refusal_is_one_redacted_line(api):
    with pytest.raises(UsageError, match="OAUTH_CLIENT_SECRET"):
        OAuthClient.from_environment(f"{api.base_url}/oauth/token", None, {"OAUTH_CLIENT_ID": "x"})
    secret = CLIENT["OAUTH_CLIENT_SECRET"]
    bad = OAuthClient(token_url="http://127.0.0.1:9/token", client_id="x", client_secret=secret)  # nothing listens
    with pytest.raises(TokenError) as error:
        bad.fetch()
    assert "127.0.0.1:9" in str(error.value) and CLIENT["OAUTH_CLIENT_SECRET"] not in str(error.value)


def test_a_token_is_fetched_once_and_refreshed_before_it_expires():
    with MockProcess(require_token=True, token_expires_in=1.0) as api:
        shared = SharedToken.create_local()
        first, second = Authorizer(client(api), shared), Authorizer(client(api), shared)
        token = first.token()
        assert second.token() == token  # the machine's token: the second process does not ask
        assert api.stats()["token_requests"] == 1
        assert refresh_at(first.current) == pytest.approx(first.current.expires_at - 0.2)  # type: ignore[arg-type]
        time.sleep(0.85)  # past the refresh time, before the expiry
        assert second.token() != token and first.token() == second.token()
        assert api.stats()["token_requests"] == 2
        assert set(first.secrets()) == {token, first.token()}  # the old one stays redacted


def test_a_401_refreshes_once_for_every_transfer_that_used_the_old_token():
    with MockProcess(require_token=True) as api:
        authorizer = Authorizer(client(api), SharedToken.create_local())
        old = authorizer.token()
        sent_at = time.time()  # a transfer that carried it
        authorizer.unauthorized(sent_at)
        new = authorizer.token()
        assert new != old
        for _ in range(5):  # the other transfers of the old token answer 401 too
            authorizer.unauthorized(sent_at)
        assert authorizer.token() == new and api.stats()["token_requests"] == 2


def test_every_token_replaced_within_the_timeout_stays_redacted_then_is_let_go(monkeypatch):
    """Two refreshes while a transfer of the first token is in flight: its answer may still echo it."""
    monkeypatch.setattr(tokens_module, "RETIRED_MARGIN", 0.0)
    with MockProcess(require_token=True) as api:
        authorizer = Authorizer(client(api), SharedToken.create_local(), timeout=0.5)
        tokens = [authorizer.token()]
        for _ in range(2):
            authorizer.unauthorized(time.time())
            tokens.append(authorizer.token())
        assert len(set(tokens)) == 3 and set(authorizer.secrets()) == set(tokens)
        time.sleep(0.6)
        assert authorizer.secrets() == (tokens[-1],)  # the replaced ones, past every transfer's timeout


def bill(run, api, customers, db, rows: int, *extra, env=None):
    """``bill`` of ``rows`` customers as run "oauth", authenticated at the mock's token endpoint."""
    where = ["--url", api.charge_url(), "--db", db, "--run-id", "oauth", "--quiet"]
    oauth = ["--oauth2-token-url", f"{api.base_url}/oauth/token", "--oauth2-scope", "charges:write"]
    return run("bill", customers(rows), *where, *oauth, *extra, env={**CLIENT, **(env or {})})


def test_tokens_expiring_every_few_seconds_fail_no_row_of_20000(customers, db, run):
    expiry = 3.0
    with MockProcess(require_token=True, token_expires_in=expiry, latency=0.05) as api:
        started = time.monotonic()
        result = bill(run, api, customers, db, 20_000, "--workers", 2, "--concurrency", 100)
        took = time.monotonic() - started
        stats = api.stats()
    assert result.exit_code == 0, result.output
    assert status_counts(db, "oauth") == {"succeeded": 20_000}
    assert stats["customers_charged"] == 20_000 and stats["customers_charged_more_than_once"] == 0
    # one machine: about one token per expiry (refreshed at 80% of its life), not one per worker
    assert 1 <= stats["token_requests"] <= took / (expiry * 0.8) + 2, (stats["token_requests"], took)
    assert took > expiry, "the run must outlive a token for this test to mean anything"
    assert stats["unauthorized"] == 0  # refreshed before it expired: no request went out with a dead token


def test_tokens_revoked_early_cost_no_attempt_and_are_never_stored(customers, db, run, tmp_path):
    log = tmp_path / "events.jsonl"
    knobs = dict(require_token=True, token_expires_in=3600, token_valid_for=0.5, latency=0.2, echo_encoded=True)
    with MockProcess(**knobs) as api:
        result = bill(run, api, customers, db, 600, "--workers", 2, "--concurrency", 20, "--log-file", log)
        stats = api.stats()
    assert result.exit_code == 0, result.output
    assert stats["unauthorized"] > 0  # the server refused old tokens, and every row still succeeded once
    assert status_counts(db, "oauth") == {"succeeded": 600} and stats["customers_charged_more_than_once"] == 0
    assert ledger_rows(db, "SELECT max(attempt) FROM attempts") == [(1,)]  # a 401 spent no attempt
    assert 2 <= stats["token_requests"] <= stats["unauthorized"] + 1  # the first, then one per refusal at most
    traces = Path(db).read_bytes() + log.read_bytes() + result.output.encode()
    excerpts = [text for (text,) in ledger_rows(db, "SELECT excerpt FROM attempts")]
    assert all("[redacted] {" in text for text in excerpts), excerpts[:3]  # each echoed token, redacted
    assert not re.search(rb"Bearer (?!\[redacted\])[A-Za-z0-9_-]{8}", traces)
    assert CLIENT["OAUTH_CLIENT_SECRET"].encode() not in traces


def test_oauth_with_an_authorization_header_or_a_scope_alone_is_refused(api, customers, db, run):
    result = bill(run, api, customers, db, 2, "--header", "Authorization: Bearer ${T}", env={"T": "x"})
    assert result.exit_code == 2 and "Authorization" in result.output
    result = run("bill", customers(2), "--url", api.charge_url(), "--db", db, "--oauth2-scope", "s")
    assert result.exit_code == 2 and "--oauth2-token-url" in result.output


def test_a_token_endpoint_that_never_answers_fails_the_rows_with_its_reason(api, customers, db, run):
    started = time.monotonic()
    result = run(
        "bill",
        customers(30),
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--run-id",
        "down",
        "--workers",
        1,
        "--oauth2-token-url",
        "http://127.0.0.1:9/oauth/token",  # nothing listens
        env=CLIENT,
    )
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 30  # a few tries, then every row fails at once
    assert status_counts(db, "down") == {"failed": 30} and api.stats()["requests"] == 0
    errors = {error for (error,) in ledger_rows(db, "SELECT error FROM attempts")}
    assert all("no token from http://127.0.0.1:9/oauth/token" in error for error in errors), errors
    assert ledger_rows(db, "SELECT max(attempt) FROM attempts") == [(1,)]  # the waits spent no attempt


def test_each_worker_node_fetches_one_token_for_its_processes(
    customers,
    postgres_url,
    broker,
    nodes,  # noqa: F811 (the fixture imported above)
    monkeypatch,
):
    for name, value in CLIENT.items():
        monkeypatch.setenv(name, value)  # the coordinator's and the nodes' environment
    nodes(2)  # 4 pool processes each
    # refreshed 1.2 s before it expires: room for a busy machine's delays between the header and the API
    # (at 3 s, 0.6 s, a loaded machine sent some requests whose token expired on the way: 401s)
    expiry, rows = 6.0, 4000
    with MockProcess(require_token=True, token_expires_in=expiry, latency=0.05) as api:
        started = time.monotonic()
        result = run_engine(
            *bill_args(customers(rows), api, postgres_url, "nodes", broker=broker),
            "--oauth2-token-url",
            f"{api.base_url}/oauth/token",
            "--quiet",
            timeout=180,
        )
        took = time.monotonic() - started
        stats = api.stats()
    assert result.returncode == 0, result.stderr
    assert stats["customers_charged"] == rows and stats["unauthorized"] == 0
    # per node, not per pool process (8 processes would ask 8 times at the start alone)
    assert 2 <= stats["token_requests"] <= 2 * (took / (expiry * 0.8) + 1), (stats["token_requests"], took)


def _take_the_token_lock_and_hang(shared: SharedToken, holding) -> None:
    """A worker caught in a token fetch: the lock taken, then frozen."""
    shared.lock.acquire()
    holding.set()
    time.sleep(60)


def test_a_worker_killed_while_it_fetches_a_token_leaves_the_lock_to_the_pool():
    fork = multiprocessing.get_context("fork")
    shared = SharedToken.create(fork)
    holding = fork.Event()
    fetching = fork.Process(target=_take_the_token_lock_and_hang, args=(shared, holding))
    fetching.start()
    assert holding.wait(10)
    fetching.kill()
    fetching.join(10)
    shared.lock.recover([os.getpid()])  # a process that is not the holder: nothing released
    assert not shared.lock.acquire(block=False)
    shared.lock.recover([fetching.pid])  # the pool, once it saw the worker die
    assert shared.lock.acquire(block=False)
    shared.lock.release()
