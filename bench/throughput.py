#!/usr/bin/env python3
"""Throughput benchmark: the engine end to end against peers, on nginx answering ``return 200``.

Installs nginx with apt-get if it is missing, starts it on a free 127.0.0.1 port, then
runs in one go, with the same processes and in-flight requests for every client:
(1) ``python -m engine bill`` end to end (ledger, progress, retry machinery on; with ``--tls``
also without idempotency keys, and with ``--http2`` over HTTP/2),
(2) a bare pycurl CurlMulti loop (the ceiling), (3) aiohttp + uvloop, (4) httpx
AsyncClient, (5) serial ``requests``, (6) ``wrk`` (C, the machine's ceiling; a Lua script makes it POST the
same body; it runs for ``--wrk-seconds`` and its rate is its own count over its own duration).
Slow peers run on fewer rows and are extrapolated.

Example:
    python bench/throughput.py                  # 200,000 rows
    python bench/throughput.py --full           # 1,000,000 rows
    python bench/throughput.py --rows 2000      # a smoke run
    python bench/throughput.py --tls --http2    # HTTPS (a self-signed CA made here), the engine also over HTTP/2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    TreeWatch,
    bill_phases,
    cpu_seconds,
    make_certificates,
    record,
    report,
    start_nginx,
    table,
    write_rows,
)


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


def timed(
    command: list[str], server_pid: int, env: dict | None = None
) -> tuple[float, float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds of the command's process tree and CPU seconds of the server."""
    with Measured(server_pid) as measured:
        done = subprocess.run(command, capture_output=True, text=True, env=env)
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
    phases = bill_phases(command[command.index("--log-file") + 1], measured.started, measured.ended)
    return measured.wall, measured.cpu, measured.server_cpu, {"cpu": watch.cpu(), "phases": phases}


