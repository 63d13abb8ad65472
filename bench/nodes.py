#!/usr/bin/env python3
"""Window use on a worker node: one chunk at a time versus several chunks in flight, same window.

A node that sends one 100-row chunk at a time idles its slots at each chunk's tail, while
the slowest requests finish; several chunks in flight (each with its own CurlMulti) overlap
those tails. Both runs keep the same window (rows in flight at most) against the mock API
with latencies uniform in 0.1-3.0 s, through a real Redis broker and PostgreSQL ledger on
127.0.0.1; in-flight requests are reconstructed from the ledger's attempts every 100 ms.

Example:
    python bench/nodes.py                 # 4,000 rows, window 100
    python bench/nodes.py --rows 1000     # a smoke run
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import tempfile

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import bill_through_nodes, fresh_postgres, record, table, worker_nodes, write_rows  # noqa: E402

from engine.mock.process import MockProcess  # noqa: E402


def run_one(rows: int, window: int, chunks_in_flight: int, csv_path: str) -> dict:
    with fresh_postgres() as db, worker_nodes(1, db, "--chunks-in-flight", chunks_in_flight):
        with MockProcess(latency=1.55, jitter=1.45) as api:
            wall = bill_through_nodes(
                csv_path, api.charge_url(), db, "w", "--chunks", 100, "--concurrency", window // chunks_in_flight
            )
        with psycopg.connect(db) as conn:
            spans = conn.execute("SELECT started_at, started_at + duration_ms / 1000.0 FROM attempts").fetchall()
            last = conn.execute("SELECT max(started_at) FROM attempts").fetchone()[0]
    starts, ends = sorted(s for s, _ in spans), sorted(e for _, e in spans)
    samples, t = [], starts[0] + 3.0  # after the first chunks have started
    while t < last:
        samples.append(bisect.bisect(starts, t) - bisect.bisect(ends, t))
        t += 0.1
    return {
        "chunks_in_flight": chunks_in_flight,
        "window": window,
        "wall_s": round(wall, 2),
        "mean_share": round(sum(samples) / len(samples) / window, 3),
        "samples": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-nodes-") as directory:
        csv_path = os.path.join(directory, "rows.csv")
        write_rows(csv_path, args.rows)
        results = [run_one(args.rows, args.window, n, csv_path) for n in (1, 4)]
    for result in results:
        record(
            "nodes",
            f"mean in-flight share, {result['chunks_in_flight']} chunks in flight",
            result["mean_share"],
            "share",
            rows=args.rows,
            **result,
        )
    print(f"\n{args.rows} rows, one node, window {args.window}, latency uniform in 0.1-3.0 s\n")
    print(
        table(
            ["chunks in flight", "rows in flight per chunk", "mean in flight / window", "wall (s)"],
            [
                [r["chunks_in_flight"], r["window"] // r["chunks_in_flight"], r["mean_share"], r["wall_s"]]
                for r in results
            ],
        )
    )
    speedup = results[0]["wall_s"] / results[1]["wall_s"]
    print(f"\n4 chunks in flight finish {speedup:.2f} x faster than one chunk at a time, with the same window")


if __name__ == "__main__":
    main()
