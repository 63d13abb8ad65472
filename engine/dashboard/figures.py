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

from engine.errors import LedgerError
from engine.ledger import Store
from engine.output.report import not_yet_sent
from engine.states import FAILED, KEY_CONFLICT, REJECTED, SUCCEEDED, UNKNOWN

LIVE_EVERY, DETAILS_EVERY = 1.0, 3.0
LIVE_COST, DETAILS_COST = 20.0, 40.0
#: Latency buckets of the histogram and of /metrics (ms).
LATENCY_EDGES = (50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
#: How far back the requests/s chart looks (s), and its bucket (s).
RATE_WINDOW, RATE_BUCKET = 300.0, 5.0
#: How far back the speed now (and the ETA) looks (s).
RECENT = 10.0


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
        """State, counts per state, progress, rows/s now, ETA, paused, passes: at most :data:`LIVE_EVERY` s old."""
        read = self._claim(self.live_reads, run_id, LIVE_EVERY, LIVE_COST)
        if read is not None:
            self._read(read, lambda: self._read_live(run_id))
        with self.lock:
            value = self.live_reads[run_id].value
        if value is None:  # another page's first read is under way
            return self._read_live(run_id)
        return value

    def details(self, run_id: str) -> dict | None:
        """Latency, answers by status, attempts, requests/s over time: the last read (None before the
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

    def _read_live(self, run_id: str) -> dict:
        with self.open_ledger() as store:
            run = store.get_run(run_id)
            counts = store.counts(run_id)
            paused = store.is_paused(run_id)
            passes = store.passes(run_id)
        now = time.time()
        elapsed = sum((p["finished_at"] or now) - p["started_at"] for p in passes)  # a running pass too
        total = sum(counts.values())  # the rows loaded so far, while it loads
        left = not_yet_sent(counts)
        done = total - left
        rate = self._rows_per_second(run_id, done)
        return {
            "run_id": run_id,
            "state": run["state"],
            "created_at": run["created_at"],
            "total": total,
            "succeeded": counts[SUCCEEDED],
            "failed": counts[FAILED],
            "rejected": counts[REJECTED],
            "unknown": counts[UNKNOWN],
            "key_conflict": counts[KEY_CONFLICT],
            "pending": left,
            "done": done,
            "progress": round(done / total, 4) if total else 1.0,
            "elapsed_s": round(elapsed, 1),
            "average_rows_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
            "rows_per_s": round(rate, 1),
            "eta_s": round(left / rate) if rate and left else None,
            "paused": paused,
            "passes": passes,
            "finished_at": passes[-1]["finished_at"] if passes else None,
        }

    def _rows_per_second(self, run_id: str, done: int) -> float:
        """Rows done per second over the last :data:`RECENT` s of reads (0 until two reads)."""
        now = time.time()
        with self.lock:
            seen = self.done_at.setdefault(run_id, deque())
            seen.append((now, done))
            while len(seen) > 2 and now - seen[1][0] >= RECENT:
                seen.popleft()
            then, done_then = seen[0]
        return (done - done_then) / (now - then) if now > then and done >= done_then else 0.0

    def _read_details(self, run_id: str) -> dict:
        with self.open_ledger() as store:
            since = time.time() - RATE_WINDOW
            return {
                "latency_ms": {
                    f"p{round(q * 100)}": None if value is None else round(value, 1)
                    for q, value in store.latency_percentiles(run_id, (0.50, 0.95, 0.99)).items()
                },
                "latency_histogram": store.latency_histogram(run_id, LATENCY_EDGES),
                "answers": store.status_counts(run_id),
                "attempts": store.attempt_count(run_id),
                "per_bucket": dict(store.attempts_per_second(run_id, since, RATE_BUCKET)),
                "since": since,
            }
