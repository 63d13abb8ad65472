"""Bad input is refused with one line naming file, line and field; exit 2; nothing sent."""

import json
import os
import subprocess

import pytest
from conftest import ENGINE, ledger_rows


def assert_refused(result, api, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert api.stats()["requests"] == 0


@pytest.mark.parametrize(
    "content,fragments",
    [
        ('id,amount\n1,5\n2,"7\n', [":3:", "malformed CSV"]),
        ("id,amount\n1,5\n2,7,9\n", [":3:", "expected 2 fields"]),
        ("name,amount\nx,5\n", [":1:", "field 'id'", "missing column"]),
        ("id,amount\n1,5\n2,6\n1,7\n", [":4:", "field 'id'", "duplicate id '1'", "first on line 2"]),
        ("id,amount\n1,5\n,6\n", [":3:", "field 'id'", "empty id"]),
        ("", [":1:", "empty file"]),
    ],
)
def test_bad_csv(tmp_path, api, db, run, content, fragments):
    path = tmp_path / "in.csv"
    path.write_text(content)
    result = run("bill", path, "--url", api.charge_url(), "--db", db)
    assert_refused(result, api, str(path), *fragments)


def test_non_utf8_bytes(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,name\n1,ok\n2,caf\xe9\n")
    assert_refused(run("bill", path, "--url", api.charge_url(), "--db", db), api, ":3:", "UTF-8")


@pytest.mark.parametrize(
    "content,fragments",
    [
        ('{"id": 1}\n{"id": 2\n', [":2:", "malformed JSON"]),
        ('{"id": 1}\n[1, 2]\n', [":2:", "expected a JSON object"]),
        ('{"id": 1}\n\n{"amount": 2}\n', [":3:", "field 'id'", "missing"]),
        ('{"id": 1, "amount": 5}\n{"id": 2, "amount": NaN}\n', [":2:", "malformed JSON", "NaN is not a JSON number"]),
    ],
)
def test_bad_jsonl(tmp_path, api, db, run, content, fragments):
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    assert_refused(run("bill", path, "--url", api.charge_url(), "--db", db), api, *fragments)


def test_unknown_field_in_url_template(customers, api, db, run):
    path = customers(3)
    result = run("bill", path, "--url", f"{api.base_url}/v1/customers/{{customer_no}}/charges", "--db", db)
    assert_refused(result, api, ":2:", "field 'customer_no'")


def test_row_cannot_change_the_destination_host(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id,tenant\n1,good\n2,evil.example.net#\n")
    url = "http://{tenant}.localhost:1/charge"
    result = run("bill", path, "--url", url, "--allow-host", "good.localhost:1", "--db", db)
    assert_refused(result, api, ":3:", "leaves the allowed hosts")


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("ftp://127.0.0.1/x", "only http and https"),
        ("127.0.0.1/x", "absolute"),
        ("http://{host}/x", "--allow-host"),
    ],
)
def test_bad_url(customers, api, db, run, url, fragment):
    assert_refused(run("bill", customers(2), "--url", url, "--db", db), api, fragment)


def test_unreadable_file(tmp_path, api, db, run):
    assert_refused(
        run("bill", tmp_path / "missing.csv", "--url", api.charge_url(), "--db", db), api, "missing.csv", "cannot open"
    )


def with_stdin_closed(*args) -> subprocess.CompletedProcess:
    """``python -m engine ARGS <&-``."""
    command = [*ENGINE, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.close(0))


def test_a_closed_standard_input_is_one_line(api, db):
    done = with_stdin_closed("bill", "-", "--format", "csv", "--url", api.charge_url(), "--db", db)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: <stdin>: cannot read: standard input is closed"


def test_with_standard_input_closed_a_canary_ends_without_asking(api, customers, db):
    done = with_stdin_closed("bill", customers(3), "--url", api.charge_url(), "--db", db, "--canary", 1, "--quiet")
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr
    assert api.stats()["charges"] == 1


def test_with_standard_input_closed_a_dashboard_user_gets_no_password(tmp_path):
    done = with_stdin_closed("dashboard-user", "add", "bob", "--role", "viewer", "--users", tmp_path / "users.txt")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: no password given: standard input is closed"
    assert not (tmp_path / "users.txt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_db_as_user(customers, api, tmp_path, run):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_refused(run("bill", customers(2), "--url", api.charge_url(), "--db", locked / "x.db"), api, "--db")


def test_unwritable_db(customers, api, tmp_path, run):
    # a directory where the ledger file should be cannot be opened, even by root
    folder = tmp_path / "is-a-dir.db"
    folder.mkdir()
    assert_refused(run("bill", customers(2), "--url", api.charge_url(), "--db", folder), api, "--db", "ledger")


def test_missing_environment_variable(customers, api, db, run):
    result = run(
        "bill",
        customers(2),
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--header",
        "Authorization: Bearer ${NOT_SET_ANYWHERE}",
    )
    assert_refused(result, api, "NOT_SET_ANYWHERE", "not set")


def test_a_refused_input_leaves_no_run_behind(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id\n" + "".join(f"{n}\n" for n in range(5000)) + "1\n")
    assert_refused(run("bill", path, "--url", api.charge_url(), "--db", db, "--run-id", "x"), api, "duplicate")
    assert ledger_rows(db, "SELECT count(*) FROM requests") == [(0,)]
    assert ledger_rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_duplicate_names_the_id_field_in_use(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("customer_no,amount\nA,1\nA,2\n")
    result = run(
        "bill",
        path,
        "--url",
        api.charge_url().replace("{id}", "{customer_no}"),
        "--id-field",
        "customer_no",
        "--db",
        db,
    )
    assert_refused(result, api, ":3:", "field 'customer_no'", "duplicate id 'A'")


@pytest.mark.parametrize(
    "content,fragments",
    [
        ('{"id": "a\\u0000b", "amount": 1}\n', [":1:", "field 'id'", "control character '\\x00'"]),
        ('{"id": 1}\n{"id": "x\\r\\nX-Evil: 1", "amount": 2}\n', [":2:", "field 'id'", "control character '\\r'"]),
        ('{"id": 1, "amount": 1e400}\n', [":1:", "field 'amount'", "1e400", "too large"]),
        ('{"id": 1, "name": "\\ud800"}\n', [":1:", "field 'name'", "lone surrogate"]),
        ('{"id": 1}\n{"id": ".."}\n', [":2:", "field 'id'", "path segment"]),
        ('{"id": "."}\n', [":1:", "field 'id'", "path segment"]),
    ],
)
def test_hostile_jsonl(tmp_path, api, db, run, content, fragments):
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    assert_refused(run("bill", path, "--url", api.charge_url(), "--db", db), api, *fragments)


def test_a_control_character_in_a_header_field_is_refused(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text('id,region\n1,eu\n2,"eu\rX-Evil: 1"\n')
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--header", "X-Region: {region}")
    assert_refused(result, api, ":3:", "field 'region'", "control character")


def test_two_rows_with_one_idempotency_key_are_refused(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id,amount,key\nc1,1,k1\nc2,2,k2\nc3,3,k1\n")
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--idempotency-key-field", "key")
    assert_refused(result, api, ":4:", "field 'key'", "duplicate idempotency key 'k1'", "first on line 2")
    assert ledger_rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_a_key_with_a_line_break_is_refused(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text('id,key\nc1,"k1\nX-Evil: 1"\n')
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--idempotency-key-field", "key")
    assert_refused(result, api, ":2:", "field 'key'", "control character '\\n'")


@pytest.mark.parametrize("priority", ["nan", "inf", "-Infinity"])
def test_a_priority_that_is_not_a_finite_number_is_refused(tmp_path, api, db, run, priority):
    path = tmp_path / "in.csv"
    path.write_text(f"id,rank\n1,5\n2,{priority}\n")
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--priority-field", "rank")
    assert_refused(result, api, ":3:", "field 'rank'", "finite number")


def test_a_header_value_that_is_not_ascii_is_refused(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id,region\nc1,eu\nc2,été\n")
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--header", "X-Region: {region}")
    assert_refused(result, api, ":3:", "field 'region'", "ASCII")


def test_an_id_that_is_not_ascii_is_billed_with_a_percent_encoded_key(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id,amount\nzoë,5\nzoe,6\n")
    result = run("bill", path, "--url", api.charge_url(), "--db", db, "--run-id", "utf")
    assert result.exit_code == 0, result.output
    assert ledger_rows(db, "SELECT idempotency_key FROM requests ORDER BY line") == [("utf:zo%C3%AB",), ("utf:zoe",)]
    assert api.stats()["customers_charged"] == 2


def test_typed_fields_are_sent_as_json_types(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text("id,amount,vip,rate\nc1,500,yes,1.5\nc2,7,0,2\n")
    result = run(
        "bill",
        path,
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--quiet",
        "--field",
        "amount:int",
        "--field",
        "vip:bool",
        "--field",
        "rate:float",
        "--keep-payload",  # read back below, after the rows succeeded
        "all",
    )
    assert result.exit_code == 0, result.output
    payloads = [json.loads(text) for (text,) in ledger_rows(db, "SELECT payload FROM requests ORDER BY line")]
    assert payloads == [
        {"id": "c1", "amount": 500, "vip": True, "rate": 1.5},
        {"id": "c2", "amount": 7, "vip": False, "rate": 2.0},
    ]


@pytest.mark.parametrize(
    "content,option,fragments",
    [
        ("id,amount\nc1,500\nc2,12.5\n", "amount:int", [":3:", "field 'amount'", "expected an integer", "'12.5'"]),
        ("id,amount\nc1,\n", "amount:int", [":2:", "field 'amount'", "expected an integer"]),
        ("id,vip\nc1,maybe\n", "vip:bool", [":2:", "field 'vip'", "true or false"]),
        ("id,rate\nc1,nan\n", "rate:float", [":2:", "field 'rate'", "finite"]),
        ("id\nc1\n", "amount:int", [":2:", "field 'amount'", "missing"]),
    ],
)
def test_a_typed_field_that_does_not_parse_is_refused(tmp_path, api, db, run, content, option, fragments):
    path = tmp_path / "in.csv"
    path.write_text(content)
    assert_refused(run("bill", path, "--url", api.charge_url(), "--db", db, "--field", option), api, *fragments)


def test_jsonl_text_in_a_typed_field_is_converted_like_csv(tmp_path, api, db, run):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "amount": 5}\n{"id": 2, "amount": "5"}\n')
    result = run(
        "bill", path, "--url", api.charge_url(), "--db", db, "--quiet", "--field", "amount:int", "--keep-payload", "all"
    )
    assert result.exit_code == 0, result.output
    assert ledger_rows(db, "SELECT payload FROM requests WHERE line = 2") == [('{"id":2,"amount":5}',)]


@pytest.mark.parametrize("command", ["bill", "rerun"])
def test_workers_with_broker_is_refused_not_ignored(customers, api, db, run, command):
    """--workers sizes the local pool only: with --broker it is refused in one line, before anything else."""
    first = [customers(3), "--url", api.charge_url()] if command == "bill" else ["run-1"]
    result = run(command, *first, "--db", db, "--broker", "redis://127.0.0.1:6379/15", "--workers", 3)
    assert_refused(result, api, "--workers applies to the local pool only", "--chunks-in-flight")
