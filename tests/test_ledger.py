"""The ledger contract, written against the :class:`~engine.ledger.Store` interface, one class per role.

Every store runs these tests: the ``store`` fixture is parametrized by implementation
(the SQLite file, SQLite in memory as pass unit tests use it, and a PostgreSQL schema of the
test's own on the local server).
"""

import hashlib
import random
import socket
import subprocess
import threading
import time

import pytest

import engine.ledger.sqlite_rows as sqlite_rows
from engine.errors import InputError, LedgerError
from engine.ledger import (
    MEMORY,
    ChunkLedger,
    DuplicateRow,
    LeaseHeld,
    LeaseLost,
    LedgerReader,
    PassLedger,
    RunBook,
    RunExists,
    Store,
    open_store,
)
from engine.ledger.beside import ask_beside
from engine.ledger.lease import Holder
from engine.ledger.roles import Ledger
from engine.ledger.selection import RowFilter
from engine.ledger.store import FOUND_COLUMNS
from engine.run.loading import _insert_all
from engine.states import FAILED, IN_FLIGHT, PENDING, RETRYING, SELECTED, STATES, SUCCEEDED, UNKNOWN
from engine.wire import attempt_record


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def store(request, tmp_path):
    db = {"sqlite": str(tmp_path / "l.db"), "memory": MEMORY}.get(request.param) or request.getfixturevalue(
        "postgres_url"
    )
    with open_store(db) as opened:
        opened.create_run("r", input="in.csv", url="http://x/{id}", method="POST", options={"a": [1]}, not_before=None)
        yield opened


def rows(count: int, priority=lambda n: 0.0, start: int = 0) -> list[tuple]:
    """``count`` input rows as ``insert_requests`` takes them: (line, row_id, priority, payload, key)."""
    return [(n + 2, f"c{n}", priority(n), f'{{"id":"c{n}"}}', f"k:c{n}") for n in range(start, start + count)]


def answer(
    rid: int,
    outcome: str = SUCCEEDED,
    attempt: int = 1,
    status: int | None = 200,
    latency: float = 1.0,
    error: str | None = None,
    curl_error: int | None = None,
) -> tuple:
    return attempt_record(
        rid=rid,
        attempt=attempt,
        outcome=outcome,
        http_status=status,
        curl_error=curl_error,
        error=error,
        excerpt="ok",
        started_at=time.time(),
        duration_ms=latency,
    )


def rids(store, states=(PENDING,)) -> list[int]:
    return [row.rid for page in store.iter_pages("r", states) for row in page.rows]


