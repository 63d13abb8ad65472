"""The local worker process on its own: rows in through its inbox, attempts out through its result pipe."""

from __future__ import annotations

import multiprocessing

from engine.delivery.breaker import BreakerSettings, CircuitBreaker
from engine.delivery.policy import RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.delivery.sender import Sender
from engine.local import worker
from engine.mock.process import MockProcess
from engine.request.spec import RequestSpec
from engine.sender_parts import SenderParts, TransportOptions
from engine.wire import STOP_COMMAND, Attempt, Dispatch, decode_report, rows_command

#: Forked, so that the test's stand-in for closing the sender reaches the worker.
FORK = multiprocessing.get_context("fork")
ROWS = 40


def _reports_until(results, done) -> list:
    """The worker's reports until ``done(reports)``; each wait bounded."""
    reports: list = []
    while not done(reports):
        assert results.poll(30), "the worker went silent"
        reports.append(decode_report(0, results.recv()))
    return reports


def test_a_worker_that_said_goodbye_leaves_without_closing_its_transfers_and_every_result_arrives(
    tmp_path, monkeypatch
):
    closed = tmp_path / "closed"
    monkeypatch.setattr(Sender, "close", lambda self: closed.write_text("closed one by one"))
    with MockProcess() as api:
        options = TransportOptions(connect_timeout=5, timeout=10)
        spec = RequestSpec.build(api.charge_url())
        parts = SenderParts(spec=spec, policy=RetryPolicy(), transport=options, window=10, chunk_size=100)
        inbox_reader, inbox = FORK.Pipe(duplex=False)
        results, results_writer = FORK.Pipe(duplex=False)
        shared = (CircuitBreaker.create(FORK, BreakerSettings()), Pacer.create(FORK, None, 1, 10), FORK.Array("d", 1))
        process = FORK.Process(target=worker.run_worker, args=(0, parts, inbox_reader, results_writer, *shared))
        process.start()
        try:
            rows = [Dispatch(n, f"cus_{n}", f'{{"id":"cus_{n}"}}', f"k:cus_{n}", 0) for n in range(1, ROWS + 1)]
            inbox.send(rows_command(rows, parts.chunk_size))
            reports = _reports_until(results, lambda got: sum(len(r.attempts) for r in got) >= ROWS)
            inbox.send(STOP_COMMAND)
            reports += _reports_until(results, lambda got: bool(got) and got[-1].bye)
            process.join(30)
        finally:
            if process.is_alive():
                process.kill()
        charged = api.stats()["customers_charged_more_than_once"]
    attempts = [Attempt._make(record) for report in reports for record in report.attempts]
    assert sorted(attempt.rid for attempt in attempts) == list(range(1, ROWS + 1))
    assert {attempt.http_status for attempt in attempts} == {200} and charged == 0
    assert process.exitcode == 0
    assert not closed.exists()  # the kernel took its handles and connections back at once
