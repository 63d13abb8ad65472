"""A sender's memory: its send buffers get mappings of their own, so the pages libcurl never writes
stay free, and a large window's worker runs on jemalloc.

The mappings are checked through glibc's own count of mapped blocks (``mallinfo2``), with small
blocks between the buffers as a transfer's are, in a fresh interpreter each time: the setting is
process-wide and must not leak into the test process. The allocator is checked in the libraries a
spawned worker has loaded.
"""

import os
import subprocess
import sys
import time
from ctypes.util import find_library
from pathlib import Path

import pytest

from engine.delivery.allocator import COLLECT_AFTER, LARGE_WINDOW, PRELOAD, sender_allocator
from engine.delivery.policy import RetryPolicy
from engine.delivery.transport import UPLOAD_BUFFER
from engine.local.pool import LocalBackend
from engine.request.spec import RequestSpec
from engine.sender_parts import SenderParts, TransportOptions

COUNT_MAPPED_BLOCKS = """
import ctypes, sys
from engine.delivery.allocator import map_large_buffers

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.calloc.restype = MallInfo2, ctypes.c_void_p
if sys.argv[1] == "sender":
    assert map_large_buffers(int(sys.argv[2]))
elif sys.argv[1].startswith("window"):
    from engine.delivery.transport import Transport
    from engine.sender_parts import TransportOptions
    Transport(int(sys.argv[1][len("window"):]), TransportOptions(connect_timeout=5, timeout=5))
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
kept = []
for _ in range(100):  # as transfers start: the handle's small blocks, then the send buffer
    kept += [libc.malloc(300) for _ in range(20)]
    kept.append(libc.calloc(1, int(sys.argv[2]) + 32))  # libcurl's chunk: the buffer and its header
print(libc.mallinfo2().hblks - before)
"""


def mapped_blocks(mode: str) -> int:
    command = [sys.executable, "-c", COUNT_MAPPED_BLOCKS, mode, str(UPLOAD_BUFFER)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_a_large_window_maps_its_send_buffers_on_their_own_a_small_one_and_the_coordinator_do_not():
    assert mapped_blocks("coordinator") == 0  # glibc's default: 16 KiB comes from the heap, resident whole
    assert mapped_blocks("sender") >= 90  # each its own mapping: untouched pages cost nothing
    assert mapped_blocks(f"window{LARGE_WINDOW + 1}") >= 90  # a large window asks before its first handle
    assert mapped_blocks(f"window{LARGE_WINDOW}") == 0  # a small one keeps the heap: its buffers are few


def test_a_sender_runs_pythons_collector_less_often():
    script = (
        "import gc; from engine.delivery.transport import Transport; from engine.sender_parts import TransportOptions;"
        "print(*gc.get_threshold()); Transport(100, TransportOptions(connect_timeout=5, timeout=5));"
        "print(*gc.get_threshold())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = (tuple(map(int, line.split())) for line in done.stdout.splitlines())
    assert before == (700, 10, 10) and after == COLLECT_AFTER


def _libraries_once_started(pid: int) -> str:
    """The memory map of a spawned worker once it has loaded pycurl (it has exec'd and imported)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        maps = Path(f"/proc/{pid}/maps").read_text()
        if "pycurl" in maps:
            return maps
        time.sleep(0.05)
    raise AssertionError("the worker did not start within 30 s")


@pytest.mark.skipif(find_library("jemalloc") is None, reason="libjemalloc2 (.ci/run installs it)")
@pytest.mark.skipif(PRELOAD in os.environ, reason="an LD_PRELOAD of the test's own is left alone")
def test_a_large_window_worker_runs_on_jemalloc_a_small_one_and_the_coordinator_do_not():
    on_jemalloc = {}
    for window in (LARGE_WINDOW + 1, LARGE_WINDOW):
        options = TransportOptions(connect_timeout=5, timeout=5)
        spec = RequestSpec.build("http://127.0.0.1:9/charge")
        parts = SenderParts(spec=spec, policy=RetryPolicy(), transport=options, window=window, chunk_size=100)
        backend = LocalBackend(1, parts)
        try:
            on_jemalloc[window] = "libjemalloc" in _libraries_once_started(backend.slots[0].process.pid or 0)
        finally:
            backend.close()
    assert on_jemalloc == {LARGE_WINDOW + 1: True, LARGE_WINDOW: False}
    assert PRELOAD not in os.environ  # the coordinator's environment is as it was
    assert "libjemalloc" not in Path("/proc/self/maps").read_text()


def test_an_operators_preload_is_left_alone(monkeypatch):
    monkeypatch.setenv(PRELOAD, "")  # LD_PRELOAD= turns jemalloc off
    with sender_allocator(LARGE_WINDOW + 1):
        assert os.environ[PRELOAD] == ""
    assert os.environ[PRELOAD] == ""
