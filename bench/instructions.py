#!/usr/bin/env python3
"""Instructions per request: one sending process of the engine against the bare pycurl loop, counted by callgrind.

On a shared 2-core VM the CPU time of the same code moves by 20–30 % from run to run; the
instructions a process executes move by 0.1–2 % (how many answers each turn of the loop finds
varies a little), so a change of a few per cent in the per-request path shows here when no timing
can show it. Each client sends ``--rows N1``
and then ``N2`` rows to nginx answering ``return 200``, each time in a process of its own under
``valgrind --tool=callgrind``; (instructions at N2 − at N1) / (N2 − N1) is its cost per request,
start-up left out. User space only: the kernel's share (loopback TCP, epoll) is not counted.

The engine's client is a :class:`~engine.delivery.sender.Sender` with a window of 100, driven as a
node drives it (keys, the retry policy, the gate, a record per attempt), without the coordinator.
``--window N --answer-after S`` measures a large window instead: nginx answers after S seconds
(the echo module's ``echo_sleep``), and above 400 in flight the engine drives libcurl with its
epoll loop. The bare loop waits with ``select``, which cannot see descriptors past 1,024: above
:data:`BARE_WINDOW_MAX` only the engine is counted.
``--engine DIR`` (repeatable) measures the ``engine`` package in DIR (a ``git archive REV engine``
tree) instead of this checkout's: an A/B in one command. ``--no-valgrind`` measures CPU time
instead, in seconds of process time: quick, and as noisy as the machine.

Example:
    python bench/instructions.py
    python bench/instructions.py --engine /tmp/before --engine . --rows 5000 15000
    python bench/instructions.py --window 1000 --answer-after 1.6 --rows 3000 9000 --engine /tmp/before --engine .
Needs valgrind (``apt-get install valgrind``) and nginx (with ``--answer-after``, libnginx-mod-http-echo).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import answer_after, record, start_nginx, table  # noqa: E402

#: Transfers in flight in each client by default: one worker of ``bench/throughput.py``.
WINDOW = 100
#: The largest window the bare loop is run at (``select`` sees no descriptor past 1,024).
BARE_WINDOW_MAX = 900
#: How the instruction counts are grouped: the object file they ran in.
GROUPS = (("Python", "libpython"), ("libcurl", "libcurl"), ("libc", "libc.so"), ("pycurl", "_pycurl"))


def send_engine(url: str, rows: int, window: int) -> int:
    """The engine's sending loop, as a worker node runs a chunk: the 2xx answers among ``rows``."""
    import multiprocessing

    from engine.delivery.breaker import BreakerSettings, CircuitBreaker
    from engine.delivery.gate import Gate
    from engine.delivery.policy import RetryPolicy
    from engine.delivery.ratelimit import Pacer
    from engine.delivery.sender import Sender
    from engine.request.spec import RequestSpec
    from engine.sender_parts import SenderParts, TransportOptions
    from engine.states import SUCCEEDED
    from engine.wire import OUTCOME, Dispatch

    context = multiprocessing.get_context("spawn")
    gate = Gate(CircuitBreaker.create(context, BreakerSettings()), Pacer.create(context, None, 1, window))
    options = TransportOptions(connect_timeout=10, timeout=60)
    parts = SenderParts(
        spec=RequestSpec.build(url), policy=RetryPolicy(), transport=options, window=window, chunk_size=100
    )
    sender = Sender(parts, gate)
    chunk = [
        Dispatch(n, f"cus_{n:07d}", f'{{"id": "cus_{n:07d}", "amount_cents": 1234}}', f"bench:cus_{n:07d}", 0)
        for n in range(1, rows + 1)
    ]
    return sum(attempt[OUTCOME] == SUCCEEDED for attempt in sender.send(chunk))


def send_bare(url: str, rows: int, window: int) -> int:
    from peers import bare_pycurl

    return bare_pycurl(url, rows, window)


CLIENTS = {"engine": send_engine, "bare": send_bare}


