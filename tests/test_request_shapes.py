"""What goes over the wire: stdin input, form bodies, header templates, the --insecure flag."""

import json

from conftest import report_json, status_counts


def test_jsonl_from_stdin(api, db, run):
    lines = "".join(json.dumps({"id": f"s{n}", "amount": n}) + "\n" for n in range(30))
    result = run(
        "bill",
        "-",
        "--format",
        "jsonl",
        "--url",
        api.charge_url(),
        "--db",
        db,
        "--run-id",
        "in",
        "--quiet",
        input=lines,
    )
    assert result.exit_code == 0, result.output
    assert status_counts(db, "in") == {"succeeded": 30}
    assert api.stats()["customers_charged"] == 30


def test_stdin_needs_a_format(api, db, run):
    result = run("bill", "-", "--url", api.charge_url(), "--db", db, input='{"id": 1}\n')
    assert result.exit_code == 2 and "--format" in result.output


def test_form_body_charges_the_customer_in_it(api, customers, db, run):
    result = run(
        "bill",
        customers(20),
        "--url",
        f"{api.base_url}/v1/charges",
        "--form",
        "--db",
        db,
        "--run-id",
        "form",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert api.stats()["customers_charged"] == 20  # the mock read "id" from the form-encoded body


def test_a_header_value_from_the_row_cannot_inject_a_header(tmp_path, api, db, run):
    path = tmp_path / "in.csv"
    path.write_text('id,ref\n1,ok\n2,"bad\r\nX-Evil: 1"\n')
    result = run("bill", path, "--url", api.charge_url(), "--header", "X-Ref: {ref}", "--db", db)
    assert result.exit_code == 2 and ":3:" in result.output and "control character" in result.output
    assert api.stats()["requests"] == 0


def test_insecure_is_said_in_the_summary(api, customers, db, run):
    result = run(
        "bill", customers(5), "--url", api.charge_url(), "--insecure", "--db", db, "--run-id", "tls", "--quiet"
    )
    assert result.exit_code == 0
    assert "TLS certificates were not verified" in result.output
    assert report_json(run, db, "tls")["insecure"] is True
