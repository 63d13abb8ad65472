"""A worker node's chunk loop against the mock API on 127.0.0.1: retries, final states, records."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter

from engine.delivery.breaker import Answer, BreakerSettings, CircuitBreaker, Permit
from engine.delivery.fence import Fence
from engine.delivery.gate import Gate
from engine.delivery.policy import RetryPolicy
from engine.delivery.ratelimit import Pacer
from engine.delivery.sender import Sender
from engine.mock.process import MockProcess
from engine.request.spec import RequestSpec
from engine.sender_parts import SenderParts, TransportOptions
from engine.states import FAILED, RETRYING, SUCCEEDED
from engine.wire import Attempt, Dispatch

CONTEXT = multiprocessing.get_context("spawn")


def sender(url: str, max_attempts: int = 5) -> Sender:
    policy = RetryPolicy(max_attempts=max_attempts, backoff_base=0.01, backoff_cap=0.05)
    gate = Gate(CircuitBreaker.create(CONTEXT, BreakerSettings()), Pacer.create(CONTEXT, None, 1, 20))
    options = TransportOptions(connect_timeout=5, timeout=10)
    parts = SenderParts(spec=RequestSpec.build(url), policy=policy, transport=options, window=20, chunk_size=100)
    return Sender(parts, gate)


def chunk(count: int, attempts: int = 0) -> list[Dispatch]:
    return [Dispatch(n, f"cus_{n}", f'{{"id":"cus_{n}"}}', f"k:cus_{n}", attempts) for n in range(1, count + 1)]


def test_every_row_of_a_chunk_ends_and_each_attempt_is_recorded_once():
    with MockProcess(p503=0.3, retry_after=0, seed=3) as api:
        sending = sender(api.charge_url(), max_attempts=12)  # 0.3 ** 12: no row runs out of attempts
        records = [Attempt._make(record) for record in sending.send(chunk(100, attempts=2))]
        sending.close()
        final = {record.rid: record.outcome for record in records if record.outcome != RETRYING}
        assert final == dict.fromkeys(range(1, 101), SUCCEEDED)
        assert len(records) == api.stats()["requests"]
        assert Counter(record.outcome for record in records)[RETRYING] == api.stats()["http_status"]["503"]
        for rid in range(1, 101):  # numbered after the row's earlier attempts, 3, 4, …
            numbers = [record.attempt for record in records if record.rid == rid]
            assert numbers == list(range(3, 3 + len(numbers)))
        assert api.stats()["customers_charged_more_than_once"] == 0


def test_a_row_that_keeps_failing_ends_failed_after_max_attempts():
    with MockProcess(fail_rate=1.0) as api:
        sending = sender(api.charge_url(), max_attempts=3)
        records = [Attempt._make(record) for record in sending.send(chunk(5))]
        sending.close()
    assert Counter(record.outcome for record in records) == {RETRYING: 10, FAILED: 5}


def test_the_claim_is_renewed_while_a_slow_chunk_is_sent():
    beats = []
    with MockProcess(latency=1.3) as api:
        sending = sender(api.charge_url())
        sending.send(chunk(10), fence=Fence(5.0, lambda: beats.append(1) or True))
        sending.close()
    assert beats and sending.dropped == 0


def test_a_claim_found_gone_stops_every_start_and_drops_the_rest():
    """The window is 20: the first 20 start; the renewal then says the chunk was taken over."""
    with MockProcess(latency=1.0) as api:
        sending = sender(api.charge_url())
        records = sending.send(chunk(50), fence=Fence(2.0, lambda: False))
        sending.close()
        assert api.stats()["requests"] == 20 and len(records) == 20
    assert sending.dropped == 30


def test_a_claim_not_renewed_within_its_lease_starts_nothing_more():
    """A renewal the ledger cannot answer (None) lets the lease run down: after it, nothing starts."""
    with MockProcess(latency=0.2) as api:
        sending = sender(api.charge_url())
        sending.transport.window = lambda limit: 1  # one at a time: 0.2 s each, the lease is 1 s
        records = sending.send(chunk(20), fence=Fence(1.0, lambda: None))
        sending.close()
    assert 2 <= len(records) <= 5 and sending.dropped == 20 - len(records)


def test_a_sender_frozen_between_a_start_and_its_send_sends_nothing():
    """The fence held when the transfers started and no longer when libcurl was about to send them:
    the process froze in between (SIGSTOP, a VM pause) while the chunk went to another node."""
    now = [100.0]
    fence = Fence(5.0, lambda: True, clock=lambda: now[0])
    with MockProcess() as api:
        sending = sender(api.charge_url())
        sending.transport.window = lambda limit: limit  # no warm-up: all five start in this turn
        sending.ready.extend(chunk(5))
        assert sending.start(fence) and sending.transport.active == 5  # started, nothing sent yet
        now[0] += 30.0  # frozen for 30 s before libcurl's next turn
        deadline = time.monotonic() + 10
        while sending.transport.active and time.monotonic() < deadline:
            sending.poll(0.1)
        sending.close()
        assert api.stats()["requests"] == 0
    assert sending.take_records() == [] and sending.dropped == 5  # no attempt: the rows are the new owner's


def test_an_outage_probe_its_fence_stopped_is_handed_on_at_once():
    """The row a frozen sender started as the outage probe was never sent: the breaker hands the probe to
    another sender now, not after its probe timeout."""
    now = [100.0]
    fence = Fence(5.0, lambda: True, clock=lambda: now[0])
    with MockProcess() as api:
        sending = sender(api.charge_url())
        breaker = sending.gate.breaker
        for answer in (Answer.UP, *[Answer.DOWN] * BreakerSettings().threshold):
            breaker.record(answer)  # the endpoint went down: the breaker is open
        time.sleep(BreakerSettings().first_interval + 0.1)  # a probe is due
        sending.ready.extend(chunk(1))
        sending.start(fence)
        assert sending.gate.probe_rid == 1 and sending.transport.active == 1  # the probe started
        now[0] += 30.0  # frozen before it was sent
        deadline = time.monotonic() + 10
        while sending.transport.active and time.monotonic() < deadline:
            sending.poll(0.1)
        sending.close()
        assert api.stats()["requests"] == 0
    assert sending.dropped == 1 and sending.gate.probe_rid is None
    assert breaker.allow() is Permit.PROBE  # the next sender probes at once


def test_a_chunk_cut_short_by_an_error_leaves_nothing_for_the_next_chunk():
    """Rows not started and records not handed on belong to their own claim: the next chunk sends
    and records only its rows (and what was already in flight, which ends and is recorded)."""

    def broken() -> bool:
        raise RuntimeError("the pass's stop flag could not be read")

    with MockProcess(latency=0.2) as api:
        sending = sender(api.charge_url())  # a window of 20
        try:
            sending.send(chunk(100), stopped=broken)
        except RuntimeError:
            pass
        records = [Attempt._make(record) for record in sending.send([Dispatch(999, "cus_999", "{}", "k:999", 0)])]
        sending.close()
    rids = {record.rid for record in records}
    assert 999 in rids and rids <= set(range(1, 21)) | {999}, sorted(rids)
