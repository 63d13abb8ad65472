"""Large windows against a C delay server: nginx answering after ``echo_sleep`` (latency_bound.py --server nginx).

Python servers cannot hold 50,000 requests in flight; nginx with the echo module can. Each client
gets a fresh nginx (its own port, so one client's TIME_WAIT sockets never take the next one's
ephemeral ports) and the same rows, in-flight total and latency:

- the engine, ``python -m engine bill`` end to end (ledger, keys, retry machinery on), its peak RSS
  summed over its whole process tree (sampled every 0.1 s) and its p50 latency from the ledger;
- the C peer at the same connection count: h2load (nghttp2) for HTTP/2 over TLS, ``--streams``
  streams per connection; wrk for HTTP/1.1, one request per connection at a time (wrk runs for a
  duration, so its rate is the requests it completed over that duration).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time

from common import (
    ECHO_MODULE,
    TreeWatch,
    answer_after,
    bill_phases,
    cpu_seconds,
    make_certificates,
    report,
    start_nginx,
    table,
)
from common import write_rows as write_csv

#: The body h2load and wrk send, the size of the engine's (its default template for these rows).
PEER_BODY = '{"id":"cus_0000000","amount_cents":1234,"currency":"eur"}'
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "bench-0000000000000000000000000000"
"""