def measure(
    client: str, tree: str | None, url: str, rows: int, window: int, directory: str, valgrind: bool
) -> tuple[float, dict[str, int]]:
    """One child sending ``rows``, ``window`` at a time: its instructions (or CPU seconds) in all, and the
    instructions by group."""
    command = [sys.executable, os.path.abspath(__file__), "--child", client, "--url", url, "--count", str(rows)]
    command += ["--window", str(window)]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)} if tree else None
    out = os.path.join(directory, f"callgrind.{client}.{rows}.{time.monotonic_ns()}")
    if valgrind:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or f"ok {rows}" not in done.stdout:
        raise SystemExit(f"{client} ({tree or 'this checkout'}) failed: {done.stdout[-500:]} {done.stderr[-2000:]}")
    if not valgrind:
        return float(done.stdout.split()[-1]), {}
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if collected is None:
        raise SystemExit(f"valgrind printed no instruction count: {done.stderr[-2000:]}")
    return int(collected.group(1)), _by_group(out)


def _by_group(out: str) -> dict[str, int]:
    """The instructions of a callgrind output file by object file (:data:`GROUPS`; the rest is "other")."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", out], capture_output=True, text=True
    ).stdout
    groups: collections.Counter[str] = collections.Counter()
    for line in annotated.splitlines():
        found = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if found and "PROGRAM TOTALS" not in line:
            # "file:function [object]"; code inlined from a header has no object, only CPython's file
            where = found.group(2)
            obj = where.rpartition("[")[2] if where.endswith("]") else ("libpython" if "Python-" in where else where)
            name = next((group for group, part in GROUPS if part in obj), "other")
            groups[name] += int(found.group(1).replace(",", ""))
    return dict(groups)


def per_request(
    first: tuple[float, dict[str, int]], second: tuple[float, dict[str, int]], rows: int
) -> tuple[float, dict[str, float]]:
    """The second run's cost less the first's, per request of the difference."""
    total = (second[0] - first[0]) / rows
    groups = {name: (second[1].get(name, 0) - first[1].get(name, 0)) / rows for name in second[1]}
    return total, groups


def child(client: str, url: str, rows: int, window: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)  # a socket each
    started = time.process_time()
    ok = CLIENTS[client](url, rows, window)
    print(f"ok {ok} cpu {time.process_time() - started:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[5000, 15000], metavar=("N1", "N2"))
    parser.add_argument("--engine", action="append", default=[], metavar="DIR", help="an engine tree (repeatable)")
    parser.add_argument("--no-valgrind", action="store_true", help="CPU seconds instead of instructions")
    parser.add_argument("--window", type=int, default=WINDOW, help="transfers in flight in each client")
    parser.add_argument("--answer-after", type=float, default=0.0, metavar="S", help="nginx answers after S seconds")
    parser.add_argument("--child", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.url, args.count, args.window)
    valgrind = not args.no_valgrind
    if valgrind and not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed: apt-get install valgrind (or give --no-valgrind)")
    small, large = args.rows
    runs = [("bare", None)] if args.window <= BARE_WINDOW_MAX else []
    runs += [("engine", tree) for tree in args.engine or [None]]
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as directory:
        answer = {"answer": answer_after(args.answer_after)} if args.answer_after else {}
        server, port = start_nginx(directory, **answer)
        url = f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"
        try:
            figures = []
            for client, tree in runs:
                first, second = (
                    measure(client, tree, url, rows, args.window, directory, valgrind) for rows in (small, large)
                )
                figures.append((client, tree, *per_request(first, second, large - small)))
        finally:
            server.terminate()
            server.wait()
    answered = f"nginx answering after {args.answer_after:g} s" if args.answer_after else "nginx `return 200`"
    print_figures(figures, valgrind, small, large, f"{args.window} in flight, {answered}")


def print_figures(figures: list[tuple], valgrind: bool, small: int, large: int, setting: str) -> None:
    """The table of each client's cost per request (by object file, when counted), and its ratio to the bare
    loop (when it ran)."""
    unit, scale = ("instructions", 1) if valgrind else ("CPU µs", 1e6)
    names = [group for group, _ in GROUPS] + ["other"] if valgrind else []
    bare = figures[0][2] if figures[0][0] == "bare" else None
    rows = []
    for client, tree, total, groups in figures:
        label = client if tree is None else f"{client} ({tree})"
        parts = [f"{groups.get(name, 0):,.0f}" for name in names]
        rows.append([label, f"{total * scale:,.0f}", *parts, f"{total / bare:.2f}" if bare else "-"])
        record("instructions", f"{unit} per request", total * scale, unit, client=client, tree=tree or ".")
    print(f"\n{unit} per request, {large - small} rows (runs of {small} and {large}), {setting}\n")
    print(table(["client", f"{unit} per request", *names, "/ bare loop"], rows))


if __name__ == "__main__":
    main()
