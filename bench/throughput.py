#!/usr/bin/env python3
"""Throughput benchmark: the engine end to end against peers, on nginx answering ``return 200``.

Installs nginx with apt-get if it is missing, starts it on a free 127.0.0.1 port, then
runs in one go, with the same processes and in-flight requests for every client:
(1) ``python -m engine bill`` end to end (ledger, progress, retry machinery on),
(2) a bare pycurl CurlMulti loop (the ceiling), (3) aiohttp + uvloop, (4) httpx
AsyncClient, (5) serial ``requests``. Slow peers run on fewer rows and are extrapolated.

Example:
    python bench/throughput.py                  # 200,000 rows
    python bench/throughput.py --full           # 1,000,000 rows
    python bench/throughput.py --rows 2000      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import TreeWatch, cpu_seconds, record, report, start_nginx, table, write_rows  # noqa: E402


class Measured:
    """Over a ``with`` block: wall seconds, CPU seconds of this process's children, and of the server."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def __enter__(self):
        self._children, self._server = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(self.server_pid)
        self.started = time.time()
        return self

    def __exit__(self, *exc):
        self.ended = time.time()
        self.wall = self.ended - self.started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - self._children.ru_utime) + (after.ru_stime - self._children.ru_stime)
        self.server_cpu = cpu_seconds(self.server_pid) - self._server


def timed(command: list[str], server_pid: int) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds of the command's process tree and CPU seconds of the server."""
    with Measured(server_pid) as measured:
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed: {done.stderr[-2000:]}")
    return measured.wall, measured.cpu, measured.server_cpu, done


def run_engine(command: list[str], server_pid: int) -> tuple[float, float, float, dict]:
    """Like :func:`timed` for the engine, plus its CPU per role and its phases (from its log)."""
    with Measured(server_pid) as measured:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        watch = TreeWatch(child.pid)
        returncode = watch.wait(child)
    if returncode != 0:
        raise SystemExit(f"engine failed: {child.stderr.read().decode()[-2000:]}")
    with open(command[command.index("--log-file") + 1]) as handle:
        times = {event["event"]: event["time"] for event in map(json.loads, handle)}
    phases = {
        "start and load": times["pass_start"] - measured.started,
        "pass": times["pass_end"] - times["pass_start"],
        "summary and exit": measured.ended - times["pass_end"],
    }
    return measured.wall, measured.cpu, measured.server_cpu, {"cpu": watch.cpu(), "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 rows")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--peers", nargs="*", default=["bare", "aiohttp", "httpx", "requests"])
    args = parser.parse_args()
    rows = 1_000_000 if args.full else args.rows
    shares = {"bare": 1.0, "aiohttp": 0.25, "httpx": 0.02, "requests": min(1.0, 1000 / rows)}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as directory:
        nginx, port = start_nginx(directory)
        url = f"http://127.0.0.1:{port}/v1/customers"
        try:
            csv_path, db = os.path.join(directory, "rows.csv"), os.path.join(directory, "ledger.db")
            write_rows(csv_path, rows)
            wall, cpu, server_cpu, detail = run_engine(
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "bill",
                    csv_path,
                    "--url",
                    url + "/{id}/charges",
                    "--db",
                    db,
                    "--run-id",
                    "bench",
                    "--workers",
                    str(args.workers),
                    "--concurrency",
                    str(args.concurrency),
                    "--quiet",
                    "--log-file",
                    os.path.join(directory, "engine.log"),
                ],
                nginx.pid,
            )
            summary = report(db, "bench")
            assert summary["succeeded"] == rows, summary
            results.append(("engine (end to end)", rows, wall, cpu, server_cpu, rows))
            for peer in args.peers:
                count = max(1, int(rows * shares.get(peer, 1.0)))
                processes = 1 if peer == "requests" else args.workers
                wall_p, cpu_p, server_p, done = timed(
                    [
                        sys.executable,
                        os.path.join(HERE, "peers.py"),
                        peer,
                        url,
                        str(count),
                        str(processes),
                        str(args.concurrency),
                    ],
                    nginx.pid,
                )
                results.append((peer, count, wall_p, cpu_p, server_p, int(done.stdout.split()[-1])))
        finally:
            nginx.terminate()
            nginx.wait()
    engine_rate = results[0][1] / results[0][2]
    lines = []
    for name, count, wall, cpu, server_cpu, ok in results:
        rate = count / wall
        lines.append(
            [
                name,
                count,
                f"{rate:,.0f}",
                f"{cpu / count * 1e6:.0f}",
                f"{server_cpu / count * 1e6:.0f}",
                f"{rate / engine_rate:.2f}",
                ok,
            ]
        )
        record(
            "throughput",
            f"{name} requests/s",
            round(rate),
            "req/s",
            rows=count,
            cpu_us_per_request=round(cpu / count * 1e6, 1),
            server_cpu_us_per_request=round(server_cpu / count * 1e6, 1),
            ratio_to_engine=round(rate / engine_rate, 3),
            workers=args.workers,
            concurrency=args.concurrency,
        )
    print(
        f"\n{rows} rows; {args.workers} processes x {args.concurrency} in flight for every concurrent client;"
        f" nginx `return 200` on 127.0.0.1\n"
    )
    print(
        table(
            [
                "client",
                "requests",
                "requests/s",
                "client CPU µs/request",
                "nginx CPU µs/request",
                "rate / engine",
                "2xx",
            ],
            lines,
        )
    )
    bare = next((r for r in results if r[0] == "bare"), None)
    if bare:
        print(f"\nengine / bare pycurl loop: {engine_rate / (bare[1] / bare[2]):.2f}")
    print_budget(results[0], detail, bare)


def print_budget(engine_result: tuple, detail: dict, bare: tuple | None) -> None:
    """Where the engine's time and CPU go, and the rate the machine's cores allow it."""
    _name, count, wall, _cpu, server_cpu, _ok = engine_result
    phases = detail["phases"]
    print(
        "\nengine phases: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f" (pass alone: {count / phases['pass']:,.0f} requests/s)"
    )
    per_request = {role: seconds / count * 1e6 for role, seconds in detail["cpu"].items()}
    per_request["nginx"] = server_cpu / count * 1e6
    rows = [[role, f"{us:.1f}"] for role, us in per_request.items()]
    total = sum(per_request.values())
    cores = os.cpu_count() or 1
    rows.append(["all (engine + nginx)", f"{total:.1f}"])
    print(
        f"\nCPU per request, engine run ({cores} cores: at most {cores * 1e6 / total:,.0f} requests/s"
        f" with every core busy)\n"
    )
    print(table(["process", "CPU µs/request"], rows))
    if bare:
        bare_rate = bare[1] / bare[2]
        budget = cores * 1e6 / (0.7 * bare_rate)
        print(
            f"\nfor 0.70 of the bare loop's {bare_rate:,.0f} requests/s, the engine and nginx together could"
            f" spend at most {budget:.1f} µs of CPU per request; they spend {total:.1f}"
        )
        record(
            "throughput",
            "engine CPU µs/request by process",
            {k: round(v, 1) for k, v in per_request.items()},
            "us",
            phases={k: round(v, 2) for k, v in phases.items()},
            budget_for_target_us=round(budget, 1),
        )


if __name__ == "__main__":
    main()
