"""The ledger on a real SQLite file: percentiles, paging order, duplicate ids."""

import pytest

from engine.ledger import DuplicateRow, Ledger
from engine.wire import Attempt


@pytest.fixture
def ledger(tmp_path):
    with Ledger(str(tmp_path / "l.db")) as opened:
        opened.create_run("r", input="in.csv", url="http://x/{id}", method="POST", options={}, not_before=None)
        yield opened


def test_percentiles_are_nearest_rank(ledger):
    ledger.insert_requests("r", [(n + 1, str(n), 0.0, "{}", f"r:{n}") for n in range(1, 101)])
    ledger.record([Attempt(rid, 1, "succeeded", 200, None, None, None, 0.0, float(rid)) for rid in range(1, 101)])
    result = ledger.latency_percentiles("r", (0.5, 0.95, 0.99))
    assert result == {0.5: 50.0, 0.95: 95.0, 0.99: 99.0}


def test_percentiles_of_an_empty_run(ledger):
    assert ledger.latency_percentiles("r", (0.5,)) == {0.5: None}


def test_pages_come_by_priority_then_input_order(ledger):
    rows = [(n + 1, f"c{n}", float(n % 3), "{}", f"r:c{n}") for n in range(10)]
    ledger.insert_requests("r", rows)
    sent = [row.row_id for page in ledger.iter_to_send("r", ("pending",), page=2) for row in page]
    assert sent == [f"c{n}" for p in (2, 1, 0) for n in range(10) if n % 3 == p]


def test_duplicate_id_names_both_lines(ledger):
    ledger.insert_requests("r", [(2, "a", 0.0, "{}", "r:a")])
    with pytest.raises(DuplicateRow) as caught:
        ledger.insert_requests("r", [(3, "b", 0.0, "{}", "r:b"), (4, "a", 0.0, "{}", "r:a")])
    assert (caught.value.line, caught.value.first_line) == (4, 2)
    assert ledger.counts("r")["pending"] == 1  # the failed batch left nothing behind
