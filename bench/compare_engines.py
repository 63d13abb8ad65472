#!/usr/bin/env python3
"""Two engine trees against each other: ``bill`` runs alternating, wall time, phases and CPU per request.

Each tree is a directory holding an ``engine`` package (e.g. ``git archive REV engine | tar -x -C DIR``);
its runs use ``PYTHONPATH=DIR``. nginx answers ``return 200`` as in ``bench/throughput.py``. Medians
of each tree's runs are printed; the pairs alternate so that a busy machine weighs on both.

Example:
    python bench/compare_engines.py /tmp/before /work/wt/mine --rows 200000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TreeWatch, bill_phases, cpu_seconds, start_nginx, table, write_rows  # noqa: E402


def one_run(tree: str, csv_path: str, url: str, directory: str, name: str, nginx_pid: int, rows: int) -> dict:
    """One ``bill`` of the engine in ``tree``: seconds and CPU µs a request per role."""
    db, log = os.path.join(directory, f"{name}.db"), os.path.join(directory, f"{name}.log")
    command = [sys.executable, "-m", "engine", "bill", csv_path, "--url", url, "--db", db, "--run-id", "bench",
               "--workers", "2", "--concurrency", "100", "--quiet", "--log-file", log]  # fmt: skip
    server_before, started = cpu_seconds(nginx_pid), time.time()
    # run from the tree: ``python -m`` puts the working directory first on the path, before PYTHONPATH
    tree = os.path.abspath(tree)
    child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": tree}, cwd=tree, stdout=subprocess.DEVNULL)
    watch = TreeWatch(child.pid)
    if watch.wait(child) != 0:
        raise SystemExit(f"{tree}: bill failed")
    ended = time.time()
    phases = bill_phases(log, started, ended)
    cpu = watch.cpu()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    return {
        "wall": ended - started,
        **phases,
        "coordinator µs": cpu["coordinator"] / rows * 1e6,
        "workers µs": (cpu["workers"] + cpu["other"]) / rows * 1e6,
        "nginx µs": (cpu_seconds(nginx_pid) - server_before) / rows * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, help="two directories, each holding an engine package")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as directory:
        nginx, port = start_nginx(directory)
        try:
            csv_path = os.path.join(directory, "rows.csv")
            write_rows(csv_path, args.rows)
            url = f"http://127.0.0.1:{port}/v1/customers/{{id}}/charges"
            for number in range(args.rounds):
                for index, tree in enumerate(args.trees):
                    run = one_run(tree, csv_path, url, directory, f"{number}-{index}", nginx.pid, args.rows)
                    runs[tree].append(run)
                    print(tree, {key: round(value, 2) for key, value in run.items()}, flush=True)
        finally:
            nginx.terminate()
            nginx.wait()
    keys = list(runs[args.trees[0]][0])
    lines = [
        [tree, *(f"{statistics.median(run[key] for run in runs[tree]):.2f}" for key in keys)] for tree in args.trees
    ]
    print(f"\n{args.rows} rows, medians of {args.rounds} alternating runs each\n")
    print(table(["engine tree", *keys], lines))


if __name__ == "__main__":
    main()
