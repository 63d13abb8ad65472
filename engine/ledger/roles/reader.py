"""The :class:`LedgerReader` role, and the columns a found or exported row has (:data:`FOUND_COLUMNS`)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from engine.ledger.roles.base import Ledger
from engine.ledger.selection import RowFilter

#: Rows read at a time by :meth:`LedgerReader.iter_rows`.
EXPORT_PAGE = 2000
#: A row's outcome as ``export`` and the dashboard show it (an export's header, even when no row matches).
EXPORT_COLUMNS = (
    "row_id",
    "line",
    "status",
    "attempts",
    "http_status",
    "curl_error",
    "error",
    "latency_ms",
    "idempotency_key",
)
#: What :meth:`LedgerReader.find_rows` gives for each row.
FOUND_COLUMNS = (
    "rid",
    *EXPORT_COLUMNS,
    "payload",
    "excerpt",
    "captured",
    "updated_at",
)


class RowTotals(NamedTuple):
    """What one scan of a run's rows adds up: attempts made, successes the API replayed
    (``Idempotent-Replayed``: an earlier attempt's charge), and rows whose last attempt was answered
    (the latency percentiles rank those)."""

    attempts: int
    replays: int
    answered: int


class LedgerReader(Ledger):
    """What reports, ``status``, ``export`` and the dashboard read: counts, percentiles, rows found by a filter."""

    @abstractmethod
    def list_runs(self) -> list[dict]:
        """Every run, oldest first, with its counts per state."""

    @abstractmethod
    def counts(self, run_id: str) -> dict[str, int]:
        """Rows per state (every state of :data:`engine.states.STATES`, zeros included)."""

    @abstractmethod
    def count_in(self, run_id: str, states: Iterable[str]) -> int: ...

    @abstractmethod
    def top_error(self, run_id: str) -> tuple[str, int] | None:
        """The most common last error of the rows that did not succeed, and how many rows have it."""

    @abstractmethod
    def row_totals(self, run_id: str) -> RowTotals:
        """The run's :class:`RowTotals`, in one scan of its rows."""

    @abstractmethod
    def elapsed(self, run_id: str) -> float:
        """Seconds spent sending, summed over the run's passes."""

    @abstractmethod
    def latency_percentiles(
        self, run_id: str, quantiles: Iterable[float], ranked: Callable[[], int] | None = None
    ) -> dict[float, float | None]:
        """Nearest-rank percentiles of the latency of each row's last answered attempt, in constant memory.
        ``ranked``, if given, says how many rows that is (:attr:`RowTotals.answered`), asked once the
        rows are sorted: the caller may still be counting them, on another connection."""

    @abstractmethod
    def capture_counts(self, run_id: str, names: Iterable[str]) -> dict[str, int]:
        """How many rows have each ``--capture`` value."""

    @abstractmethod
    def status_counts(self, run_id: str) -> dict[str | None, int]:
        """Attempts per HTTP status (``"curl:N"`` for transfers that got no answer, None for one with neither)."""

    @abstractmethod
    def latency_histogram(self, run_id: str, edges: tuple[float, ...]) -> list[int]:
        """Attempts with an HTTP answer per latency bucket (ms): ``< edges[0]``, ..., ``>= edges[-1]``."""

    @abstractmethod
    def attempts_per_second(self, run_id: str, since: float, bucket: float) -> list[tuple[float, int]]:
        """Attempts started per ``bucket`` seconds from ``since``: (bucket start, count), oldest first."""

    def iter_rows(self, run_id: str, rows: RowFilter | Iterable[str]) -> Iterator[dict]:
        """Every row matching ``rows`` (a filter, or the states to take), in input order, as dicts of
        :data:`FOUND_COLUMNS`: read in pages, so memory stays flat on a run of millions."""
        if not isinstance(rows, RowFilter):
            rows = RowFilter(states=tuple(rows))
        after = 0
        while page := self.find_rows(run_id, rows, after_rid=after, limit=EXPORT_PAGE):
            yield from page
            after = page[-1]["rid"]

    @abstractmethod
    def find_rows(self, run_id: str, rows: RowFilter, after_rid: int = 0, limit: int = 100) -> list[dict]:
        """Up to ``limit`` rows matching ``rows`` with ``rid`` above ``after_rid``, in rid order (keyset
        paging: stable while the run goes on), as dicts of :data:`FOUND_COLUMNS`."""

    @abstractmethod
    def count_rows(self, run_id: str, rows: RowFilter) -> dict[str, int]:
        """How many rows match ``rows``, per state (states without a match are left out)."""

    @abstractmethod
    def row_attempts(self, rid: int) -> list[dict]:
        """Every attempt of one row, in order."""

    @abstractmethod
    def audit(self, run_id: str, limit: int = 50) -> list[dict]:
        """The run's last ``limit`` actions, newest first: ``at``, ``who``, ``action``, ``rows``, ``outcome``."""

    @abstractmethod
    def failure_groups(self, run_id: str, limit: int) -> list[dict]:
        """The run's failures by state, HTTP status, curl error and error text (at most ``limit`` of the
        commonest): ``status``, ``http_status``, ``curl_error``, ``error``, ``rows`` and an example ``row_id``."""

    @abstractmethod
    def node_figures(self, since: float) -> list[dict]:
        """Each worker node named by a chunk: ``node``, ``held`` (chunks it is sending), ``heartbeat_at``
        (its last renewal, the database's clock), ``rows`` it finished since ``since``."""

    @abstractmethod
    def rows_since(self, run_id: str, since: float) -> dict[str, int]:
        """Rows of ``run_id`` per state among those attempted since ``since`` (a pass's own rows)."""

    @abstractmethod
    def passes(self, run_id: str) -> list[dict]:
        """Every pass of the run: number, started, finished, and its pauses (reason, started, ended)."""
