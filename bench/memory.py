#!/usr/bin/env python3
"""Memory benchmark: peak RSS of the whole process tree (coordinator + workers) for a big run.

Runs ``python -m engine bill`` against nginx (``return 200``) for each row count, samples
the RSS of the coordinator and all its children every 50 ms, and prints the peak with
the ledger's size, so that 100,000 and 1,000,000 rows can be compared.

Example:
    python bench/memory.py                       # 100,000 and 1,000,000 rows
    python bench/memory.py --rows 2000           # a smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import TreeWatch, record, report, start_nginx, table, write_rows  # noqa: E402


def run_one(rows: int, url: str, directory: str) -> dict:
    csv_path, db = os.path.join(directory, f"rows-{rows}.csv"), os.path.join(directory, f"ledger-{rows}.db")
    write_rows(csv_path, rows)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "engine", "bill", csv_path, "--url", url, "--db", db, "--run-id", "mem", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    watch = TreeWatch(child.pid)
    returncode = watch.wait(child)
    wall = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"engine failed: {child.stderr.read().decode()[-2000:]}")
    summary = report(db, "mem")
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    return {
        "rows": rows,
        "peak_rss_mb": round(watch.peak_rss / 2**20, 1),
        "ledger_mb": round(size / 2**20, 1),
        "wall_s": round(wall, 1),
        "succeeded": summary["succeeded"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        nginx, port = start_nginx(directory)
        try:
            for rows in args.rows:
                result = run_one(rows, f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges", directory)
                record("memory", f"peak RSS at {rows} rows", result["peak_rss_mb"], "MB", **result)
                results.append(result)
        finally:
            nginx.terminate()
            nginx.wait()
    print("\npeak RSS of coordinator + workers, sampled every 50 ms\n")
    print(
        table(
            ["rows", "peak RSS (MB)", "ledger (MB)", "wall (s)", "succeeded"],
            [[r["rows"], r["peak_rss_mb"], r["ledger_mb"], r["wall_s"], r["succeeded"]] for r in results],
        )
    )


if __name__ == "__main__":
    main()