def dead_holder() -> Holder:
    """A holder on this host whose process has exited."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    return Holder(socket.gethostname(), finished.pid, "dead")


def claim(store, run_id: str, holder: Holder, url: str = "http://x/{id}") -> None:
    store.claim_run(run_id, holder, input="in.csv", url=url, method="POST", options={}, not_before=None, timeout=30)


class TestRunBook:
    """Runs and loading: claimed once, loaded all or none, finished, dropped; rows chosen for a rerun."""

    def test_a_run_is_created_read_and_deleted(self, store):
        run = store.get_run("r")
        assert (run["state"], run["input"], run["options"], run["total"]) == ("loading", "in.csv", {"a": [1]}, 0)
        assert store.has_run("r") and not store.has_run("other")
        store.insert_requests("r", rows(3))
        store.record([answer(rid) for rid in rids(store)])
        store.delete_run("r")
        assert not store.has_run("r")
        with pytest.raises(LedgerError, match="no run 'nope'"):
            store.get_run("nope")

    def test_finish_load_names_an_earlier_run_with_the_same_fingerprint(self, store):
        assert store.finish_load("r", 0, "print-1") is None
        assert store.get_run("r")["state"] == "ready"
        store.create_run("r2", input="in.csv", url="u", method="POST", options={}, not_before=None)
        assert store.finish_load("r2", 0, "print-1") == "r"
        assert store.finish_load("r2", 0, "print-2") is None

    def test_duplicate_id_names_both_lines_and_leaves_nothing_of_its_batch(self, store):
        store.insert_requests("r", [(2, "a", 0.0, "{}", "r:a")])
        with pytest.raises(DuplicateRow) as caught:
            store.insert_requests("r", [(3, "b", 0.0, "{}", "r:b"), (4, "a", 0.0, "{}", "r:a")])
        assert (caught.value.row_id, caught.value.line, caught.value.first_line) == ("a", 4, 2)
        assert store.counts("r")["pending"] == 1

    def test_duplicate_key_names_the_first_and_the_second_line(self, store):
        assert store.duplicate_key("r") is None
        store.insert_requests(
            "r", [(2, "a", 0.0, "{}", "same"), (3, "b", 0.0, "{}", "other"), (4, "c", 0.0, "{}", "same")]
        )
        assert store.duplicate_key("r") == ("same", 2, 4)

    def test_a_run_id_is_claimed_once_and_a_dead_claimers_load_is_taken_over(self, store):
        me, other = Holder.this_process(), Holder("host-b", 2, "b")
        claim(store, "c", me)
        with pytest.raises(LeaseHeld, match=me.name):  # the second claimer is told who holds it
            claim(store, "c", other)
        assert store.acquire_lease("c", me, timeout=30) is None  # the claimer goes on to send it
        dead = dead_holder()
        claim(store, "d", dead)
        store.insert_requests("d", rows(3))
        claim(store, "d", me)  # its loader was killed: nothing was sent, the load starts over
        assert store.counts("d")[PENDING] == 0 and store.lease("d")["holder"] == me.name

    def test_a_run_that_finished_loading_is_never_claimed_again(self, store):
        store.finish_load("r", 0, "f")
        with pytest.raises(RunExists):
            claim(store, "r", Holder.this_process())

    def test_a_load_is_dropped_only_by_its_claimer_and_only_while_nothing_was_sent(self, store):
        me, other = Holder.this_process(), Holder("host-b", 2, "b")
        claim(store, "c", me)
        store.insert_requests("c", rows(2))
        assert not store.drop_load("c", other) and store.has_run("c")
        store.start_pass("c")
        assert not store.drop_load("c", me) and store.has_run("c")  # a pass started: it may have sent
        claim(store, "e", me)
        assert store.drop_load("e", me) and not store.has_run("e")

    def test_loads_abandoned_by_a_dead_process_are_dropped(self, store):
        claim(store, "dead", dead_holder())
        store.insert_requests("dead", rows(2))
        claim(store, "alive", Holder.this_process())
        assert store.drop_abandoned_loads() == 2  # "r" (no claimer: an older version's) and "dead"
        assert store.run_ids() == ["alive"]

    def test_rows_sent_to_the_same_destination_by_another_run_are_found(self, store):
        store.insert_requests("r", rows(4))
        first, second, *_ = rids(store)
        store.record([answer(first), answer(second, FAILED, status=500)])
        store.finish_load("r", 4, "f")
        claim(store, "new", Holder.this_process())
        store.insert_requests("new", rows(3, start=1))  # c1..c3: c1 failed in "r" (it was sent), c2, c3 never were
        assert store.sent_elsewhere("new", "http://x/{id}", "POST") == ("r", 1)
        assert store.sent_elsewhere("new", "http://other/{id}", "POST") is None
        assert store.sent_elsewhere("new", "http://x/{id}", "PUT") is None
        store.insert_requests("new", rows(1, start=0))
        assert store.sent_elsewhere("new", "http://x/{id}", "POST") == ("r", 2)

    def test_selected_rows_are_exactly_the_filtered_ones_and_never_a_success(self, store):
        store.insert_requests("r", rows(10))
        ids = rids(store)
        store.record([answer(rid, FAILED, status=503 if n < 5 else 500) for n, rid in enumerate(ids)])
        store.record([answer(ids[0], SUCCEEDED, attempt=2)])
        assert store.select_rows("r", RowFilter(states=(FAILED, SUCCEEDED), http_status=503)) == 4
        assert store.select_rows("r", RowFilter(states=(FAILED,)), row_ids=["c7", "c9", "nobody"]) == 2
        assert store.counts("r")[SELECTED] == 6 and store.counts("r")[SUCCEEDED] == 1


class TestPassLedger:
    """A pass's writes: pages in dispatch order, answers recorded, marks, passes, pauses, the lease."""

    def test_pages_come_by_priority_then_input_order(self, store):
        store.insert_requests("r", rows(10, priority=lambda n: float(n % 3)))
        sent = [row.row_id for page in store.iter_pages("r", (PENDING,), page=2) for row in page.rows]
        assert sent == [f"c{n}" for p in (2, 1, 0) for n in range(10) if n % 3 == p]
        first = next(store.iter_pages("r", (PENDING,)))
        assert first.level == 2.0
        assert first.rows[0]._asdict() == {
            "rid": first.rows[0].rid,
            "row_id": "c2",
            "payload": '{"id":"c2"}',
            "idempotency_key": "k:c2",
            "attempts": 0,
            "not_before": 0.0,
        }

    def test_recording_moves_each_row_to_its_outcome_and_keeps_every_attempt(self, store):
        store.insert_requests("r", rows(4))
        first, second, third, fourth = rids(store)
        store.record(
            [
                answer(first),
                answer(second, RETRYING, status=503),
                answer(third, FAILED, status=None, curl_error=7, error="curl 7: refused"),
            ]
        )
        store.record([answer(second, attempt=2, latency=5.0)])
        assert store.counts("r") == {**dict.fromkeys(STATES, 0), SUCCEEDED: 2, FAILED: 1, PENDING: 1}
        assert store.count_in("r", (PENDING, FAILED)) == 2
        assert store.row_totals("r").attempts == 4
        assert store.status_counts("r") == {"200": 2, "503": 1, "curl:7": 1}
        assert store.top_error("r") == ("curl 7: refused", 1)
        assert rids(store, (PENDING, FAILED)) == [third, fourth]

    def test_rows_in_states_are_counted_the_same_while_loading_and_once_loaded(self, store):
        store.insert_requests("r", rows(5))
        first, second, *_ = rids(store)
        store.record([answer(first), answer(second, FAILED, status=402, error=None)])

        def counted() -> tuple[int, ...]:
            return tuple(store.count_in("r", states) for states in ((PENDING,), (PENDING, FAILED), (SUCCEEDED,)))

        while_loading = counted()  # each row read
        store.finish_load("r", 5, "fingerprint")
        assert counted() == while_loading == (3, 4, 1)  # once loaded: the run's total less its sent rows

    def test_a_late_result_never_undoes_a_success(self, store):
        store.insert_requests("r", rows(1))
        (rid,) = rids(store)
        store.record([answer(rid)])
        store.record([answer(rid, RETRYING, attempt=2, status=503)])  # a chunk delivered twice, answered late
        assert store.counts("r")[SUCCEEDED] == 1
        assert store.status_counts("r") == {"200": 1, "503": 1}  # the attempt itself is kept

    def test_a_rows_latest_attempt_wins_whatever_order_its_attempts_are_recorded_in(self, store):
        store.insert_requests("r", rows(3))
        first, second, third = rids(store)
        # one batch: attempts with different fields absent (recorded by different statements), the
        # second row's newer attempt listed before its older one
        store.record(
            [
                answer(first, RETRYING, status=None, curl_error=28, error="curl 28: timed out"),
                answer(second, FAILED, attempt=2, status=402, error=None),
                answer(second, RETRYING, status=503),
            ]
        )
        store.record([answer(first, RETRYING, attempt=3, status=429)])
        store.record([answer(first, FAILED, attempt=2, status=None, curl_error=7, error="curl 7: refused")])  # late
        found = {row["row_id"]: row for row in store.iter_rows("r", (RETRYING, FAILED))}
        assert (found["c0"]["status"], found["c0"]["http_status"], found["c0"]["attempts"]) == (RETRYING, 429, 3)
        assert (found["c1"]["status"], found["c1"]["http_status"], found["c1"]["attempts"]) == (FAILED, 402, 2)
        assert store.row_totals("r").attempts == 5  # every attempt itself is kept
        # a success reported late (its node could not reach the ledger) still counts: that customer was charged
        store.record([answer(third, FAILED, attempt=2, status=500)])
        store.record([answer(third)])
        assert store.counts("r")[SUCCEEDED] == 1

    def test_marks_move_rows_between_states(self, store):
        store.insert_requests("r", rows(4))
        every = rids(store)
        store.mark_in_flight(every[:2])
        assert store.counts("r")[IN_FLIGHT] == 2
        assert store.mark_unknown("r", (IN_FLIGHT,), "outcome unknown: test") == 2
        assert store.mark_state("r", (PENDING,), RETRYING) == 2
        assert (store.counts("r")[UNKNOWN], store.counts("r")[RETRYING]) == (2, 2)
        assert store.top_error("r") == ("outcome unknown: test", 2)

    def test_passes_are_numbered_and_timed(self, store):
        assert store.start_pass("r") == 1
        assert store.get_run("r")["state"] == "running"
        store.end_pass("r", 1, "interrupted")
        assert store.get_run("r")["state"] == "interrupted"
        assert store.start_pass("r") == 2
        assert store.elapsed("r") >= 0.0

    def test_a_run_is_paused_and_resumed(self, store):
        assert not store.is_paused("r")
        store.set_paused("r", True)
        assert store.is_paused("r")
        store.set_paused("r", False)
        assert not store.is_paused("r")

    def test_pauses_are_kept_per_pass_and_end_with_it(self, store):
        first = store.start_pass("r")
        store.pause_began("r", "endpoint down")
        store.pause_ended("r", "endpoint down")
        store.pause_began("r", "operator")  # still paused when the pass ends
        store.end_pass("r", first, "interrupted")
        store.start_pass("r")
        store.pause_ended("r", "operator")  # ends nothing: the pause ended with its pass
        first_pass, second_pass = store.passes("r")
        assert [(q["reason"], q["ended_at"] is not None) for q in first_pass["pauses"]] == [
            ("endpoint down", True),
            ("operator", True),
        ]
        assert first_pass["pauses"][1]["ended_at"] == first_pass["finished_at"]
        assert second_pass["pauses"] == [] and second_pass["finished_at"] is None

    def test_one_lease_per_run_renewed_by_its_holder_and_kept_after_an_unclean_end(self, store):
        first, second = Holder("host-a", 1, "a"), Holder("host-b", 2, "b")
        assert store.acquire_lease("r", first, timeout=30) is None
        store.renew_lease("r", first, frontier=(0.0, 10))
        assert store.lease("r")["frontier_rid"] == 10
        with pytest.raises(LeaseHeld):
            store.acquire_lease("r", second, timeout=30)
        store.release_lease("r", first, clean=False)  # requests may be in flight: the lease stays, ownerless
        hold = store.acquire_lease("r", second, timeout=30)
        assert hold is not None and hold.frontier == (0.0, 10) and hold.until > time.time()
        with pytest.raises(LeaseLost):
            store.renew_lease("r", first)
        store.release_lease("r", second, clean=True)
        assert store.lease("r") is None


