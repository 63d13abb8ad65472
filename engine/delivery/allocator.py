"""The memory of a pass's processes: a sender's C allocator told to map buffers of 16 KiB and more
on their own, and Python's collector run less often in senders and in the coordinator's pass.

libcurl gives every transfer with a body a send buffer of ``CURLOPT_UPLOAD_BUFFERSIZE`` bytes
(16 KiB, its least) and keeps it for as long as the handle lives; over HTTP/2 it copies each
body into a 16 KiB chunk of its connection's pool as well. A request writes only the first
few hundred bytes of each. Carved from glibc's heap, such a buffer is resident whole
(``calloc`` zeroes reused memory); mapped on its own, only the pages written are.

glibc maps a block only when its heap cannot serve it, and each time the heap grows it takes
128 KiB more than asked (``M_TOP_PAD``), from which the next large blocks are carved: so the
padding goes too. Measured on 20,000 HTTP/2 POSTs in flight in one process: 31.5 KB per transfer
on the heap, 18.3 KB with the threshold alone (a quarter of the buffers still on the heap),
13.2 KB with no padding as well (jemalloc: 13.8), and no more CPU. Only senders ask for it: in the
coordinator every large allocation would become a system call for nothing.

Every transfer in flight holds a few Python objects (its row, its rendered request) that outlive
the collector's young generations; at Python's thresholds the collector walked them again and
again, 4 % of a worker's CPU at 25,000 HTTP/2 transfers in flight; the coordinator's rows out
with the workers and its pages of rows cost it as much (5-10 % of its CPU against nginx answering
at once). Their objects die by reference counting; the rare cycle is still collected, later.

A sender with a large window is started on jemalloc where the machine has it (Debian's libjemalloc2,
which redis-server already brings). libcurl allocates for every transfer (each response header for
its header store, each writer of the answer, the HTTP/2 request's header list), and with tens of
thousands of transfers in flight, ending in any order, glibc's bins fragment: its allocator
(``_int_malloc``, ``unlink_chunk``, ``malloc_consolidate``, ``free``) was 15-20 % of a worker's CPU
at 25,000 HTTP/2 streams, where jemalloc's size-class slabs serve the same calls in a fraction.
A library cannot replace the allocator of a running process, so the pool names it in
``LD_PRELOAD`` for the workers it spawns; an ``LD_PRELOAD`` already set is the operator's and is
left alone (``LD_PRELOAD=`` turns this off). A small window keeps glibc: there it measured no
different.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: Transfers in flight above which a sender has a large window: it maps its large buffers on their own
#: (16 KB a transfer is 1.6 MB at 100 in flight, and the mappings cost a small window about 1 % more
#: CPU, 0.7 µs a request against nginx), and it runs on jemalloc where the machine has it.
LARGE_WINDOW = 1000
#: The environment variable the dynamic loader reads the libraries to load first from.
PRELOAD = "LD_PRELOAD"
#: glibc's ``mallopt`` parameters: the size from which an allocation gets a mapping of its own, and
#: the bytes the heap takes beyond what it needs each time it grows.
M_MMAP_THRESHOLD = -3
M_TOP_PAD = -2
#: The collector's thresholds in a pass: tracked objects allocated between two young collections
#: (Python's default 700), and young collections between two of the next generation (10).
COLLECT_AFTER = (20_000, 20, 20)


def map_large_buffers(threshold: int) -> bool:
    """Give allocations of ``threshold`` bytes and more mappings of their own (glibc); True if it took.
    Elsewhere (macOS, musl) nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no mallopt in it
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TOP_PAD, 0) == 1


def collect_less() -> None:
    """Run Python's cyclic collector less often in this process, a sender or a coordinator's pass
    (see :data:`COLLECT_AFTER`)."""
    gc.set_threshold(*COLLECT_AFTER)


@cache
def _jemalloc() -> str | None:
    """The name the loader finds jemalloc by on this machine (``libjemalloc.so.2``), or None."""
    from ctypes.util import find_library  # only the coordinator asks: a worker does not import it

    return find_library("jemalloc")


@contextmanager
def sender_allocator(window: int) -> Iterator[None]:
    """The processes started inside run on jemalloc if they send a ``window`` larger than
    :data:`LARGE_WINDOW`, the machine has it, and ``LD_PRELOAD`` is not already set; else as they are.
    This process's environment is as before once the block ends."""
    library = _jemalloc() if window > LARGE_WINDOW and PRELOAD not in os.environ else None
    if library is None:
        yield
        return
    os.environ[PRELOAD] = library
    try:
        yield
    finally:
        del os.environ[PRELOAD]
