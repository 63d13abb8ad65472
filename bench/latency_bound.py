#!/usr/bin/env python3
"""Latency-bound benchmark: N rows against the mock API at 1.6 s per request.

For each in-flight total (workers x concurrency) it runs ``python -m engine bill`` end
to end and compares the wall time with the floor, ceil(N / in-flight) x latency.

It then checks for chunk-tail stalls: with latencies drawn from 0.1-3 s, it samples the
transfers in flight every 100 ms (from the ledger's attempt times), from the moment the
window first fills until the last row is dispatched, and prints the lowest share of the
window that was in use.

Example:
    python bench/latency_bound.py                 # 10,000 rows at 1,000 / 2,000 / 5,000 in flight
    python bench/latency_bound.py --rows 500 --in-flight 100 --tail-rows 500   # a smoke run
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import engine, record, report, table  # noqa: E402

from engine.mock.demo import write_customers  # noqa: E402
from engine.mock.process import MockProcess  # noqa: E402


def run_one(rows: int, in_flight: int, workers: int, latency: float, directory: str, jitter: float = 0.0) -> dict:
    customers = os.path.join(directory, f"customers-{rows}.csv")
    if not os.path.exists(customers):
        write_customers(customers, rows)
    db = os.path.join(directory, f"latency-{in_flight}-{jitter}.db")
    with MockProcess(latency=latency, jitter=jitter) as api:
        started = time.perf_counter()
        done = engine(
            "bill",
            customers,
            "--url",
            api.charge_url(),
            "--db",
            db,
            "--run-id",
            "bench",
            "--workers",
            workers,
            "--concurrency",
            math.ceil(in_flight / workers),
            "--quiet",
        )
        wall = time.perf_counter() - started
        stats = api.stats()
    if done.returncode != 0:
        raise SystemExit(f"engine failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = report(db, "bench")
    floor = math.ceil(rows / in_flight) * latency
    return {
        "in_flight": in_flight,
        "wall_s": round(wall, 2),
        "floor_s": round(floor, 2),
        "ratio": round(wall / floor, 3),
        "p99_ms": summary["latency_ms"]["p99"],
        "succeeded": summary["succeeded"],
        "server_max_inflight": stats["max_inflight"],
        "db": db,
    }


def window_use(db: str, window: int, step: float = 0.1) -> dict:
    """In-flight samples every ``step`` s from the first start to the last row's first dispatch."""
    with sqlite3.connect(db) as conn:
        spans = conn.execute("SELECT started_at, started_at + duration_ms / 1000.0 FROM attempts").fetchall()
        last_dispatch = conn.execute("SELECT max(started_at) FROM attempts WHERE attempt = 1").fetchone()[0]
    starts, ends = sorted(s for s, _ in spans), sorted(e for _, e in spans)
    # from the moment the window first fills (the start-up ramp is not a tail stall) to the last dispatch
    full = next((t for t in starts if bisect.bisect(starts, t) - bisect.bisect(ends, t) >= window), starts[-1])
    samples, t = [], full + step
    while t < last_dispatch:
        samples.append(bisect.bisect(starts, t) - bisect.bisect(ends, t))
        t += step
    samples = samples or [window]
    return {
        "samples": len(samples),
        "min_share": round(min(samples) / window, 3),
        "mean_share": round(sum(samples) / len(samples) / window, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency", type=float, default=1.6)
    parser.add_argument("--tail-rows", type=int, default=10_000, help="rows for the chunk-tail check")
    parser.add_argument("--tail-in-flight", type=int, default=1000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as directory:
        for in_flight in args.in_flight:
            result = run_one(args.rows, in_flight, args.workers, args.latency, directory)
            record(
                "latency_bound", f"wall/floor at {in_flight} in flight", result["ratio"], "x", rows=args.rows, **result
            )
            results.append(result)
        tail = run_one(args.tail_rows, args.tail_in_flight, args.workers, 1.55, directory, jitter=1.45)
        use = window_use(tail["db"], args.tail_in_flight)
        record(
            "latency_bound",
            "lowest in-flight share before the last dispatch (0.1-3 s latency)",
            use["min_share"],
            "share",
            rows=args.tail_rows,
            **use,
            **tail,
        )
    print(
        f"\n{args.rows} rows, {args.latency} s per request, {args.workers} workers (wall includes process start,"
        f" loading the ledger and the summary)\n"
    )
    print(
        table(
            ["in flight", "wall (s)", "floor (s)", "wall / floor", "p99 (ms)", "succeeded", "server max in flight"],
            [
                [
                    r["in_flight"],
                    r["wall_s"],
                    r["floor_s"],
                    r["ratio"],
                    r["p99_ms"],
                    r["succeeded"],
                    r["server_max_inflight"],
                ]
                for r in results
            ],
        )
    )
    print(
        f"\nchunk-tail check: {args.tail_rows} rows, latency uniform in 0.1-3.0 s, window {args.tail_in_flight};"
        f" in flight sampled every 100 ms until the last row was dispatched\n"
    )
    print(
        table(
            ["samples", "lowest in flight / window", "mean in flight / window", "wall (s)"],
            [[use["samples"], use["min_share"], use["mean_share"], tail["wall_s"]]],
        )
    )


if __name__ == "__main__":
    main()
