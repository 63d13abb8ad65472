#!/usr/bin/env python3
"""What recording a result costs PostgreSQL per index of ``requests``: the floor of the record path.

Recording moves a row to its outcome; its ``status`` is in two partial indexes (rows sent, rows
unsettled), so the update cannot be HOT and the new row version gets an entry in every index of
the table. This loads N rows into a fresh ledger, drops some indexes (never on a real ledger),
then records one success per row with the store's own ``record`` in the coordinator's batches,
and prints the CPU per row of this process and of its server backend for each index set:
what each index costs, and what recording costs once no index blocks a HOT update.

Example:
    python bench/pg_record_floor.py                 # 50,000 rows, 2 rounds
    python bench/pg_record_floor.py --rows 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_seconds, fresh_postgres, record, table  # noqa: E402

from engine.ledger import open_store  # noqa: E402
from engine.run.passes import LEDGER_BATCH  # noqa: E402
from engine.wire import attempt_record  # noqa: E402

#: Index sets, as the indexes dropped from the declared schema.
DROPPED = {
    "all indexes (as shipped)": (),
    "without (run_id, priority, rid)": ("idx_requests_run_id_priority_rid",),
    "without it and (run_id, row_id)": ("idx_requests_run_id_priority_rid", "idx_requests_run_id_row_id"),
    "pk only, status unindexed (HOT)": (
        "idx_requests_run_id_priority_rid",
        "idx_requests_run_id_row_id",
        "requests_sent",
        "requests_unsettled",
    ),
}


def record_cost(rows: int, dropped: tuple[str, ...]) -> tuple[float, float, float]:
    """µs per row to record one success each: client, server, and the share of HOT updates."""
    with fresh_postgres() as db, open_store(db) as ledger:
        ledger.create_run("bench", input="-", url="http://127.0.0.1:9/", method="POST", options={}, not_before=None)
        payload = '{"id":"cus_%07d","amount_cents":%d,"currency":"eur"}'
        batch = [(n + 2, f"cus_{n:07d}", 0.0, payload % (n, n % 5000), f"key-{n:032d}") for n in range(rows)]
        for i in range(0, rows, 2000):
            ledger.insert_requests("bench", batch[i : i + 2000])
        for name in dropped:
            ledger.conn.execute(f"DROP INDEX {name}")
        ledger.conn.execute("VACUUM ANALYZE requests")
        rids = [rid for (rid,) in ledger.conn.execute("SELECT rid FROM requests ORDER BY rid").fetchall()]
        now = time.time()
        results = [
            attempt_record(rid=rid, attempt=1, outcome="succeeded", http_status=200, excerpt='{"ok":true}',
                           started_at=now, duration_ms=1.5)
            for rid in rids
        ]  # fmt: skip
        backend = ledger.conn.info.backend_pid
        client, server = time.process_time(), cpu_seconds(backend)
        for i in range(0, rows, LEDGER_BATCH):
            ledger.record(results[i : i + LEDGER_BATCH])
        client, server = time.process_time() - client, cpu_seconds(backend) - server
        time.sleep(1.1)  # a backend flushes its statistics when idle, at most once a second
        ledger.conn.execute("SELECT 1")
        time.sleep(0.1)
        updated, hot = ledger.conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'requests'"
        ).fetchone()
    return client / rows * 1e6, server / rows * 1e6, hot / max(updated, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="each index set this many times, alternating")
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in DROPPED}
    for _ in range(args.rounds):
        for name, dropped in DROPPED.items():
            figures[name].append(record_cost(args.rows, dropped))
    rows = []
    for name, runs in figures.items():
        client, server, hot = (sum(values) / len(values) for values in zip(*runs, strict=True))
        record("pg_record_floor", f"record µs/row, {name}", round(client + server, 2), "us", rows=args.rows)
        rows.append([name, f"{client:.2f}", f"{server:.1f}", f"{client + server:.1f}", f"{hot:.2f}"])
    print(f"\n{args.rows} rows, one success each recorded in batches of {LEDGER_BATCH}; mean of {args.rounds} rounds\n")
    print(table(["indexes of requests", "client µs/row", "server µs/row", "total", "HOT share"], rows))


if __name__ == "__main__":
    main()
