"""Each benchmark script still runs end to end, on a tiny N (figures are not checked here)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
needs_nginx = pytest.mark.skipif(
    not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
    reason="nginx is not installed (.ci/run installs it with apt-get)",
)


def _large_window_tools(peer: str | None = None) -> bool:
    nginx = shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")
    echo = os.path.exists("/usr/lib/nginx/modules/ngx_http_echo_module.so")
    return bool(nginx and echo and (peer is None or shutil.which(peer)))


def run_bench(script: str, *args) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_latency_bound_smoke():
    out = run_bench(
        "latency_bound.py",
        "--rows",
        200,
        "--in-flight",
        100,
        "--latency",
        0.2,
        "--tail-rows",
        300,
        "--tail-in-flight",
        100,
    )
    assert "| 100 |" in out and "chunk-tail check" in out


@needs_nginx
def test_throughput_smoke():
    out = run_bench("throughput.py", "--rows", 2000, "--wrk-seconds", 1)
    with_wrk = ("wrk",) if shutil.which("wrk") else ()  # the C ceiling, when installed
    for client in ("engine (end to end)", "bare", "aiohttp", "httpx", "requests", *with_wrk):
        assert f"| {client} |" in out
    for target in ("pass alone / bare loop | 0.75", "end to end / bare loop | 0.60", "aiohttp + uvloop | 2.50"):
        assert target in out  # the targets, each with the ratio reached in this run


@needs_nginx
def test_memory_smoke():
    out = run_bench("memory.py", "--rows", 2000)
    assert "| 2000 |" in out


def test_ledger_cost_smoke():
    out = run_bench("ledger_cost.py", "--rows", 2000)
    assert "record a result" in out


@needs_nginx
def test_scale_out_smoke(postgres_db, broker):
    """Two node counts on a few thousand rows; the ledger's cost on a few thousand more (PostgreSQL)."""
    out = run_bench(
        "scale_out.py", "--rows", 2000, "--nodes", 1, 2, "--chunk-rows", 500, "--ledger-rows", 2000, "--broker", broker
    )
    assert "| 2 |" in out and "one node's CPU/row / this" in out and "| record |" in out


def test_compare_engines_smoke():
    tree = str(BENCH.parent)  # the same engine twice
    out = run_bench("compare_engines.py", tree, tree, "--rows", 300, "--rounds", 1)
    assert out.count(f"| {tree} |") == 2


@needs_nginx
def test_instructions_smoke():
    """The per-request counting, with CPU time standing in for valgrind (which CI does not install)."""
    tree = str(BENCH.parent)
    out = run_bench("instructions.py", "--no-valgrind", "--rows", 50, 150, "--engine", tree)
    assert "| bare |" in out and f"| engine ({tree}) |" in out and "/ bare loop" in out


def test_instructions_large_window_smoke():
    """The same at a window the engine drives with its epoll loop, nginx answering late: the engine alone
    (the bare loop's ``select`` stops at 1,024 descriptors)."""
    if not _large_window_tools():
        pytest.skip("nginx or libnginx-mod-http-echo is not installed (.ci/run installs them)")
    tree = str(BENCH.parent)
    out = run_bench("instructions.py", "--no-valgrind", "--rows", 300, 900, "--window", 1000, "--answer-after", 0.05,
                    "--engine", tree)  # fmt: skip
    assert "1000 in flight, nginx answering after 0.05 s" in out
    assert f"| engine ({tree}) |" in out and "| bare |" not in out


@pytest.mark.parametrize("protocol", ["http2", "http1.1"])
def test_latency_bound_nginx_smoke(protocol):
    """The large-window mode against nginx echo_sleep, beside h2load (HTTP/2) or wrk (HTTP/1.1)."""
    peer = "h2load" if protocol == "http2" else "wrk"
    if not _large_window_tools(peer):
        pytest.skip(f"nginx, libnginx-mod-http-echo or {peer} is not installed (.ci/run installs them)")
    args = ["--http2", "--streams", 100] if protocol == "http2" else []
    out = run_bench("latency_bound.py", "--server", "nginx", *args, "--rows", 600, "--in-flight", 300,
                    "--latency", 0.3, "--workers", 2)  # fmt: skip
    assert "open-file limit (ulimit -n)" in out
    assert f"| {peer} wall / rate |" in out and "| 600 | 300 |" in out
