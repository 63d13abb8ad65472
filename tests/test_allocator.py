"""A sender's send buffers get mappings of their own, so the pages libcurl never writes stay free.

Checked through glibc's own count of mapped blocks (``mallinfo2``), with small blocks between the
buffers as a transfer's are, in a fresh interpreter each time: the setting is process-wide and must
not leak into the test process.
"""

import subprocess
import sys

import pytest

from engine.delivery.allocator import COLLECT_AFTER
from engine.delivery.transport import MAP_BUFFERS_ABOVE, UPLOAD_BUFFER

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
    assert mapped_blocks(f"window{MAP_BUFFERS_ABOVE + 1}") >= 90  # a large window asks before its first handle
    assert mapped_blocks(f"window{MAP_BUFFERS_ABOVE}") == 0  # a small one keeps the heap: its buffers are few


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