class TestChunkLedger:
    """Chunks for worker nodes: planned, claimed under a fencing token, queued again, retired, finished."""

    def test_chunks_are_planned_in_dispatch_order_and_claimed_by_one_node(self, store):
        store.insert_requests("r", rows(5, priority=lambda n: float(n == 4)))
        first, second, third = store.plan_chunks("r", 1, (PENDING,), size=2)
        assert [row.row_id for row in store.claim_chunk(first, "node-a", max_deliveries=3).rows] == ["c4", "c0"]
        assert store.chunk_counts("r", 1) == {"queued": 2, "running": 1, "done": 0, "dead": 0}
        claim = store.claim_chunk(third, "node-b", max_deliveries=3)
        assert [row.row_id for row in claim.rows] == ["c3"]
        assert store.finish_chunk(claim, [answer(claim.rows[0].rid)])
        assert store.claim_chunk(third, "node-c", max_deliveries=3) is None  # done: a redelivery sends nothing
        assert store.counts("r")[SUCCEEDED] == 1 and store.chunk_counts("r", 1)["done"] == 1

    def test_a_silent_chunk_is_queued_again_and_dead_lettered_after_too_many_deliveries(self, store):
        store.insert_requests("r", rows(2))
        (chunk,) = store.plan_chunks("r", 1, (PENDING,), size=10)
        assert len(store.claim_chunk(chunk, "node-a", max_deliveries=2).rows) == 2
        assert store.silent_chunks("r", 1, silent_for=60) == []
        time.sleep(0.05)
        assert store.silent_chunks("r", 1, silent_for=0.01) == [chunk]
        assert len(store.claim_chunk(chunk, "node-b", max_deliveries=2).rows) == 2  # nothing was recorded: all again
        assert store.claim_chunk(chunk, "node-c", max_deliveries=2) is None  # node-b is on it: no second copy
        assert store.chunk_counts("r", 1)["dead"] == 0
        time.sleep(0.05)
        assert store.silent_chunks("r", 1, silent_for=0.01) == [chunk]
        assert store.claim_chunk(chunk, "node-c", max_deliveries=2) is None  # a third delivery: dead-lettered
        assert store.chunk_counts("r", 1)["dead"] == 1
        assert store.counts("r")[PENDING] == 2  # a dead chunk's rows wait for a rerun
        assert store.chunk_summary("r") == {"chunks": 1, "dead": 1, "resent": 1, "refused": 1}

    def test_a_run_that_never_used_nodes_has_no_chunk_summary(self, store):
        store.insert_requests("r", rows(2))
        assert store.chunk_summary("r") is None

    def test_a_new_pass_retires_untaken_chunks_and_waits_for_those_a_live_node_sends(self, store):
        store.insert_requests("r", rows(6))
        taken, silent, untaken = store.plan_chunks("r", 1, (PENDING,), size=2)
        claim = store.claim_chunk(taken, "node-a", max_deliveries=3)
        store.claim_chunk(silent, "node-b", max_deliveries=3)
        time.sleep(0.2)
        assert store.renew_chunk(claim)
        assert store.retire_chunks("r", silent_for=0.1) == 1  # node-a is still sending: wait for it
        assert store.claim_chunk(untaken, "node-c", max_deliveries=3) is None  # retired: its message is refused
        assert store.claim_chunk(silent, "node-c", max_deliveries=3) is None  # silent: retired too
        assert store.finish_chunk(claim, [])
        assert store.retire_chunks("r", silent_for=0.1) == 0
        assert store.chunk_summary("r")["refused"] == 2

    def test_chunks_waiting_for_a_node_are_found_once_then_again_after_the_wait(self, store):
        store.insert_requests("r", rows(4))
        first, second = store.plan_chunks("r", 1, (PENDING,), size=2)
        store.claim_chunk(first, "node-a", max_deliveries=3)
        assert store.waiting_chunks("r", 1, queued_for=60) == []
        assert store.waiting_chunks("r", 1, queued_for=-1) == [second]  # its queue time is now
        assert store.waiting_chunks("r", 1, queued_for=5) == []

    def test_every_claim_gets_a_new_fencing_token_and_a_stale_one_cannot_renew(self, store):
        store.insert_requests("r", rows(2))
        (chunk,) = store.plan_chunks("r", 1, (PENDING,), size=10)
        frozen = store.claim_chunk(chunk, "node-a", max_deliveries=3)
        assert store.renew_chunk(frozen)
        time.sleep(0.05)
        assert store.silent_chunks("r", 1, silent_for=0.01) == [chunk]
        assert not store.renew_chunk(frozen)  # queued again: the claim is gone
        current = store.claim_chunk(chunk, "node-b", max_deliveries=3)
        assert current.generation == frozen.generation + 1
        assert not store.renew_chunk(frozen) and store.renew_chunk(current)
        same_name = store.claim_chunk(chunk, "node-b", max_deliveries=3, busy_for=-1)  # the same node, claiming again
        assert not store.renew_chunk(current) and store.renew_chunk(same_name)

    def test_results_under_a_stale_token_are_kept_as_superseded_never_as_the_outcome(self, store):
        store.insert_requests("r", rows(2))
        (chunk,) = store.plan_chunks("r", 1, (PENDING,), size=10)
        frozen = store.claim_chunk(chunk, "node-a", max_deliveries=3)
        time.sleep(0.05)
        store.silent_chunks("r", 1, silent_for=0.01)
        current = store.claim_chunk(chunk, "node-b", max_deliveries=3)
        first, second = (row.rid for row in current.rows)
        assert store.finish_chunk(current, [answer(first, FAILED, status=500)], complete=False)
        late = [answer(first), answer(second)]  # the frozen node woke up and brings its (older) results
        assert not store.finish_chunk(frozen, late)
        assert store.counts("r")[FAILED] == 1 and store.counts("r")[PENDING] == 1  # untouched by the stale results
        assert store.chunk_counts("r", 1)["running"] == 1  # not marked done under the stale token
        outcomes = [(a["attempt"], a["outcome"]) for a in store.row_attempts(first)]
        assert outcomes == [(1, FAILED), (1 + frozen.generation * 1_000_000, "superseded")]
        assert [a["outcome"] for a in store.row_attempts(second)] == ["superseded"]
        assert store.finish_chunk(current, [answer(second)])
        assert store.chunk_counts("r", 1)["done"] == 1

    def test_a_ledger_has_one_identity(self, store, tmp_path):
        assert store.ledger_id() == store.ledger_id()
        with open_store(str(tmp_path / "other.db")) as other:
            assert other.ledger_id() != store.ledger_id()


