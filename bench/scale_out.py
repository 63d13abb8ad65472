#!/usr/bin/env python3
"""Scale-out: the same run on 1, 2 and 4 worker nodes, each process's CPU, and the PostgreSQL ledger's cost per row.

Each node is its own process tree (``python -m engine worker``, same ``--chunks-in-flight``
and the run's same ``--concurrency``) on a real Redis broker, recording into a real
PostgreSQL ledger. The API is nginx answering at once (``--server nginx``, the default), so
the windows are never what bounds the rate: the nodes' CPU and the ledger's are. ``--server
mock`` is the old measure, the mock API answering after ``--latency`` s, where a node's
window caps its rate.

Printed per node count: the bill's wall time, the send phase (first attempt started to last
attempt ended, from the ledger) and its requests/s, per node and over one node's; then where
the CPU went: each node's process tree, the ledger's server backends, Redis, the API server
and the coordinator, as µs per row and as cores busy during the run. On one machine the nodes
share its cores with everything else, so "linear" has two readings here: requests/s per node
(bounded once the cores are full) and CPU per row (constant when adding a node costs nothing
but its own work). Then the ledger's CPU per row for loading and recording, on PostgreSQL,
counted on both sides of the connection.

Example:
    python bench/scale_out.py --rows 1000000 --nodes 1     # one node count per command
    python bench/scale_out.py --rows 2000 --nodes 1 2       # a smoke run
    python bench/scale_out.py --server mock --rows 20000 --concurrency 50 --chunks-in-flight 2 --chunk-rows 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import BENCH_BROKER, fresh_postgres, record, start_nginx, table, worker_nodes, write_rows  # noqa: E402
from ledger_cost import ledger_cost  # noqa: E402

from engine.mock.process import MockProcess  # noqa: E402

ROLES = ("nodes", "ledger, nodes'", "ledger, coordinator's", "ledger, other", "redis", "api", "coordinator")


class Proc(NamedTuple):
    name: str
    command: str
    ppid: int
    cpu: float


def snapshot() -> dict[int, Proc]:
    """Every process now, with its CPU seconds: one pass over /proc."""
    found = {}
    for process in psutil.process_iter(["name", "cmdline", "ppid", "cpu_times"]):
        info = process.info
        if info["cpu_times"] is not None:
            cpu = info["cpu_times"].user + info["cpu_times"].system
            found[process.pid] = Proc(info["name"] or "", " ".join(info["cmdline"] or []), info["ppid"], cpu)
    return found


class CpuWatch:
    """CPU seconds of groups of processes, sampled every ``interval`` s while a run goes (the last sample
    of a process that exits counts; at most one interval of it is missed). A group is a function from
    a :func:`snapshot` to its pids; one snapshot a sample keeps the watch itself cheap."""

    def __init__(self, groups: dict, interval: float = 1.0):
        self.groups, self.interval = groups, interval
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        now = snapshot()
        self._before = self._before or set(now)  # alive when the watch began: counted from then
        for name, pids in self.groups.items():
            for pid in pids(now):
                self.first.setdefault((name, pid), now[pid].cpu if pid in self._before else 0.0)
                self.last[(name, pid)] = now[pid].cpu

    def __enter__(self) -> CpuWatch:
        self._sample()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(self.groups, 0.0)
        for (name, pid), last in self.last.items():
            totals[name] += last - self.first[(name, pid)]
        return totals


def tree(root: int):
    """A process and its descendants."""

    def pids(now: dict[int, Proc]) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid, process in now.items():
            children.setdefault(process.ppid, []).append(pid)
        found, todo = [], [root] if root in now else []
        while todo:
            found.append(pid := todo.pop())
            todo.extend(children.get(pid, ()))
        return found

    return pids


def named(word: str, in_command: str = ""):
    def pids(now: dict[int, Proc]) -> list[int]:
        return [pid for pid, process in now.items() if word in process.name and in_command in process.command]

    return pids


def backends(db: str, clients=None):
    """The PostgreSQL server processes serving the database ``db`` names; with ``clients`` (a group),
    only those whose client is one of its processes (a backend's title names its client's port)."""
    params = conninfo_to_dict(db)
    serving, port = named("postgres", f" {params['dbname']} "), int(params.get("port", 5432))
    theirs: dict[int, bool] = {}  # backend pid -> whether its client is in the group

    def pids(now: dict[int, Proc]) -> list[int]:
        found = serving(now)
        if clients is None:
            return found
        if any(pid not in theirs for pid in found):
            ports = set()
            for pid in clients(now):
                with contextlib.suppress(psutil.Error):
                    connections = psutil.Process(pid).net_connections("tcp")
                    ports |= {c.laddr.port for c in connections if c.raddr and c.raddr.port == port}
            for pid in found:
                if pid not in theirs and (m := re.search(r"\((\d+)\)", now[pid].command)):
                    theirs[pid] = int(m[1]) in ports
        return [pid for pid in found if theirs.get(pid)]

    return pids


def start_api(server: str, directory: str, latency: float):
    """The API: nginx answering 200 at once, or the mock after ``latency`` s; (url, pid, stop)."""
    if server == "nginx":
        process, port = start_nginx(directory)
        stop = lambda: (process.terminate(), process.wait(10))  # noqa: E731 (SIGKILL would orphan its workers)
        return f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges", process.pid, stop
    api = MockProcess(latency=latency).__enter__()
    return api.charge_url(), api.process.pid, lambda: api.__exit__(None, None, None)


def send_phase(db: str) -> tuple[float, int, int]:
    """First attempt started to last attempt ended (s), attempts, rows succeeded: the ledger's own clock."""
    with psycopg.connect(db) as conn:
        first, last, attempts = conn.execute(
            "SELECT min(started_at), max(started_at + duration_ms / 1000.0), count(*) FROM attempts"
        ).fetchone()
        succeeded = conn.execute("SELECT count(*) FROM requests WHERE status = 'succeeded'").fetchone()[0]
    return last - first, attempts, succeeded


