"""Secrets come only from the environment and are never shown: not in argv, the ledger, the log or errors."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from conftest import ledger_rows

from engine.mock.process import MockProcess
from engine.request.spec import redact, secret_forms

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
            30,  # half the answers fail at random: 10 would leave a row failed in 3 % of runs
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


#: A token with what each encoding changes: a slash, a plus, a space, an equals sign, an ampersand.
ODD_SECRET = "sk/live+T0P secret=42&xYz"


def encodings_of(value: str) -> dict[str, str]:
    """``value`` as an API may reflect it (written out here, apart from the engine's own list)."""
    hex_upper = "".join(c if c.isalnum() or c in "-._~" else f"%{ord(c):02X}" for c in value)
    return {
        "json": value.replace("/", "\\/"),
        "url": hex_upper,
        "url-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), hex_upper),
        "url-plus": hex_upper.replace("%20", "+"),
        "url-plus-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), hex_upper.replace("%20", "+")),
        "base64": base64.b64encode(value.encode()).decode(),
        "base64-basic": base64.b64encode(f"user:{value}".encode()).decode(),
        "base64-bearer": base64.b64encode(f"Bearer {value}".encode()).decode(),
    }


@pytest.mark.parametrize("name,form", encodings_of(ODD_SECRET).items())
def test_every_encoding_of_a_secret_is_redacted(name, form):
    text = f'{{"echo": "{form}", "error": "no"}}'
    assert redact(text, (ODD_SECRET,)) == '{"echo": "[redacted]", "error": "no"}'
    cut = redact(f'{{"echo": "{form[:-3]}', (ODD_SECRET,))  # cut off at the excerpt's end
    assert cut == '{"echo": "[redacted]', name


def test_a_basic_credentials_decoded_form_is_redacted():
    credential = base64.b64encode(b"acct_42:pa55/word").decode()
    assert redact("user acct_42:pa55/word, password pa55/word", (credential,)) == "user [redacted], password [redacted]"


def test_secret_forms_are_computed_once_per_set_of_secrets():
    secret_forms.cache_clear()
    for _ in range(100):
        redact("some excerpt", (ODD_SECRET,))
    assert secret_forms.cache_info().misses == 1 and secret_forms.cache_info().hits == 99


def test_an_api_that_echoes_the_token_encoded_leaves_no_form_of_it_anywhere(customers, db, run, tmp_path):
    log = tmp_path / "events.jsonl"
    with MockProcess(echo_encoded=True, p500=0.3, seed=5) as api:
        result = run(
            "bill", customers(40), "--url", api.charge_url(), "--db", db, "--run-id", "enc",
            "--header", "Authorization: Bearer ${API_TOKEN}", "--log-file", log,
            "--backoff-base", 0.01, "--max-attempts", 10, "--quiet",
            env={"API_TOKEN": ODD_SECRET},
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    excerpts = [text for (text,) in ledger_rows(db, "SELECT excerpt FROM attempts")]
    assert all("[redacted]" in text for text in excerpts) and len(excerpts) >= 40, excerpts[:8]
    shown = [
        run("export", "enc", "--db", db, "--status", "succeeded", "--format", fmt).output for fmt in ("csv", "jsonl")
    ]
    shown += [run("report", "enc", "--db", db, "--format", fmt).output for fmt in ("text", "json", "csv")]
    errors = [text or "" for (text,) in ledger_rows(db, "SELECT error FROM requests")]
    everything = traces(db, log).decode("latin-1") + "".join(shown + errors + excerpts) + result.output
    for name, form in {"plain": ODD_SECRET, **encodings_of(ODD_SECRET)}.items():
        assert form not in everything, name
        assert form[:12] not in everything, name
