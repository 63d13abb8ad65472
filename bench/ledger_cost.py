#!/usr/bin/env python3
"""Ledger cost: coordinator CPU per row for loading and for recording results.

Loads N rows into a fresh ledger the way ``bill`` does (parse, validate, encode, insert)
and then records one successful attempt per row in the batches the coordinator uses,
timing each with ``time.process_time``.

Example:
    python bench/ledger_cost.py                  # 200,000 rows
    python bench/ledger_cost.py --rows 2000      # a smoke run
    python bench/ledger_cost.py --rows 1000000 --load-wall   # and the load's wall time, read ahead or not
    python bench/ledger_cost.py --rows 1000000 --load-wall --random-ids   # ids in no order, as real ones
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import cpu_seconds, record, table, write_rows  # noqa: E402

from engine.config import RunSettings  # noqa: E402
from engine.ledger import open_store  # noqa: E402
from engine.request.inputs import read_rows  # noqa: E402
from engine.request.template import CompiledRequest  # noqa: E402
from engine.run.loading import load_rows  # noqa: E402
from engine.run.passes import LEDGER_BATCH  # noqa: E402
from engine.wire import attempt_record  # noqa: E402


def backend_cpu(ledger) -> float:
    """CPU seconds the ledger's server backend has used (0 for SQLite, which runs in this process)."""
    conn = getattr(ledger, "conn", None)
    if conn is None or not hasattr(conn, "info") or not hasattr(conn.info, "backend_pid"):
        return 0.0
    return cpu_seconds(conn.info.backend_pid)


def ledger_cost(db: str, rows: int, random_ids: bool = False) -> dict[str, dict[str, float]]:
    """CPU µs per row to load ``rows`` rows into ``db`` and to record one result each: this process
    (``client``) and, for PostgreSQL, its server backend (``server``). Loading is counted whole
    (parse, validate, encode, insert) and as the ledger's part alone (the inserts)."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as directory:
        path = os.path.join(directory, "rows.csv")
        write_rows(path, rows, random_ids)
        settings = RunSettings(url="http://127.0.0.1:9/v1/customers/{id}/charges")
        with open_store(db if "://" in db else os.path.join(directory, db)) as ledger:
            ledger.create_run("bench", input=path, url=settings.url, method="POST", options={}, not_before=None)
            inserting = _timed(ledger, "insert_requests")
            client, server = time.process_time(), backend_cpu(ledger)
            load_rows(
                ledger, "bench", read_rows(path, "csv", "id"), settings, CompiledRequest(settings.request_spec()), path
            )
            load = {"client": time.process_time() - client, "server": backend_cpu(ledger) - server}
            insert = {"client": inserting[0], "server": load["server"]}
            rids = [row.rid for page in ledger.iter_pages("bench", ("pending",)) for row in page.rows]
            now = time.time()
            results = [
                attempt_record(
                    rid=rid,
                    attempt=1,
                    outcome="succeeded",
                    http_status=200,
                    excerpt='{"ok":true}',
                    started_at=now,
                    duration_ms=1.5,
                )
                for rid in rids
            ]
            client, server = time.process_time(), backend_cpu(ledger)
            for i in range(0, len(results), LEDGER_BATCH):
                ledger.record(results[i : i + LEDGER_BATCH])
            recorded = {"client": time.process_time() - client, "server": backend_cpu(ledger) - server}
    return {
        step: {side: round(seconds / rows * 1e6, 2) for side, seconds in sides.items()}
        for step, sides in (("load", load), ("load: the ledger's part", insert), ("record", recorded))
    }


def load_wall(rows: int, rounds: int = 2, random_ids: bool = False) -> dict[str, list[float]]:
    """Wall seconds to load ``rows`` rows into a fresh SQLite ledger, in this process and read ahead by a
    forked reader (as ``bill`` loads a file, or its standard input), alternating, ``rounds`` times each."""
    settings = RunSettings(url="http://127.0.0.1:9/v1/customers/{id}/charges")
    ways = (("in one process", False, False), ("read ahead", True, False), ("standard input, read ahead", True, True))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in ways}
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as directory:
        path = os.path.join(directory, "rows.csv")
        write_rows(path, rows, random_ids)
        for round_no in range(rounds):
            for name, ahead, stdin in ways:
                with open_store(os.path.join(directory, f"{round_no}-{name}.db")) as ledger, open(path) as given:
                    ledger.create_run("bench", input=path, url=settings.url, method="POST", options={}, not_before=None)
                    source, sys.stdin = ("-", given) if stdin else (path, sys.__stdin__)
                    started = time.perf_counter()
                    request = CompiledRequest(settings.request_spec())
                    load_rows(ledger, "bench", read_rows(source, "csv", "id"), settings, request, path, ahead=ahead)
                    walls[name].append(round(time.perf_counter() - started, 2))
                    sys.stdin = sys.__stdin__
    return walls


def _timed(ledger, method: str) -> list[float]:
    """Count the process time spent in ``ledger.method`` into the one-item list returned."""
    spent, call = [0.0], getattr(ledger, method)

    def timed(*args, **kwargs):
        started = time.process_time()
        try:
            return call(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - started

    setattr(ledger, method, timed)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--db", default="ledger.db", help="a SQLite file name (in a temporary folder) or a URL")
    parser.add_argument("--load-wall", action="store_true", help="also the load's wall time, read ahead or not")
    parser.add_argument("--random-ids", action="store_true", help="ids in no particular order, as real ones are")
    args = parser.parse_args()
    cost = ledger_cost(args.db, args.rows, args.random_ids)
    load_us, record_us = cost["load"]["client"], cost["record"]["client"]
    record("ledger_cost", "load µs/row", load_us, "us", rows=args.rows, db=args.db.split(":")[0])
    record("ledger_cost", "record µs/row", record_us, "us", rows=args.rows, batch=LEDGER_BATCH)
    print(f"\n{args.rows} rows, coordinator CPU (process time)\n")
    print(
        table(
            ["step", "µs per row"],
            [
                ["load: parse, validate, encode, insert (write-ahead)", f"{load_us:.1f}"],
                [f"record a result (batches of {LEDGER_BATCH})", f"{record_us:.1f}"],
            ],
        )
    )

    if args.load_wall:
        walls = load_wall(args.rows, random_ids=args.random_ids)
        print(f"\nloading {args.rows} rows into a fresh SQLite ledger, wall seconds (alternating)\n")
        print(table(["load", "wall (s)"], [[name, ", ".join(map(str, seconds))] for name, seconds in walls.items()]))


if __name__ == "__main__":
    main()
