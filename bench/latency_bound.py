#!/usr/bin/env python3
"""Latency-bound benchmark: N rows against the mock API at 1.6 s per request.

For each in-flight total (workers x concurrency) it runs ``python -m engine bill`` end
to end and compares the wall time with the floor, ceil(N / in-flight) x latency.

Example:
    python bench/latency_bound.py                 # 10,000 rows at 1,000 / 2,000 / 5,000 in flight
    python bench/latency_bound.py --rows 500 --in-flight 100   # a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import engine, record, report, table  # noqa: E402
from engine.demo import write_customers  # noqa: E402
from engine.mockproc import MockProcess  # noqa: E402


def run_one(rows: int, in_flight: int, workers: int, latency: float, directory: str) -> dict:
    customers = os.path.join(directory, "customers.csv")
    if not os.path.exists(customers):
        write_customers(customers, rows)
    db = os.path.join(directory, f"latency-{in_flight}.db")
    with MockProcess(latency=latency) as api:
        started = time.perf_counter()
        done = engine("bill", customers, "--url", api.charge_url(), "--db", db, "--run-id", "bench",
                      "--workers", workers, "--concurrency", math.ceil(in_flight / workers), "--quiet")
        wall = time.perf_counter() - started
        stats = api.stats()
    if done.returncode != 0:
        raise SystemExit(f"engine failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = report(db, "bench")
    floor = math.ceil(rows / in_flight) * latency
    return {"in_flight": in_flight, "wall_s": round(wall, 2), "floor_s": round(floor, 2),
            "ratio": round(wall / floor, 3), "p99_ms": summary["latency_ms"]["p99"],
            "succeeded": summary["succeeded"], "server_max_inflight": stats["max_inflight"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency", type=float, default=1.6)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as directory:
        for in_flight in args.in_flight:
            result = run_one(args.rows, in_flight, args.workers, args.latency, directory)
            record("latency_bound", f"wall/floor at {in_flight} in flight", result["ratio"], "x",
                   rows=args.rows, **result)
            results.append(result)
    print(f"\n{args.rows} rows, {args.latency} s per request, {args.workers} workers (wall includes process start,"
          f" loading the ledger and the summary)\n")
    print(table(["in flight", "wall (s)", "floor (s)", "wall / floor", "p99 (ms)", "succeeded",
                 "server max in flight"],
                [[r["in_flight"], r["wall_s"], r["floor_s"], r["ratio"], r["p99_ms"], r["succeeded"],
                  r["server_max_inflight"]] for r in results]))


if __name__ == "__main__":
    main()
