"""Reading ahead: the input parsed and validated in a helper process while this one writes the ledger.

Loading is the one serial step before anything may be sent, and it has two halves of about
equal cost: reading and validating each row (Python), and writing it to the ledger (SQLite's
B-trees, or PostgreSQL's COPY). A forked reader runs the first half on the other core and
hands over batches of ledger rows through a pipe; the pipe's buffer, widened to hold a few
batches, bounds what is in between (the reader waits only when the writer is that far behind),
so memory stays flat at any size.

The reader is forked, not spawned: it inherits the validator and the rows' iterator as they
are, standard input included, and it leaves through ``os._exit`` (multiprocessing's fork start),
so it never touches the ledger connection it inherited. It ignores Ctrl-C (its parent stops it),
and on Linux the kernel ends it when its parent dies (``kill -9`` included), even while it waits
on an input that never ends; elsewhere it finds out at its next batch. A bad row travels back as
the :class:`~engine.errors.InputError` it raised, and a reader that dies is one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import marshal
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

from engine.errors import EngineError

_FORK = multiprocessing.get_context("fork")

#: What the pipe may hold (Linux; the most an unprivileged process may ask for by default): a few
#: batches. At the default 64 KiB, less than one batch, the reader waited out each insert.
PIPE_BYTES = 1 << 20

#: What the reader sends, as the first byte of each message: a batch (``marshal``: plain tuples of str,
#: int and float, written in a tenth of pickle's time, between two processes of one interpreter), the
#: end once every row was read, or the error that stopped it (pickled).
_BATCH, _END, _ERROR = b"B", b"E", b"X"
#: ``prctl`` option (linux/prctl.h): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class ReaderDied(EngineError):
    """The process reading the input ended before it was read (killed): nothing of the run is sent."""

    exit_code = 1


@contextlib.contextmanager
def read_ahead(batches: Callable[[], Iterator[list[tuple]]]):
    """``batches()`` run in a forked reader; yields an iterator over what it sends. The reader is
    stopped on exit."""
    receiver, sender = _FORK.Pipe(duplex=False)
    _widen(sender)
    reader = _FORK.Process(
        target=_read, args=(batches, receiver, sender, sys.stdin, os.getpid()), name="read-ahead", daemon=True
    )
    with _stdin_left_open():
        reader.start()
    sender.close()  # the reader's end: its exit is then seen here as the end of the pipe
    received = Received(receiver, reader)
    try:
        yield received
    finally:
        if reader.is_alive():
            reader.kill()
        reader.join()
        receiver.close()


class Received:
    """The batches a reader sends, in order."""

    def __init__(self, receiver: Connection, reader):
        self.receiver, self.reader = receiver, reader

    def ready(self) -> bool:
        """Whether the reader has sent something not yet taken (the next batch, its end or its error)."""
        return self.receiver.poll(0)

    def __iter__(self) -> Iterator[list[tuple]]:
        while True:
            try:
                message = self.receiver.recv_bytes()
            except EOFError:
                self.reader.join()
                raise ReaderDied(f"the process reading the input died (exit code {self.reader.exitcode})") from None
            kind, value = message[:1], message[1:]
            if kind == _BATCH:
                yield marshal.loads(value)
            elif kind == _END:
                return
            else:
                raise pickle.loads(value)


def _widen(pipe: Connection) -> None:
    """Ask for a pipe of :data:`PIPE_BYTES` where the system allows it; otherwise it stays as it is."""
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):  # over the user's pipe quota, or above the system's maximum
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


@contextlib.contextmanager
def _stdin_left_open():
    """A child of multiprocessing closes ``sys.stdin`` and reads /dev/null instead, unless there is none: the
    reader is forked with none and puts the parent's back (the input may be standard input)."""
    stdin, sys.stdin = sys.stdin, None  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdin = stdin


def _end_with(parent: int) -> None:
    """Be killed when ``parent`` dies (Linux's ``PR_SET_PDEATHSIG``); leave now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def _read(
    batches: Callable[[], Iterator[list[tuple]]], receiver: Connection, sender: Connection, stdin, parent: int
) -> None:
    _end_with(parent)
    sys.stdin = stdin
    receiver.close()  # the fork's copy: with it open, a parent that died would still seem to be listening
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited by the fork
    try:
        for batch in batches():
            sender.send_bytes(_BATCH + marshal.dumps(batch))
        message = _END
    except Exception as err:  # noqa: BLE001 (every error goes back to the parent, which raises it)
        message = _ERROR + pickle.dumps(err)
    with contextlib.suppress(OSError):  # the parent is gone (killed): nobody is left to tell
        sender.send_bytes(message)
    sender.close()