#: wrk's request: the same POST the other peers send.
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"id": "cus_0000001", "amount_cents": 1234, "currency": "eur"}'
wrk.headers["Content-Type"] = "application/json"
"""


def run_wrk(url: str, directory: str, seconds: float, threads: int, connections: int, server_pid: int) -> tuple:
    """wrk for ``seconds``: (requests, its duration, CPU seconds of wrk, of the server, 2xx answers).
    Over TLS wrk does not verify the certificate (it has no option to)."""
    script = os.path.join(directory, "post.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "-s", script, url]
    _wall, cpu, server_cpu, done = timed(command, server_pid)
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if not found:
        raise SystemExit(f"wrk: no count in {done.stdout!r}")
    count, duration = int(found.group(1)), float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", done.stdout)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return count, duration, cpu, server_cpu, count - failed


def accepted(port: int, ca: str | None) -> int:
    """Connections nginx has accepted so far (its stub_status): with TLS, one handshake each."""
    scheme = "https" if ca else "http"
    context = ssl.create_default_context(cafile=ca) if ca else None
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/nginx-status", context=context, timeout=10) as answer:
        return int(answer.read().decode().splitlines()[2].split()[0]) - 1  # less this status request's own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 rows")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=100)
    peers = ["bare", "aiohttp", "httpx", "requests", *(["wrk"] if shutil.which("wrk") else [])]
    parser.add_argument("--peers", nargs="*", default=peers, help="wrk: when installed (apt-get install wrk)")
    parser.add_argument("--tls", action="store_true", help="HTTPS: nginx with a certificate made here; all verify it")
    parser.add_argument("--http2", action="store_true", help="with --tls: also the engine over HTTP/2")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="how long the wrk peer runs")
    args = parser.parse_args()
    rows = 1_000_000 if args.full else args.rows
    shares = {"bare": 1.0, "aiohttp": 0.25, "httpx": 0.02, "requests": min(1.0, 1000 / rows)}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as directory:
        certs = make_certificates(directory) if args.tls else None
        ca = certs.ca if certs else None
        nginx, port = start_nginx(directory, certs=certs, http2=bool(certs and args.http2))
        url = f"{'https' if certs else 'http'}://127.0.0.1:{port}/v1/customers"
        engines = [("engine (end to end)", rows, [])]
        if certs:
            engines.append(("engine --no-idempotency", rows, ["--no-idempotency"]))
        if certs and args.http2:
            engines.append(("engine --http2", rows, ["--http2", "--max-host-connections", "5"]))
        detail = {}
        try:
            csv_path = os.path.join(directory, "rows.csv")
            write_rows(csv_path, rows)
            for number, (name, count, extra) in enumerate(engines):
                run_csv = csv_path if count == rows else os.path.join(directory, f"rows-{number}.csv")
                if count != rows:
                    write_rows(run_csv, count)
                db, log = (
                    os.path.join(directory, f"ledger-{number}.db"),
                    os.path.join(directory, f"engine-{number}.log"),
                )
                before = accepted(port, ca)
                wall, cpu, server_cpu, measured = run_engine(
                    [sys.executable, "-m", "engine", "bill", run_csv, "--url", url + "/{id}/charges", "--db", db,
                     "--run-id", "bench", "--workers", str(args.workers), "--concurrency", str(args.concurrency),
                     "--quiet", "--log-file", log, *(["--ca-bundle", ca] if ca else []), *extra],
                    nginx.pid,
                )  # fmt: skip
                summary = report(db, "bench")
                assert summary["succeeded"] == count, summary
                results.append((name, count, wall, cpu, server_cpu, count, accepted(port, ca) - before))
                detail.setdefault("engine", measured)
            for peer in args.peers:
                if peer == "wrk":
                    before = accepted(port, ca)
                    count, seconds, cpu_w, server_w, ok = run_wrk(
                        url, directory, args.wrk_seconds, args.workers, args.workers * args.concurrency, nginx.pid
                    )
                    results.append((peer, count, seconds, cpu_w, server_w, ok, accepted(port, ca) - before))
                    continue
                count = max(1, int(rows * shares.get(peer, 1.0)))
                processes = 1 if peer == "requests" else args.workers
                before = accepted(port, ca)
                wall_p, cpu_p, server_p, done = timed(
                    [sys.executable, os.path.join(HERE, "peers.py"), peer, url, str(count), str(processes),
                     str(args.concurrency)],
                    nginx.pid,
                    env={**os.environ, "BENCH_CA": ca} if ca else None,
                )  # fmt: skip
                ok = int(done.stdout.split()[-1])
                results.append((peer, count, wall_p, cpu_p, server_p, ok, accepted(port, ca) - before))
        finally:
            nginx.terminate()
            nginx.wait()
    engine_rate = results[0][1] / results[0][2]
    protocol = ("HTTPS" if args.tls else "HTTP/1.1") + (" (+ HTTP/2 for the engine)" if args.http2 else "")
    lines = []
    for name, count, wall, cpu, server_cpu, ok, connections in results:
        rate = count / wall
        lines.append(
            [
                name,
                count,
                f"{rate:,.0f}",
                f"{cpu / count * 1e6:.0f}",
                f"{server_cpu / count * 1e6:.0f}",
                f"{connections / count * 1000:.1f}",
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
            protocol=protocol,
            cpu_us_per_request=round(cpu / count * 1e6, 1),
            server_cpu_us_per_request=round(server_cpu / count * 1e6, 1),
            connections_per_1000=round(connections / count * 1000, 2),
            ratio_to_engine=round(rate / engine_rate, 3),
            workers=args.workers,
            concurrency=args.concurrency,
        )
    print(
        f"\n{rows} rows, {protocol}; {args.workers} processes x {args.concurrency} in flight for every concurrent"
        " client; nginx `return 200` on 127.0.0.1\n"
    )
    print(
        table(
            [
                "client",
                "requests",
                "requests/s",
                "client CPU µs/request",
                "nginx CPU µs/request",
                "new connections (TLS handshakes) / 1,000 requests" if args.tls else "new connections / 1,000",
                "rate / engine",
                "2xx",
            ],
            lines,
        )
    )
    rates = {name: count / wall for name, count, wall, *_ in results}
    if "bare" in rates:
        print(f"\nengine / bare pycurl loop: {engine_rate / rates['bare']:.2f}")
    if "wrk" in rates:
        print(f"engine / wrk (C): {engine_rate / rates['wrk']:.2f}")
    if "aiohttp" in rates:
        print(f"engine / aiohttp + uvloop: {engine_rate / rates['aiohttp']:.2f}")
    if "engine --no-idempotency" in rates:
        print(f"engine --no-idempotency / keyed engine: {rates['engine --no-idempotency'] / engine_rate:.2f}")
    if "engine --http2" in rates:
        print(f"engine --http2 / HTTP/1.1: {rates['engine --http2'] / engine_rate:.2f}")
    print_budget(results[0][:6], detail["engine"], rates)


#: The issue's targets: (what, ratio at least); "pass" is the pass alone, the rest end to end.
TARGETS = (
    ("pass alone / bare loop", 0.75),
    ("end to end / bare loop", 0.60),
    ("end to end / aiohttp + uvloop", 2.5),
    ("--no-idempotency / keyed, end to end", 0.5),
)


def print_budget(engine_result: tuple, detail: dict, rates: dict[str, float]) -> None:
    """Where the engine's time and CPU go, the rate the machine's cores allow it, and the targets."""
    _name, count, wall, _cpu, server_cpu, _ok = engine_result
    phases = detail["phases"]
    pass_rate = count / phases["pass"]
    print(
        "\nengine phases: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
        + f" (pass alone: {pass_rate:,.0f} requests/s)"
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
    if "bare" not in rates:
        return
    reached = {
        "pass alone / bare loop": pass_rate / rates["bare"],
        "end to end / bare loop": (count / wall) / rates["bare"],
        "end to end / aiohttp + uvloop": (count / wall) / rates["aiohttp"] if "aiohttp" in rates else None,
        "--no-idempotency / keyed, end to end": (
            rates["engine --no-idempotency"] / (count / wall) if "engine --no-idempotency" in rates else None
        ),
    }
    print()
    print(table(["target", "at least", "reached", "met"], [_target_row(w, least, reached[w]) for w, least in TARGETS]))
    budget = cores * 1e6 / (TARGETS[0][1] * rates["bare"])
    print(
        f"\nfor the pass at {TARGETS[0][1]:.2f} of the bare loop's {rates['bare']:,.0f} requests/s, the engine and"
        f" nginx together could spend at most {budget:.1f} µs of CPU per request; they spend {total:.1f}"
    )
    record(
        "throughput",
        "engine CPU µs/request by process",
        {k: round(v, 1) for k, v in per_request.items()},
        "us",
        phases={k: round(v, 2) for k, v in phases.items()},
        budget_for_target_us=round(budget, 1),
        reached={k: None if v is None else round(v, 3) for k, v in reached.items()},
    )


def _target_row(what: str, least: float, reached: float | None) -> list[str]:
    """One target's line: the ratio the run reached and whether it is met ("-": the peer did not run)."""
    if reached is None:
        return [what, f"{least:.2f}", "-", "-"]
    return [what, f"{least:.2f}", f"{reached:.2f}", "yes" if reached >= least else "no"]


if __name__ == "__main__":
    main()