def run_on(nodes: int, rows: int, csv_path: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as directory, fresh_postgres() as db:
        url, api_pid, stop_api = start_api(args.server, directory, args.latency)
        try:
            with worker_nodes(nodes, db, "--chunks-in-flight", args.chunks_in_flight, broker=args.broker) as started:
                groups = {f"node {i + 1}": tree(node.pid) for i, node in enumerate(started)}
                groups |= {"redis": named("redis-server"), "api": tree(api_pid)}
                for i, node in enumerate(started):
                    groups[f"ledger for node {i + 1}"] = backends(db, tree(node.pid))
                bill = [sys.executable, "-m", "engine", "bill", csv_path, "--url", url, "--db", db]
                bill += ["--broker", args.broker, "--run-id", "scale", "--quiet"]
                bill += ["--concurrency", str(args.concurrency), "--chunks", str(args.chunk_rows)]
                started_at = time.monotonic()
                coordinator = subprocess.Popen(bill, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                groups |= {"coordinator": tree(coordinator.pid), "ledger, all": backends(db)}
                groups["ledger for the coordinator"] = backends(db, tree(coordinator.pid))
                with CpuWatch(groups) as watch:
                    _, stderr = coordinator.communicate()
                wall = time.monotonic() - started_at
                assert coordinator.returncode == 0, stderr[-3000:]
        finally:
            stop_api()
        phase, attempts, succeeded = send_phase(db)
    assert succeeded == rows and attempts == rows, (succeeded, attempts, rows)  # each row sent once, all succeeded
    cpu = watch.seconds()
    node_cpu = [cpu[f"node {i + 1}"] for i in range(nodes)]
    nodes_ledger = sum(cpu[f"ledger for node {i + 1}"] for i in range(nodes))
    others = cpu["ledger, all"] - sum(cpu[name] for name in cpu if name.startswith("ledger for"))
    cpu["ledger, other"] = others  # the benchmark's own connections (tables made, checks)
    cpu["ledger, nodes'"], cpu["ledger, coordinator's"] = nodes_ledger, cpu["ledger for the coordinator"]
    return {
        "nodes": nodes,
        "wall_s": round(wall, 2),
        "send_s": round(phase, 2),
        "requests_per_s": round(rows / phase, 1),
        "node_cpu_s": [round(seconds, 1) for seconds in node_cpu],
        "cpu_us_per_row": {
            "nodes": round(sum(node_cpu) / rows * 1e6, 1),
            **{role: round(cpu[role] / rows * 1e6, 1) for role in ROLES[1:]},
        },
        "cores_busy": round((sum(node_cpu) + sum(cpu[role] for role in ROLES[1:])) / wall, 2),
    }


def scaling_table(results: list[dict]) -> str:
    one = results[0]["requests_per_s"] / results[0]["nodes"]
    one_cpu = sum(results[0]["cpu_us_per_row"].values())
    rows = []
    for r in results:
        per_node = r["requests_per_s"] / r["nodes"]
        total_cpu = sum(r["cpu_us_per_row"].values())
        r["per_node"], r["efficiency"] = round(per_node, 1), round(per_node / one, 3)
        r["cpu_efficiency"] = round(one_cpu / total_cpu, 3)
        rows.append([r["nodes"], r["wall_s"], r["send_s"], r["requests_per_s"], r["per_node"], r["efficiency"],
                     " / ".join(map(str, r["node_cpu_s"])), r["cores_busy"], round(total_cpu, 1),
                     r["cpu_efficiency"]])  # fmt: skip
    return table(
        ["nodes", "wall (s)", "send (s)", "requests/s", "per node", "per node / one node's", "CPU s per node",
         "cores busy", "CPU µs/row, all", "one node's CPU/row / this"],
        rows,
    )  # fmt: skip


def cpu_table(results: list[dict]) -> str:
    return table(
        ["nodes", *(f"{role} µs/row" for role in ROLES), "all"],
        [
            [r["nodes"], *(r["cpu_us_per_row"][role] for role in ROLES), round(sum(r["cpu_us_per_row"].values()), 1)]
            for r in results
        ],
    )


def print_scaling(results: list[dict], args: argparse.Namespace) -> None:
    window = args.concurrency * args.chunks_in_flight
    server = "nginx answering at once" if args.server == "nginx" else f"the mock answering after {args.latency} s"
    print(f"\n{args.rows} rows, {server}; each node {window} in flight ({args.chunks_in_flight} chunks of"
          f" {args.chunk_rows} rows x {args.concurrency}); {os.cpu_count()} cores\n")  # fmt: skip
    print(scaling_table(results))
    print("\nCPU per row by role (µs; nodes: all nodes together; ledger: the PostgreSQL backends serving the nodes,"
          " the coordinator, and any other client such as the benchmark's checks)\n")  # fmt: skip
    print(cpu_table(results))
    for r in results:
        record("scale_out", f"requests/s on {r['nodes']} nodes", r["requests_per_s"], "requests/s",
               rows=args.rows, server=args.server, window=window, **r)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 4], help="none: the ledger's cost only")
    parser.add_argument("--server", choices=("nginx", "mock"), default="nginx")
    parser.add_argument("--latency", type=float, default=0.5, help="the mock's answer time (s), --server mock")
    parser.add_argument("--concurrency", type=int, default=500, help="rows in flight per chunk")
    parser.add_argument("--chunks-in-flight", type=int, default=2, help="chunks per node at once")
    parser.add_argument("--chunk-rows", type=int, default=5000, help="rows per chunk (--chunks of bill)")
    parser.add_argument("--broker", default=BENCH_BROKER, help="a Redis database the benchmark may flush")
    parser.add_argument("--ledger-rows", type=int, default=50_000, help="0: skip the ledger's cost")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        csv_path = os.path.join(directory, "rows.csv")
        write_rows(csv_path, args.rows)
        results = [run_on(n, args.rows, csv_path, args) for n in args.nodes]
    if results:
        print_scaling(results, args)
    if args.ledger_rows:
        with fresh_postgres() as db:
            cost = ledger_cost(db, args.ledger_rows)
        for step, figures in cost.items():
            record("scale_out", f"postgres {step} µs/row", figures, "us", rows=args.ledger_rows)
        print(f"\nPostgreSQL ledger, {args.ledger_rows} rows: CPU per row (µs), this process + its server backend\n")
        print(
            table(
                ["step", "client", "server", "total"],
                [[step, f["client"], f["server"], round(f["client"] + f["server"], 1)] for step, f in cost.items()],
            )
        )


if __name__ == "__main__":
    main()