class TestLedgerReader:
    """What reports and the dashboard read: rows found and exported, percentiles, runs listed."""

    def test_rows_are_exported_in_input_order_with_the_export_columns(self, store):
        store.insert_requests("r", rows(3))
        first, second, _ = rids(store)
        store.record([answer(first, latency=1.23456), answer(second, FAILED, status=402, error=None)])
        exported = list(store.iter_rows("r", (SUCCEEDED, FAILED)))
        assert [tuple(row) for row in exported] == [FOUND_COLUMNS] * 2
        assert [
            (row["row_id"], row["line"], row["status"], row["http_status"], row["idempotency_key"]) for row in exported
        ] == [("c0", 2, SUCCEEDED, 200, "k:c0"), ("c1", 3, FAILED, 402, "k:c1")]
        assert exported[0]["latency_ms"] == 1.235
        assert list(store.iter_rows("r", (UNKNOWN,))) == []

    def test_a_filter_finds_exactly_its_rows_in_stable_keyset_pages(self, store):
        store.insert_requests("r", rows(30))
        ids = rids(store)
        store.record(
            [
                answer(rid, FAILED, status=503 if n % 3 == 0 else 402, error=f"HTTP error n{n}")
                for n, rid in enumerate(ids)
            ]
        )
        store.record([answer(ids[1], SUCCEEDED, attempt=2)])
        only_503 = RowFilter(states=(FAILED,), http_status=503)
        pages, after = [], 0
        while page := store.find_rows("r", only_503, after_rid=after, limit=4):
            pages.append([row["row_id"] for row in page])
            after = page[-1]["rid"]
        assert [len(p) for p in pages] == [4, 4, 2]
        assert sum(pages, []) == [f"c{n}" for n in range(0, 30, 3)]
        assert [r["row_id"] for r in store.find_rows("r", RowFilter(error_contains="ERROR N1"))] == [
            f"c{n}" for n in (10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
        ]  # any case; c1 succeeded since
        assert store.find_rows("r", RowFilter(error_contains="%"), limit=5) == []  # a wildcard is a plain character
        assert store.find_rows("r", RowFilter(row_ids=("c4",)))[0]["excerpt"] is not None

    def test_percentiles_are_nearest_rank(self, store):
        store.insert_requests("r", rows(100))
        store.record([answer(rid, latency=float(n)) for n, rid in enumerate(rids(store), 1)])
        assert store.latency_percentiles("r", (0.5, 0.95, 0.99)) == {0.5: 50.0, 0.95: 95.0, 0.99: 99.0}

    def test_percentiles_of_an_empty_run(self, store):
        assert store.latency_percentiles("r", (0.5,)) == {0.5: None}

    def test_percentiles_take_the_count_of_ranked_rows_once_sorted(self, store):
        store.insert_requests("r", rows(10))
        store.record([answer(rid, latency=float(n)) for n, rid in enumerate(rids(store), 1)])
        counted_at: list[str] = []
        ranked = store.latency_percentiles("r", (0.5, 0.99), lambda: counted_at.append("asked") or 10)
        assert ranked == store.latency_percentiles("r", (0.5, 0.99)) == {0.5: 5.0, 0.99: 10.0}
        assert counted_at == ([] if store.location.startswith("postgresql") else ["asked"])  # the server counts

    def test_row_totals_add_up_attempts_replays_and_answered_rows_in_one_scan(self, store):
        store.insert_requests("r", rows(5))
        first, second, third, fourth, _ = rids(store)
        replayed = attempt_record(rid=third, attempt=1, outcome=SUCCEEDED, http_status=200, started_at=1.0, replayed=1)
        store.record(
            [
                answer(first, RETRYING, status=503),
                answer(second, FAILED, status=None, curl_error=7, error="curl 7: refused"),
                replayed,
                answer(fourth, UNKNOWN, status=None, error="no answer recorded"),
            ]
        )
        store.record([answer(first, attempt=2)])
        assert store.row_totals("r") == (5, 1, 2)  # attempts; third's replay; first and third answered
        assert store.row_totals("nothing") == (0, 0, 0)

    def test_statuses_are_counted_per_answer_in_order_an_attempt_with_neither_first(self, store):
        store.insert_requests("r", rows(4))
        first, second, third, fourth = rids(store)
        store.record(
            [
                answer(first, RETRYING, status=503),
                answer(second, FAILED, status=None, curl_error=28, error="curl 28: timed out"),
                answer(third, UNKNOWN, status=None, error="no answer recorded"),
                answer(fourth, RETRYING, status=None, curl_error=7, error="curl 7: refused"),
            ]
        )
        store.record([answer(first, attempt=2), answer(fourth, attempt=2)])
        counted = store.status_counts("r")
        assert list(counted.items()) == [(None, 1), ("200", 2), ("503", 1), ("curl:28", 1), ("curl:7", 1)]

    def test_a_question_asked_beside_gets_its_own_connection_and_sees_what_was_committed(self, store):
        store.insert_requests("r", rows(3))
        store.record([answer(rid) for rid in rids(store)])
        asked = ask_beside(
            store, lambda beside: (beside is store, threading.get_ident(), beside.row_totals("r").attempts)
        )
        same, thread, attempts = asked()
        in_memory = store.location == MEMORY  # only its own connection sees it: asked there
        assert attempts == 3
        assert same is in_memory and (thread == threading.get_ident()) is in_memory

    def test_an_error_beside_is_raised_where_its_answer_is_awaited(self, store):
        def missing(beside):
            return beside.get_run("no-such-run")

        asked = ask_beside(store, missing)
        with pytest.raises(LedgerError):
            asked()

    def test_runs_are_listed_oldest_first_with_their_counts(self, store):
        store.insert_requests("r", rows(2))
        store.create_run("r2", input="b.csv", url="u", method="POST", options={}, not_before=None)
        listed = store.list_runs()
        assert [run["run_id"] for run in listed] == ["r", "r2"]
        assert listed[0][PENDING] == 2 and listed[1][PENDING] == 0


def test_sqlite_records_the_same_a_row_a_statement_or_many_rows_a_statement(tmp_path, monkeypatch):
    """SQLite before 3.33 updates one row a statement; from 3.33 on many rows a statement, a row's attempts
    in turns. Batches mixing retries, late older attempts, repeats and successes of the same rows end the
    same both ways."""
    chance = random.Random(5)
    outcomes = (RETRYING, RETRYING, FAILED, UNKNOWN, SUCCEEDED)

    def attempt(rid: int, number: int) -> tuple:
        answered = chance.random() < 0.7
        return answer(
            rid,
            chance.choice(outcomes),
            attempt=number,
            status=chance.choice((200, 402, 503)) if answered else None,
            latency=chance.uniform(1, 100),
            error=None if answered else "curl 28: timed out",
            curl_error=None if answered else 28,
        )

    # each row's attempts 1..n, numbered once each, shuffled into batches: late, older ones arrive after newer
    made = [attempt(rid, number) for rid in range(1, 41) for number in range(1, chance.randint(2, 12))]
    chance.shuffle(made)
    batches = [made[start : start + 100] for start in range(0, len(made), 100)]

    def recorded(update_from: bool) -> list[tuple]:
        monkeypatch.setattr(sqlite_rows, "_UPDATE_FROM", update_from)
        with open_store(str(tmp_path / f"{update_from}.db")) as store:
            store.create_run("r", input="in.csv", url="http://x/{id}", method="POST", options={}, not_before=None)
            store.insert_requests("r", rows(40))
            for batch in batches:
                store.record(batch)
            return store.conn.execute(
                "SELECT rid, status, attempts, http_status, curl_error, error, latency_ms FROM requests ORDER BY rid"
            ).fetchall()

    many, one = recorded(True), recorded(False)
    assert many == one
    assert {row[1] for row in one} >= {SUCCEEDED, RETRYING}  # the batches did move the rows


@pytest.mark.parametrize("first_batch", [1, 2], ids=["earlier batch", "same batch"])
def test_a_duplicate_id_in_a_load_transaction_names_its_first_line(store, first_batch):
    """A load's transaction takes several batches: a duplicate names the line of its first occurrence,
    though that row is not committed yet, and never a row of its own batch for itself."""
    batches = [rows(150), rows(150, start=150)]
    again = first_batch * 150 - 20  # its first line is again + 2
    batches[1].append((999, f"c{again}", 0.0, "{}", "k:again"))  # in the batch's second statement of 100 rows
    with pytest.raises(InputError) as refused:
        _insert_all(store, "r", batches, lambda: True, "in.csv", "id", lambda total: None, hashlib.sha256())
    assert refused.value.line == 999
    assert f"duplicate id 'c{again}' (first on line {again + 2})" in str(refused.value)


ROLES = (RunBook, PassLedger, ChunkLedger, LedgerReader)


def test_the_store_is_exactly_the_union_of_its_roles_and_each_method_has_one_role():
    life = set(Ledger.__abstractmethods__)
    owned = [set(role.__abstractmethods__) - life for role in ROLES]
    assert set(Store.__abstractmethods__) == life.union(*owned)
    assert sum(map(len, owned)) == len(set().union(*owned))  # no method is in two roles
    assert all(issubclass(Store, role) for role in ROLES)


def test_a_ledger_in_memory_is_its_own_and_gone_once_closed():
    with open_store(MEMORY) as memory:
        assert isinstance(memory, Store) and not memory.has_run("r")
        memory.create_run("m", input="-", url="http://x/{id}", method="POST", options={}, not_before=None)
        memory.insert_requests("m", rows(3))
        assert memory.counts("m")[PENDING] == 3
    with open_store(MEMORY) as again:
        assert not again.has_run("m")
