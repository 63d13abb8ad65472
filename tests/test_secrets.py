"""Secrets come only from the environment and are never shown: not in argv, the ledger, the log or errors."""

from __future__ import annotations

from pathlib import Path

from conftest import ledger_rows

from engine.mock.process import MockProcess

SECRET = "sk_live_51HxQ8vTOPSECRETvalue9"


def traces(db: str, *others) -> bytes:
    """Everything the run left on disk."""
    found = b""
    for path in (db, db + "-wal", *others):
        if Path(path).exists():
            found += Path(path).read_bytes()
    return found


def test_literal_text_beside_the_variable_in_a_secret_header_is_refused(api, customers, db, run):
    result = run(
        "bill",
        customers(3),
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--header",
        "Authorization: Bearer sk_live_typed${EMPTY}",
        env={"EMPTY": ""},
    )
    assert result.exit_code == 2 and "scheme word" in result.output
    assert "sk_live_typed" not in result.output
    assert api.stats()["requests"] == 0 and b"sk_live_typed" not in traces(db)


def test_a_scheme_word_and_a_variable_are_fine(api, customers, db, run):
    result = run(
        "bill",
        customers(3),
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--quiet",
        "--header",
        "Authorization: Basic ${CREDENTIALS}",
        env={"CREDENTIALS": SECRET},
    )
    assert result.exit_code == 0, result.output


def test_a_header_option_without_a_colon_is_not_printed(api, customers, db, run):
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--header", f"Bearer {SECRET}")
    assert result.exit_code == 2 and "Name: value" in result.output
    assert SECRET not in result.output


def test_an_api_that_echoes_the_token_does_not_put_it_in_the_ledger(customers, db, run, tmp_path):
    log = tmp_path / "events.jsonl"
    with MockProcess(echo_headers=True, p500=0.5, seed=5) as api:
        result = run(
            "bill",
            customers(30),
            "--url",
            api.charge_url(),
            "--db",
            db,
            "--run-id",
            "echo",
            "--header",
            "X-Api-Key: ${API_KEY}",
            "--log-file",
            log,
            "--backoff-base",
            0.01,
            "--max-attempts",
            10,
            "--quiet",
            env={"API_KEY": SECRET},
        )
        assert result.exit_code == 0, result.output
    excerpts = [text for (text,) in ledger_rows(db, "SELECT excerpt FROM attempts")]
    assert any("[redacted]" in text for text in excerpts), excerpts[:3]  # the echo reached the excerpt
    assert SECRET.encode() not in traces(db, log) and SECRET[:12].encode() not in traces(db, log)
    assert SECRET not in result.output


def test_a_key_in_the_url_comes_from_the_environment_and_is_never_shown(api, customers, db, run, tmp_path):
    log = tmp_path / "events.jsonl"
    url = f"{api.base_url}/v1/customers/{{id}}/charges?key=${{API_KEY}}"
    result = run(
        "bill", customers(20), "--url", url, "--db", db, "--run-id", "q", "--log-file", log, env={"API_KEY": SECRET}
    )
    assert result.exit_code == 0, result.output
    assert api.stats()["customers_charged"] == 20
    assert ledger_rows(db, "SELECT url FROM runs") == [(url,)]  # the template, not the key
    assert SECRET.encode() not in traces(db, log) and SECRET not in result.output
    result = run(
        "bill",
        customers(2, name="other.csv"),
        "--url",
        url.replace("http", "ftp", 1),
        "--db",
        db,
        env={"API_KEY": SECRET},
    )
    assert result.exit_code == 2 and SECRET not in result.output