def missing_tools(http2: bool) -> list[str]:
    """What this mode needs and is not installed (nginx, its echo module, the peer)."""
    missing = [] if (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")) else ["nginx"]
    if not os.path.exists(ECHO_MODULE):
        missing.append("libnginx-mod-http-echo")
    peer = "h2load" if http2 else "wrk"
    if not shutil.which(peer):
        missing.append(peer)
    return missing


def server(directory: str, certs, http2: bool, latency: float, nginx_workers: int, streams: int):
    """A fresh nginx answering after ``latency`` (HTTP/2 over TLS with ``certs``): (process, base URL)."""
    http = f"http2_max_concurrent_streams {streams};" if http2 else ""
    process, port = start_nginx(
        directory,
        certs=certs,
        http2=http2,
        answer=answer_after(latency),
        workers=nginx_workers,
        connections=20000,
        http=http,
    )
    return process, f"{'https' if certs else 'http'}://127.0.0.1:{port}"


def run_engine(rows: int, csv: str, base: str, args, ca: str | None, directory: str, tag: str) -> dict:
    """``python -m engine bill`` end to end: wall, peak RSS of all its processes, p50, successes."""
    db, log = os.path.join(directory, f"ledger-{tag}.db"), os.path.join(directory, f"engine-{tag}.log")
    command = [sys.executable, "-m", "engine", "bill", csv, "--url", base + "/v1/customers/{id}/charges",
               "--db", db, "--run-id", "bench", "--workers", str(args.workers),
               "--concurrency", str(math.ceil(args.in_flight / args.workers)), "--quiet", "--log-file", log,
               *(["--ca-bundle", ca] if ca else []), *(["--http2"] if args.http2 else []),
               *args.engine_args]  # fmt: skip
    started = time.time()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watch = TreeWatch(child.pid, interval=0.1)
    returncode = watch.wait(child)
    ended = time.time()
    wall = ended - started
    if returncode != 0:
        raise SystemExit(f"engine failed ({returncode}): {child.stderr.read().decode()[-2000:]}")
    summary = report(db, "bench")
    cpu = watch.cpu()
    return {
        "wall": wall,
        "rate": rows / wall,
        "rss_mb": watch.peak_rss / 2**20,
        "p50_ms": summary["latency_ms"]["p50"],
        "ok": summary["succeeded"],
        "cpu": f"coord {cpu['coordinator']:.0f} s, workers {cpu['workers']:.0f} s",
        "phases": ", ".join(f"{name} {seconds:.2f} s" for name, seconds in bill_phases(log, started, ended).items()),
    }


def run_h2load(rows: int, base: str, args, directory: str) -> dict:
    """h2load: ``rows`` POSTs over ``in_flight / streams`` TLS connections; checks TLS, h2 and every 2xx."""
    body = os.path.join(directory, "body.json")
    with open(body, "w") as handle:
        handle.write(PEER_BODY)
    connections = max(1, args.in_flight // args.streams)
    command = ["h2load", "-n", str(rows), "-c", str(connections), "-m", str(args.streams),
               "-t", str(args.peer_threads), "-d", body, "-H", "content-type: application/json",
               base + "/v1/customers/cus_0000000/charges"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    out = done.stdout
    ok = _number(r"status codes: (\d+) 2xx", out)
    if done.returncode != 0 or "Application protocol: h2" not in out or "TLS Protocol" not in out or ok != rows:
        raise SystemExit(f"h2load did not do {rows} requests over TLS + h2: {out[-1500:]} {done.stderr[-500:]}")
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    return {"wall": wall, "rate": rows / wall, "ok": ok, "latency": f"mean {mean.group(1) if mean else '?'}",
            "connections": connections, "tls": re.search(r"TLS Protocol: (\S+)", out).group(1)}  # fmt: skip


def run_wrk(rows: int, base: str, args, directory: str) -> dict:
    """wrk on ``in_flight`` connections for the floor's duration of ``rows`` (whole seconds): its rate, its p50."""
    script = os.path.join(directory, "post.lua")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT.format(body=PEER_BODY))
    duration = math.ceil(rows / args.in_flight) * args.latency
    command = ["wrk", "-t", str(args.peer_threads), "-c", str(args.in_flight), "-d", f"{math.ceil(duration)}s",
               "--timeout", "30s", "--latency", "-s", script, base + "/v1/customers/cus_0000000/charges"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    out = done.stdout
    if done.returncode != 0 or "requests in" not in out:
        raise SystemExit(f"wrk failed: {out[-1500:]} {done.stderr[-500:]}")
    completed = _number(r"(\d+) requests in", out)
    number, unit = re.search(r"requests in ([\d.]+)(ms|s|m|h)", out).groups()
    wall = float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]  # wrk says 1.68m past a minute
    bad = _number(r"Non-2xx or 3xx responses: (\d+)", out) or 0
    errors = re.search(r"Socket errors: (.*)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    return {"wall": wall, "rate": completed / wall, "ok": completed - bad, "connections": args.in_flight,
            "latency": f"p50 {p50.group(1) if p50 else '?'}" + (f"; socket errors {errors.group(1)}" if errors else ""),
            "completed": completed}  # fmt: skip


def _number(pattern: str, text: str) -> int | None:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else None


def main(args, directory: str) -> list[dict]:
    """Run the engine and its peer (each on a fresh nginx) for ``args.rows``; print and return the rows."""
    missing = missing_tools(args.http2)
    if missing:
        raise SystemExit(f"--server nginx needs: {', '.join(missing)} (apt-get install libnginx-mod-http-echo"
                         " nghttp2-client wrk)")  # fmt: skip
    certs = make_certificates(directory) if args.http2 else None
    csv = os.path.join(directory, "rows.csv")
    write_csv(csv, args.rows)
    floor = math.ceil(args.rows / args.in_flight) * args.latency
    results = []
    for repeat in range(args.repeat):
        measured = {}
        for client in ("engine", "peer") if args.peer else ("engine",):
            nginx_dir = os.path.join(directory, f"nginx-{repeat}-{client}")
            os.makedirs(nginx_dir)
            nginx, base = server(nginx_dir, certs, args.http2, args.latency, args.nginx_workers, args.streams)
            cpu_before = cpu_seconds(nginx.pid)
            try:
                if client == "engine":
                    measured[client] = run_engine(
                        args.rows, csv, base, args, certs and certs.ca, directory, str(repeat)
                    )
                elif args.http2:
                    measured[client] = run_h2load(args.rows, base, args, directory)
                else:
                    measured[client] = run_wrk(args.rows, base, args, directory)
                measured[client]["nginx_cpu"] = cpu_seconds(nginx.pid) - cpu_before
            finally:
                nginx.terminate()
                nginx.wait()
        results.append({**measured, "floor": floor})
    print_table(args, results)
    return results


def print_table(args, results: list[dict]) -> None:
    protocol = "HTTP/2 over TLS" if args.http2 else "HTTP/1.1 (plain)"
    peer = "h2load" if args.http2 else "wrk"
    print(f"\n{args.rows} rows, nginx echo_sleep {args.latency} s ({args.nginx_workers} nginx worker process(es)),"
          f" {protocol}, {args.in_flight} in flight: engine {args.workers} workers x"
          f" {math.ceil(args.in_flight / args.workers)}; {peer} {_peer_shape(args)}\n")  # fmt: skip
    lines = []
    for r in results:
        engine, other = r["engine"], r.get("peer")
        lines.append(
            [
                args.rows,
                args.in_flight,
                f"{engine['wall']:.2f}",
                f"{r['floor']:.1f}",
                f"{engine['wall'] / r['floor']:.3f}",
                f"{other['wall']:.2f} s / {other['rate']:,.0f} per s" if other else "-",
                f"{engine['wall'] / other['wall']:.2f}" if other and args.http2 else "-",
                f"{engine['rate'] / other['rate']:.3f}" if other else "-",
                f"{engine['rss_mb']:,.0f}",
                engine["p50_ms"],
                f"{engine['ok']}" + (f" / {other['ok']}" if other else ""),
                f"{engine['nginx_cpu']:.1f}" + (f" / {other['nginx_cpu']:.1f}" if other else ""),
            ]
        )
    headers = ["rows", "in flight", "engine wall (s)", "floor (s)", "wall / floor", f"{peer} wall / rate",
               f"engine / {peer} wall", f"engine / {peer} rate", "engine peak RSS, all processes (MB)",
               "engine p50 (ms)", "2xx engine / peer", "nginx CPU s engine / peer"]  # fmt: skip
    print(table(headers, lines))
    for r in results:
        extra = r.get("peer", {})
        print(f"\nengine CPU: {r['engine']['cpu']}; {peer}: {extra.get('latency', '-')}", end="")
        print(f"\nengine phases: {r['engine']['phases']}", end="")
    print()


def _peer_shape(args) -> str:
    if args.http2:
        connections = max(1, args.in_flight // args.streams)
        return f"{connections} connections x {args.streams} streams, {args.peer_threads} thread(s)"
    return f"{args.in_flight} connections, {args.peer_threads} thread(s), duration = the floor"
