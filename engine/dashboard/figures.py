"""What the pages show of a run, read from the ledger no more often than it is worth.

However many pages are open, each run's ledger is read by one reader at a time and not more
often than :data:`LIVE_EVERY` (counts per state: an index; passes) or :data:`DETAILS_EVERY` (latency,
answers by status, attempts, requests/s over time: scans of the run) seconds, and never more
often than every :data:`LIVE_COST` (:data:`DETAILS_COST`) times what the last read took: on a
big run the pages are a few seconds behind rather than a load on the run they watch (live
counts on a 1,000,000-row run: 0.1 s to read, so every 2 s). Details are read in the background;
until the first read is done the pages say so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.dashboard.bounds import too_long
from engine.errors import LedgerError
from engine.ledger import Store
from engine.output.report import scans, summarize

LIVE_EVERY, DETAILS_EVERY = 1.0, 3.0
LIVE_COST, DETAILS_COST = 20.0, 40.0
#: Latency buckets of the histogram and of /metrics (ms).
LATENCY_EDGES = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
#: How far back the requests/s chart looks (s), and its bucket (s).
RATE_WINDOW, RATE_BUCKET = 300.0, 5.0
#: How far back the speed now (and the ETA) looks (s).
RECENT = 10.0
#: The shortest span of reads a speed is measured over (s): before it, none is shown.
MEASURED_OVER = 1.0


@dataclass
class _Read:
    value: dict | None = None
    at: float = float("-inf")  # monotonic
    took: float = 0.0
    reading: bool = False

    def stale(self, every: float, cost: float) -> bool:
        return not self.reading and time.monotonic() - self.at >= max(every, cost * self.took)


class Figures:
    """The figures of each run of one ledger, shared by every page of the dashboard."""

    def __init__(self, open_ledger: Callable[[], Store]):
        self.open_ledger = open_ledger
        self.lock = threading.Lock()
        self.live_reads: dict[str, _Read] = {}
        self.detail_reads: dict[str, _Read] = {}
        self.done_at: dict[str, deque[tuple[float, int]]] = {}  # (wall time, rows done) of the last reads

    def live(self, run_id: str) -> dict:
        """The live summary (state, counts per state, progress, paused, passes) with rows/s now and the
        ETA: at most :data:`LIVE_EVERY` s old."""
        read = self._claim(self.live_reads, run_id, LIVE_EVERY, LIVE_COST)
        if read is not None:
            self._read(read, lambda: self._read_live(run_id))
        with self.lock:
            value = self.live_reads[run_id].value
        if value is None:  # another page's first read is under way
            return self._read_live(run_id)
        return value

    def details(self, run_id: str) -> dict | None:
        """The summary's :func:`~engine.output.report.scans` (attempts, latency, answers by HTTP status, ...)
        and the charts' latency histogram and requests/s over time: the last read (None before the
        first); a read in the background starts when they are due."""
        read = self._claim(self.detail_reads, run_id, DETAILS_EVERY, DETAILS_COST)
        if read is not None:
            threading.Thread(
                target=self._read_in_background, args=(read, lambda: self._read_details(run_id)), daemon=True
            ).start()
        with self.lock:
            return self.detail_reads[run_id].value

    def forget(self, run_id: str) -> None:
        """The run changed (an action here): the next page reads it again."""
        with self.lock:
            for reads in (self.live_reads, self.detail_reads):
                if run_id in reads and not reads[run_id].reading:
                    reads[run_id].at = float("-inf")

    def _claim(self, reads: dict[str, _Read], run_id: str, every: float, cost: float) -> _Read | None:
        with self.lock:
            read = reads.setdefault(run_id, _Read())
            if not read.stale(every, cost):
                return None
            read.reading = True
            return read

    def _read(self, read: _Read, how: Callable[[], dict]) -> None:
        started, value = time.monotonic(), None
        try:
            value = how()
        finally:
            with self.lock:
                read.reading = False
                if value is not None:
                    read.value, read.at, read.took = value, time.monotonic(), time.monotonic() - started

    def _read_in_background(self, read: _Read, how: Callable[[], dict]) -> None:
        try:
            self._read(read, how)
        except LedgerError:
            pass  # the next page asks again; a page reading the ledger says what is wrong
        except Exception as error:  # a read the statement timeout cut off: the next one is due later
            if not too_long(error):
                raise

    def _read_live(self, run_id: str) -> dict:
        with self.open_ledger() as store:
            summary = summarize(store, run_id, live=True)
        rate = self._rows_per_second(run_id, summary["done"], moving=summary["state"] == "running")
        left = summary["pending"]
        return {
            **summary,
            "rows_per_s": None if rate is None else round(rate, 1),
            "eta_s": round(left / rate) if rate and left else None,
        }

    def _rows_per_second(self, run_id: str, done: int, moving: bool) -> float | None:
        """Rows done per second over a window sliding over the last :data:`RECENT` s of reads: None
        until two reads :data:`MEASURED_OVER` s apart, and while the run is not ``moving`` (finished,
        paused: its window starts again when it moves, so a pause never counts down the ETA)."""
        now = time.time()
        with self.lock:
            seen = self.done_at.setdefault(run_id, deque())
            if not moving:
                seen.clear()
                return None
            seen.append((now, done))
            while len(seen) > 2 and now - seen[1][0] >= RECENT:
                seen.popleft()
            then, done_then = seen[0]
        if now - then < MEASURED_OVER or done < done_then:
            return None
        return (done - done_then) / (now - then)

    def _read_details(self, run_id: str) -> dict:
        with self.open_ledger() as store:
            since = time.time() - RATE_WINDOW
            return {
                **scans(store, run_id),
                "latency_histogram": store.latency_histogram(run_id, LATENCY_EDGES),
                "per_bucket": dict(store.attempts_per_second(run_id, since, RATE_BUCKET)),
                "since": since,
            }
