"""Shared helpers for the benchmark scripts: machine facts, result lines, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pycurl

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results.jsonl")


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "libcurl": pycurl.version}


def record(bench: str, figure: str, value, unit: str, **extra) -> dict:
    """Append one figure as a JSON line to bench/results.jsonl (git-ignored) and return it."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "bench": bench, "figure": figure, "value": value,
            "unit": unit, **extra, "machine": machine()}
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def engine(*args, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``python -m engine ...`` and return the finished process."""
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def report(db: str, run_id: str) -> dict:
    done = engine("report", run_id, "--db", db, "--format", "json")
    return json.loads(done.stdout)
