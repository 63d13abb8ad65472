"""Logs on stderr as the operator's stack reads them: text or one JSON object per line, with the fields."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from engine.cluster.node import chunk_log
from engine.mock.process import MockProcess
from engine.output.logs import JsonFormatter, TextFormatter, setup_logging

#: What every JSON log line carries.
FIELDS = {"time", "level", "logger", "run_id", "chunk", "node", "message"}


def engine(*args, env=None) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, stderr a pipe (not a terminal), as under cron or CI."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


def json_lines(stderr: str) -> list[dict]:
    lines = [json.loads(line) for line in stderr.splitlines()]  # a line that is not JSON fails here
    for line in lines:
        assert FIELDS <= set(line), line
    return lines


def test_a_bill_with_json_logs_writes_only_json_lines_on_stderr(customers, tmp_path):
    with MockProcess(latency=0.02, fail_rate=0.05) as api:
        result = engine(
            "--log-format", "json", "bill", customers(300), "--url", api.charge_url(),
            "--db", tmp_path / "l.db", "--run-id", "j1", "--max-attempts", 1, "--workers", 1, "--concurrency", 5,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr  # some customers fail: the rerun line is a record too
    lines = json_lines(result.stderr)
    progress = [line for line in lines if line["logger"] == "engine.output.progress"]
    assert any(line["message"].startswith("pass 1: ") and "done, ok=" in line["message"] for line in progress)
    assert any("rerun them with" in line["message"] and line["level"] == "WARNING" for line in lines)
    assert "\r" not in result.stderr and "req/s]" not in result.stderr  # no tqdm bar
    last = result.stdout.splitlines()[-1]  # the summary stays on stdout, its last line for scripts
    assert last.startswith("result=incomplete run=j1 total=300 succeeded=") and last.endswith(" exit=1")


def test_a_refused_command_is_one_json_error_line(tmp_path):
    result = engine("--log-format", "json", "bill", tmp_path / "missing.csv", "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2
    (line,) = json_lines(result.stderr)
    assert line["level"] == "ERROR" and line["message"].startswith("error: ")


def test_text_logs_keep_the_lines_operators_read(tmp_path):
    result = engine("bill", tmp_path / "missing.csv", "--url", "http://127.0.0.1:9/x")
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_log_level_hides_what_is_below_it(customers, tmp_path):
    with MockProcess() as api:
        result = engine(
            "--log-level", "error", "--log-format", "json", "bill", customers(20), "--url", api.charge_url(),
            "--db", tmp_path / "l.db",
        )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""


def test_a_node_chunk_record_carries_run_chunk_and_node(capsys):
    setup_logging("INFO", "json")
    chunk_log("r1", 7, "host:1:2").info("chunk %s of run %s: claimed, %d rows", 7, "r1", 100)
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["run_id"], line["chunk"], line["node"]) == ("r1", 7, "host:1:2")
    assert line["logger"] == "engine.cluster.node" and line["message"] == "chunk 7 of run r1: claimed, 100 rows"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("engine.cli", "rows did not succeed"),
        ("engine.cluster.node", "batch-engine node: rows did not succeed"),
        ("engine.local.limits", "batch-engine: rows did not succeed"),
    ],
)
def test_text_lines_are_prefixed_by_where_they_come_from(name, expected):
    record = logging.LogRecord(name, logging.INFO, __file__, 1, "rows did not succeed", None, None)
    assert TextFormatter().format(record) == expected


def test_a_json_line_has_null_fields_when_not_about_a_chunk():
    record = logging.LogRecord("engine.cli", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "a b" and line["chunk"] is None and line["time"].endswith("Z")


def test_no_opentelemetry_is_imported_when_tracing_is_off(tmp_path):
    code = "import sys; from engine.cli import cli; cli(['config', 'show'], standalone_mode=False);"
    code += "print('opentelemetry' in ' '.join(sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_a_run_and_its_chunks_are_spans_carried_through_task_headers():
    """The node's chunk span continues the run span from the W3C headers a task carries."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine import tracing

    exporter = InMemorySpanExporter()
    tracing.setup_tracing(False, exporter=exporter)
    try:
        headers: dict = {}
        with tracing.span("run", command="bill"):
            tracing.inject(headers)
            tracing.annotate_current(run_id="r1", total=3, succeeded=2)
        request = type("Request", (), {"traceparent": headers["traceparent"], "headers": None})()
        with tracing.span("chunk", tracing.carried(request), run_id="r1", chunk=4):
            tracing.annotate_current(rows=3, **{"outcome.succeeded": 2})
    finally:
        tracing.setup_tracing(False)
    run, chunk = sorted(exporter.get_finished_spans(), key=lambda s: s.name, reverse=True)
    assert chunk.context.trace_id == run.context.trace_id and chunk.parent.span_id == run.context.span_id
    assert run.attributes["engine.run_id"] == "r1" and chunk.attributes["engine.rows"] == 3


def test_a_bill_is_a_run_span_with_a_span_per_pass(monkeypatch, customers, db, api, run):
    """``--otel``: the run's span holds one span per pass, with the pass's counts."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from engine import tracing

    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_otlp_exporter", lambda: exporter)
    monkeypatch.setattr("opentelemetry.sdk.trace.export.BatchSpanProcessor", SimpleSpanProcessor)
    try:
        result = run("--otel", "bill", customers(30), "--url", api.charge_url(), "--db", db, "--quiet")
    finally:
        tracing.setup_tracing(False)
    assert result.exit_code == 0, result.output
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["pass"].parent.span_id == spans["run"].context.span_id
    assert spans["pass"].attributes["engine.rows"] == 30 and spans["pass"].attributes["engine.succeeded"] == 30
