#!/usr/bin/env python3
"""Latency-bound benchmark: N rows against the mock API at 1.6 s per request.

For each in-flight total (workers x concurrency) it runs ``python -m engine bill`` end
to end and compares the wall time with the floor, ceil(N / in-flight) x latency.

It then checks for chunk-tail stalls: with latencies drawn from 0.1-3 s, it samples the
transfers in flight every 100 ms (from the ledger's attempt times), from the moment the
window first fills until the last row is dispatched, and prints the lowest share of the
window that was in use.

With ``--server nginx`` it measures large windows instead, against nginx answering after
``echo_sleep`` (a C server; needs libnginx-mod-http-echo) beside a C client at the same connection
count: h2load over TLS + HTTP/2 (``--http2``), wrk over HTTP/1.1 (see bench/large_windows.py). It
raises this process's open-file limit (``ulimit -n``) to the hard limit first, and says so.

Example:
    python bench/latency_bound.py                 # 10,000 rows at 1,000 / 2,000 / 5,000 in flight
    python bench/latency_bound.py --rows 500 --in-flight 100 --tail-rows 500   # a smoke run
    python bench/latency_bound.py --server nginx --http2 --rows 100000 --in-flight 50000 --workers 2
    python bench/latency_bound.py --server nginx --rows 100000 --in-flight 16000 --workers 4
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import resource
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import large_windows  # noqa: E402
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
    parser.add_argument("--server", choices=["mock", "nginx"], default="mock", help="nginx: large windows, a C peer")
    nginx = parser.add_argument_group("--server nginx")
    nginx.add_argument("--http2", action="store_true", help="TLS + HTTP/2 with h2load as the peer (else HTTP/1.1, wrk)")
    nginx.add_argument("--streams", type=int, default=1000, help="h2load streams per connection (and nginx's maximum)")
    nginx.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes")
    nginx.add_argument("--peer-threads", type=int, default=1, help="h2load / wrk threads")
    nginx.add_argument("--no-peer", dest="peer", action="store_false", help="the engine alone")
    nginx.add_argument("--repeat", type=int, default=1, help="engine and peer this many times each, alternating")
    nginx.add_argument("--engine-arg", dest="engine_args", action="append", default=[], help="more engine options")
    args = parser.parse_args()
    if args.server == "nginx":
        main_nginx(args)
        return
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


def raise_open_files() -> None:
    """Raise the soft open-file limit to the hard one (children inherit it), and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    shown = "unlimited" if hard == resource.RLIM_INFINITY else hard
    print(f"open-file limit (ulimit -n): raised from {soft} to {shown}, the hard limit" if soft != hard
          else f"open-file limit (ulimit -n): {shown}, already the hard limit")  # fmt: skip


def main_nginx(args) -> None:
    raise_open_files()
    args.in_flight = args.in_flight[0] if args.in_flight != [1000, 2000, 5000] else (50_000 if args.http2 else 16_000)
    with tempfile.TemporaryDirectory(prefix="bench-windows-") as directory:
        for result in large_windows.main(args, directory):
            engine_result, peer = result["engine"], result.get("peer")
            record(
                "latency_bound",
                f"nginx {'h2' if args.http2 else 'h1'} wall/floor at {args.in_flight} in flight",
                round(engine_result["wall"] / result["floor"], 3),
                "x",
                rows=args.rows,
                workers=args.workers,
                engine=engine_result,
                peer=peer,
            )


if __name__ == "__main__":
    main()
