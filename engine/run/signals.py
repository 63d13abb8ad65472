"""Ctrl-C and SIGTERM while a run is going: what each phase makes of them."""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRequest:
    """While sending, SIGINT/SIGTERM become a counter the pass loop reads: 1 = drain, 2 = abort now."""

    def __init__(self):
        self.count = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def sigterm_interrupts():
    """While loading (nothing sent yet), SIGTERM stops like Ctrl-C: the workers are ended, the run removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
