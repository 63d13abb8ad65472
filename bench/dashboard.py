#!/usr/bin/env python3
"""Dashboard benchmark: every page's time on a 1,000,000-row run, and what an open run page costs a run.

1. Page times: ``bill`` N rows against nginx (1 row in 10 answered 500 and not retried, so the
   failures pages have something to show), then ``python -m engine dashboard`` on that ledger;
   each page is fetched over real HTTP once, then 5 times a second apart (target: <= 300 ms).
2. Cost to a run: ``bill`` M rows against nginx alone, and with its run page open (a client
   fetching live.json every second and the charts every 3 s, as the page's script does),
   alternating, in one run of this script: the ratio of wall times, and the dashboard's CPU
   seconds over the run's (target: <= 5 %; the run keeps both cores busy, so what the
   dashboard takes is what the run loses, and CPU seconds do not drift as wall time does).

Example:
    python bench/dashboard.py                          # 1,000,000 rows; 200,000 for the cost
    python bench/dashboard.py --rows 20000 --cost-rows 20000 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import cpu_seconds, free_port, record, start_nginx, table, write_rows  # noqa: E402

#: Rows whose id ends in 7 get a 500 (one in ten).
FAILING = 'location ~ "7/charges$" { return 500; }'
TARGET_MS, TARGET_COST = 300.0, 1.05


def bill(csv_path: str, url: str, db: str, run_id: str) -> tuple[float, float]:
    """Wall time and CPU seconds (its process tree) of one ``bill`` (exit 1 is expected: the 500s fail)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "bill", csv_path, "--url", url, "--db", db, "--run-id", run_id]
        + ["--max-attempts", "1", "--quiet"],
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"bill failed ({done.returncode}): {done.stderr.strip()}")
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


