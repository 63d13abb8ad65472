"""``--notify-url`` / ``--notify-command``: a JSON summary when a pass ends; a failed notice never
changes the exit status."""

import json
import shlex
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import UsageError
from engine.output.notify import Notice


class Receiver:
    """A notice-receiving server on 127.0.0.1: keeps every POST; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses=()):
        self.received: list[tuple[dict, dict]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.received.append((dict(self.headers), json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"  # closed again: connection refused


def test_a_finished_run_posts_its_summary(api, customers, any_db, run, receiver):
    result = run(
        "bill", customers(20), "--url", api.charge_url(), "--db", any_db, "--run-id", "n1", "--quiet",
        "--notify-url", receiver.url, "--notify-header", "Authorization: Bearer ${HOOK_TOKEN}",
        env={"HOOK_TOKEN": "hook-secret-42"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(headers, message)] = receiver.received
    assert headers["Authorization"] == "Bearer hook-secret-42"
    assert headers["Content-Type"] == "application/json"
    assert message["run_id"] == "n1" and message["ending"] == "finished" and message["exit_code"] == 0
    assert message["counts"]["succeeded"] == message["total"] == 20
    assert message["counts"]["pending"] == 0 and message["rerun_command"] is None
    assert (
        message["duration_s"] >= 0
        and "rows_per_s" in message
        and message["first_errors"] == []
        and message["top_error"] is None
    )
    assert message["text"].startswith("batch-engine run n1 finished: 20 of 20 succeeded")


def test_a_kill_switch_stop_is_told_with_its_reason_and_rerun_command(customers, db, run, receiver):
    from engine.mock.process import MockProcess

    with MockProcess(refuse_rate=0.5) as api:
        result = run(
            "bill", customers(500), "--url", api.charge_url(), "--db", db, "--run-id", "n2", "--quiet",
            "--workers", 1, "--concurrency", 10, "--notify-url", receiver.url,
        )  # fmt: skip
    assert result.exit_code == 4, result.output
    [(_, message)] = receiver.received
    assert message["ending"] == "stopped" and message["exit_code"] == 4
    assert "kill switch" in message["reason"] and "kill switch" in message["text"]
    assert message["rerun_command"] == f"python -m engine rerun n2 --db {db}"
    assert message["counts"]["rejected"] > 0 and message["counts"]["pending"] > 0
    assert message["top_error"]["error"] == "HTTP 402" and f"{message['top_error']['rows']} rows" in message["text"]
    assert 1 <= len(message["first_errors"]) <= 5
    assert all(e["state"] == "rejected" and "402" in e["error"] for e in message["first_errors"])


def test_the_notice_is_retried_with_back_off(api, customers, db, run):
    flaky = Receiver(statuses=[500])
    try:
        result = run(
            "bill", customers(5), "--url", api.charge_url(), "--db", db, "--quiet",
            "--notify-url", flaky.url,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert len(flaky.received) == 1 and "notice not delivered" not in result.output
    finally:
        flaky.close()


def test_a_dead_notice_url_does_not_change_the_exit_status(api, customers, db, run):
    result = run("bill", customers(5), "--url", api.charge_url(), "--db", db, "--notify-url", _dead_url(), "--quiet")
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "notice not delivered" in line]
    assert "after 3 attempts" in line and "/hook" not in line  # the URL's path may be a secret: not shown


def test_notify_command_gets_the_json_on_stdin_after_a_rerun(api, customers, db, run, tmp_path, receiver):
    out = tmp_path / "notice.json"
    writer = (
        f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.stdin.read())' {shlex.quote(str(out))}"
    )
    assert run("bill", customers(30), "--url", api.charge_url(), "--db", db, "--run-id", "n3",
               "--canary", 10, "--quiet", "--notify-url", receiver.url).exit_code == 4  # fmt: skip
    assert receiver.received[0][1]["ending"] == "stopped" and "canary" in receiver.received[0][1]["text"]
    result = run("rerun", "n3", "--db", db, "--quiet", "--notify-command", writer)
    assert result.exit_code == 0, result.output
    message = json.loads(out.read_text())
    assert message["run_id"] == "n3" and message["counts"]["succeeded"] == 30


def test_a_failing_notify_command_is_reported_not_fatal(api, customers, db, run):
    command = f"{sys.executable} -c 'import sys; sys.exit(\"no mail today\")'"
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--quiet", "--notify-command", command)
    assert result.exit_code == 0, result.output
    assert "exited 1: no mail today" in result.output


def test_bad_notice_options_are_refused_before_anything_is_sent(api, customers, db, run):
    result = run("bill", customers(3), "--url", api.charge_url(), "--db", db, "--notify-url", "ftp://x/y")
    assert result.exit_code == 2 and "--notify-url" in result.output
    result = run(
        "bill", customers(3), "--url", api.charge_url(), "--db", db, "--notify-url", "http://127.0.0.1:1/",
        "--notify-header", "X-Token: ${NOT_SET_ANYWHERE}",
    )  # fmt: skip
    assert result.exit_code == 2 and "NOT_SET_ANYWHERE" in result.output
    assert api.stats()["requests"] == 0
    with pytest.raises(UsageError):
        Notice.build(None, ("X-A: b",))


def test_an_interrupted_run_is_told_too(customers, db, start_engine, receiver):
    from conftest import wait_for_charges

    from engine.mock.process import MockProcess

    with MockProcess(latency=0.3) as api:
        args = ("bill", customers(3000), "--url", api.charge_url(), "--db", db, "--run-id", "n4", "--quiet")
        engine = start_engine(*args, "--workers", 1, "--concurrency", 20, "--notify-url", receiver.url)
        wait_for_charges(api, 20)
        engine.send_signal(signal.SIGINT)
        _, err = engine.communicate(timeout=60)
    assert engine.returncode == 130, err
    [(_, message)] = receiver.received
    assert message["ending"] == "interrupted" and message["exit_code"] == 130
    assert message["counts"]["pending"] > 0 and "interrupted" in message["text"]
    assert message["rerun_command"] == f"python -m engine rerun n4 --db {db}"
