"""Shared helpers for the benchmark scripts: machine facts, result lines, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import psutil
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


class TreeWatch:
    """Samples a running process and its descendants: peak RSS, and CPU seconds per role.

    Roles: ``coordinator`` (the process itself), ``workers`` (its spawned multiprocessing
    children), ``other`` (anything else, such as multiprocessing's resource tracker).
    CPU is the last sample of each process, so up to one interval per process is missed.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = 0
        self._cpu: dict[int, tuple[str, float]] = {}

    def _role(self, member) -> str:
        if member.pid == self.root.pid:
            return "coordinator"
        command = " ".join(member.cmdline())
        return "workers" if "spawn_main" in command and "resource_tracker" not in command else "other"

    def sample(self) -> None:
        rss = 0
        for member in [self.root, *self.root.children(recursive=True)]:
            try:
                with member.oneshot():
                    rss += member.memory_info().rss
                    times = member.cpu_times()
                    role = self._cpu[member.pid][0] if member.pid in self._cpu else self._role(member)
                    self._cpu[member.pid] = (role, times.user + times.system)
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def wait(self, child: subprocess.Popen) -> int:
        """Sample until ``child`` exits; return its exit code."""
        while child.poll() is None:
            self.sample()
            time.sleep(self.interval)
        return child.returncode

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role."""
        totals = {"coordinator": 0.0, "workers": 0.0, "other": 0.0}
        for role, seconds in self._cpu.values():
            totals[role] += seconds
        return totals


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and its children (a server, between runs)."""
    total = 0.0
    root = psutil.Process(pid)
    for member in [root, *root.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def report(db: str, run_id: str) -> dict:
    done = engine("report", run_id, "--db", db, "--format", "json")
    return json.loads(done.stdout)