class Dashboard:
    """``python -m engine dashboard`` on ``db``, in its own process."""

    def __init__(self, db: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "dashboard", "--db", db, "--port", str(self.port)],
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if self.get("/static/style.css", quiet=True) is not None:  # up, the ledger not yet read
                return
            time.sleep(0.1)
        raise SystemExit("the dashboard did not start")

    def get(self, path: str, quiet: bool = False) -> int | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as answer:
                answer.read()
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            if quiet:
                return None
            raise

    def time(self, path: str, repeat: int = 5) -> tuple[float, float]:
        """Milliseconds of the first GET of ``path``, and the median of ``repeat`` more a second apart
        (as a page polls: the dashboard reads the ledger again when its figures are due)."""
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            status = self.get(path)
            times.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise SystemExit(f"{path}: HTTP {status}")
            time.sleep(1.0)
        return times[0], statistics.median(times[1:])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def page_times(rows: int, url: str, directory: str) -> list[list]:
    csv_path, db = os.path.join(directory, "pages.csv"), os.path.join(directory, "pages.db")
    write_rows(csv_path, rows)
    print(f"billing {rows:,} rows for the page times ...", file=sys.stderr)
    bill(csv_path, url, db, "big")
    with sqlite3.connect(db) as ledger:
        (deep,) = ledger.execute("SELECT rid FROM requests ORDER BY rid LIMIT 1 OFFSET ?", (rows * 9 // 10,)).fetchone()
    last = f"cus_{rows - 3:07d}"
    pages = {
        "runs": "/",
        "run page": "/runs/big",
        "live.json (every 1 s)": "/runs/big/live.json",
        "charts (every 3 s)": "/runs/big/charts",
        "failures, first page": "/runs/big/failures",
        "failures, HTTP 500": "/runs/big/failures?http_status=500",
        "failures, error text": "/runs/big/failures?error=500",
        "failures, page at 90 %": f"/runs/big/failures?after={deep}",
        "failures, one row id": f"/runs/big/failures?row_id={last}",
        "a row": f"/runs/big/rows/{last}",
        "metrics": "/metrics",
    }
    dashboard = Dashboard(db)
    try:
        results = []
        for name, path in pages.items():
            first, ms = dashboard.time(path)
            record("dashboard", f"{name} at {rows} rows", round(ms, 1), "ms", first_ms=round(first, 1))
            results.append([name, f"{first:.0f}", f"{ms:.0f}", "yes" if max(first, ms) <= TARGET_MS else "NO"])
        return results
    finally:
        dashboard.close()


class OpenPage(threading.Thread):
    """What an open run page does: live.json every second, the charts every 3 s."""

    def __init__(self, dashboard: Dashboard, run_id: str):
        super().__init__(daemon=True)
        self.dashboard, self.run_id = dashboard, run_id
        self.closed = threading.Event()
        self.fetches = 0

    def run(self) -> None:
        tick = 0
        while not self.closed.wait(1.0):
            self.dashboard.get(f"/runs/{self.run_id}/live.json", quiet=True)
            if tick % 3 == 0:
                self.dashboard.get(f"/runs/{self.run_id}/charts", quiet=True)
            tick += 1
            self.fetches += 1


def run_cost(rows: int, url: str, directory: str, rounds: int) -> dict:
    """Median wall time of a run alone and with its page open, and the CPU the dashboard took
    beside the run's own (on a machine whose cores the run keeps busy, what slows it)."""
    csv_path = os.path.join(directory, "cost.csv")
    write_rows(csv_path, rows)
    alone, watched, shares = [], [], []
    for round_no in range(rounds):
        for with_page in (False, True):
            db = os.path.join(directory, f"cost-{round_no}-{with_page}.db")
            if not with_page:
                wall, _ = bill(csv_path, url, db, "cost")
                alone.append(wall)
            else:
                dashboard = Dashboard(db)
                page = OpenPage(dashboard, "cost")
                page.start()
                dashboard_cpu = cpu_seconds(dashboard.process.pid)
                wall, run_cpu = bill(csv_path, url, db, "cost")
                dashboard_cpu = cpu_seconds(dashboard.process.pid) - dashboard_cpu
                page.closed.set()
                page.join()
                dashboard.close()
                watched.append(wall)
                shares.append(dashboard_cpu / run_cpu)
            print(f"  round {round_no + 1}: {'with the page' if with_page else 'alone'} {wall:.1f} s", file=sys.stderr)
    return {
        "alone": statistics.median(alone),
        "watched": statistics.median(watched),
        "cpu_share": statistics.median(shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the run whose pages are timed")
    parser.add_argument("--cost-rows", type=int, default=200_000, help="rows of the runs timed alone / watched")
    parser.add_argument("--rounds", type=int, default=2, help="alone/watched pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as directory:
        nginx, port = start_nginx(directory, FAILING)
        url = f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"
        try:
            pages = page_times(args.rows, url, directory)
            print(f"\nPage times on a {args.rows:,}-row run (real HTTP; then 5 more, a second apart):\n")
            print(table(["page", "first (ms)", "median (ms)", f"<= {TARGET_MS:.0f} ms"], pages))
            cost = run_cost(args.cost_rows, url, directory, args.rounds)
        finally:
            nginx.terminate()
            nginx.wait()
    ratio = cost["watched"] / cost["alone"]
    record("dashboard", f"run with its page open / alone at {args.cost_rows} rows", round(ratio, 3), "ratio")
    record("dashboard", f"dashboard CPU / run CPU at {args.cost_rows} rows", round(cost["cpu_share"], 4), "ratio")
    print(f"\nA {args.cost_rows:,}-row run, median of {args.rounds} (wall times drift by up to 25 % here):\n")
    print(
        table(
            ["alone (s)", "page open (s)", "wall ratio", "dashboard CPU / run CPU", f"<= {TARGET_COST - 1:.0%}"],
            [
                [
                    f"{cost['alone']:.1f}",
                    f"{cost['watched']:.1f}",
                    f"{ratio:.3f}",
                    f"{cost['cpu_share']:.1%}",
                    "yes" if cost["cpu_share"] <= TARGET_COST - 1 else "NO",
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
