"""The ledger's contract, cut by role: RunBook, PassLedger, ChunkLedger, LedgerReader.

Each role is what one kind of caller needs (the loader, a pass, a worker node, a reader such as
the dashboard), so a caller, or a fake in a unit test, can name the part it uses; every store
implements them all as :class:`~engine.ledger.store.Store`. Each role includes the
:class:`Ledger` life (close, reconnect, recording).

Rows travel in and out as :mod:`engine.wire` records: a page to send holds
:class:`~engine.wire.Dispatch` rows, and :meth:`PassLedger.record` takes attempt tuples as
workers report them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import NamedTuple

from engine.ledger.claim import ChunkClaim
from engine.ledger.lease import Hold, Holder
from engine.ledger.selection import RowFilter
from engine.wire import Dispatch

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


class Page(NamedTuple):
    """Rows to send, all of one priority ``level``, in rid order."""

    level: float
    rows: list[Dispatch]


class Ledger(ABC):
    """A ledger's life, whatever its role: where it is, how it is closed, reopened and written safely."""

    #: What the user gave as ``--db`` (a path or a URL): rerun hints and messages name it.
    location: str

    @abstractmethod
    def close(self) -> None: ...

    def reconnect(self) -> None:
        """Open the ledger again after its server broke the connection (a file-based one never does)."""
        return None

    def connection_lost(self, error: Exception) -> bool:
        """Whether ``error`` means the ledger's server went away (restarted): :meth:`reconnect`, then retry."""
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @abstractmethod
    def recording(self) -> AbstractContextManager:
        """Within it, a write the database refuses for now (lock, full disk) raises one :class:`LedgerUnavailable`."""

    @abstractmethod
    def check_space(self, rows: int) -> None:
        """Raise :class:`LedgerUnavailable` when recording ``rows`` answers clearly cannot fit."""


class RunBook(Ledger):
    """Runs and loading: claim a run id, load its rows, finish or drop the load, choose rows for a rerun."""

    @abstractmethod
    def create_run(
        self, run_id: str, *, input: str, url: str, method: str, options: dict, not_before: float | None
    ) -> None:
        """A new run in state ``loading``."""

    @abstractmethod
    def claim_run(
        self,
        run_id: str,
        holder: Holder,
        *,
        input: str,
        url: str,
        method: str,
        options: dict,
        not_before: float | None,
        timeout: float,
    ) -> None:
        """Create run ``run_id`` in state ``loading``, held by ``holder`` (its lease), atomically.

        :class:`LeaseHeld` if a live process holds a run of that id (loading or sending it);
        :class:`RunExists` if one finished loading. A load whose holder died (nothing of a
        ``loading`` run is ever sent) is taken over: its rows are removed first.
        """

    @abstractmethod
    def drop_load(self, run_id: str, holder: Holder) -> bool:
        """Remove the run if ``holder`` still holds it and nothing of it was ever sent; whether it did."""

    @abstractmethod
    def drop_abandoned_loads(self) -> int:
        """Remove the runs left ``loading`` by a process that died (killed, or its disk was full);
        how many."""

    @abstractmethod
    def sent_elsewhere(self, run_id: str, url: str, method: str) -> tuple[str, int] | None:
        """The other run to ``method`` ``url`` holding most rows (same row ids) of ``run_id`` that
        succeeded or may have been sent (any state but a never-attempted ``pending``), and how many;
        None if there is none. One set-based query over the ``(run_id, row_id)`` index."""

    @abstractmethod
    def get_run(self, run_id: str) -> dict:
        """The run's row, ``options`` decoded; :class:`LedgerError` if there is none."""

    @abstractmethod
    def has_run(self, run_id: str) -> bool: ...

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """The run and everything recorded of it."""

    @abstractmethod
    def finish_load(self, run_id: str, total: int, fingerprint: str) -> str | None:
        """Mark a loaded run ``ready``, unless another run has the same fingerprint: return that one's id.

        Atomic: of two identical commands loading at once, exactly one wins.
        """

    @abstractmethod
    def run_ids(self) -> list[str]:
        """Every run's id, oldest first."""

    @abstractmethod
    def insert_requests(self, run_id: str, rows: list[tuple]) -> None:
        """Insert ``(line, row_id, priority, payload, idempotency_key)`` rows as ``pending``, all or none.

        A duplicate id raises :class:`DuplicateRow` naming the row and the line seen first.
        """

    @abstractmethod
    def duplicate_key(self, run_id: str) -> tuple[str, int, int] | None:
        """Two rows of a run with one idempotency key: ``(key, first line, second line)``, or None."""

    @abstractmethod
    def select_rows(self, run_id: str, rows: RowFilter, row_ids: Iterable[str] = ()) -> int:
        """Mark the rows matching ``rows`` (and, if given, whose id is in ``row_ids``) ``selected``
        for the next pass; a row that succeeded is never selected. Returns how many."""

    @abstractmethod
    def purge_candidates(self, ended_before: float, include_unfinished: bool = False) -> list[dict]:
        """Runs not yet purged whose last pass ended (or, never sent, that were made) before
        ``ended_before``: ``run_id``, ``state``, ``ended_at``, ``rows``, ``attempts``, and ``kept``: why
        it must stay (loading or running, a lease left, rows that may still be sent), or None."""

    @abstractmethod
    def purge_run(self, run_id: str, summary: Callable[[], dict], include_unfinished: bool = False) -> bool:
        """Store the run's counts and ``summary()`` (read under the run's lease lock), then delete its
        rows and attempts, in one transaction; False (nothing touched) if it must stay. Its passes,
        pauses, chunks and audit remain: reports still show them."""

    @abstractmethod
    def record_action(self, run_id: str, who: str, action: str, rows: str, outcome: str) -> None:
        """Append to the audit log: ``who`` did ``action`` on ``rows`` of ``run_id`` now, and its ``outcome``."""


#: The run's ``paused`` flag once an operator cancelled it (1 is a pause): its pass stops starting rows
#: and ends; the next pass clears it.
CANCELLED_FLAG = 2


class PassLedger(Ledger):
    """A pass's writes: the pages it sends, the answers it records, its lease, its pauses."""

    @abstractmethod
    def start_pass(self, run_id: str) -> int:
        """Record a new pass (the run is ``running``); its number, from 1."""

    @abstractmethod
    def end_pass(self, run_id: str, pass_no: int, state: str) -> None:
        """Record the pass's end; the run takes ``state`` (``finished`` or ``interrupted``)."""

    @abstractmethod
    def iter_pages(self, run_id: str, states: Iterable[str], page: int = 1000) -> Iterator[Page]:
        """Pages of rows in ``states``: highest priority first, then input order (keyset-paged, so
        results can be recorded between pages)."""

    @abstractmethod
    def record(self, attempts: list[tuple]) -> None:
        """Write a batch of attempt tuples and move their rows to each attempt's outcome, in one transaction."""

    @abstractmethod
    def mark_in_flight(self, rids: list[int]) -> None:
        """Write ahead that these rows are being sent (runs without idempotency keys only)."""

    @abstractmethod
    def mark_state(self, run_id: str, states: Iterable[str], state: str) -> int:
        """Rows of ``run_id`` in ``states`` move to ``state``; how many."""

    @abstractmethod
    def mark_unknown(self, run_id: str, states: Iterable[str], reason: str) -> int:
        """Rows of ``run_id`` in ``states`` become ``unknown`` (they may have been sent); how many."""

    @abstractmethod
    def acquire_lease(self, run_id: str, holder: Holder, timeout: float) -> Hold | None:
        """Take the run's lease; :class:`LeaseHeld` if another live process has it (``holder`` may
        hold it already: the load that claimed the run).

        A lease left by a pass that did not end cleanly is taken over, keeping its frontier,
        and what that pass may still have in flight is returned as a :class:`Hold`.
        """

    @abstractmethod
    def renew_lease(self, run_id: str, holder: Holder, frontier: tuple[float, int] | None = None) -> None:
        """Heartbeat, and move the dispatch frontier forward; :class:`LeaseLost` if it was taken over."""

    @abstractmethod
    def release_lease(self, run_id: str, holder: Holder, clean: bool) -> None:
        """Give the lease up; after an unclean end it stays, ownerless, so the next pass waits out
        what may still be in progress."""

    @abstractmethod
    def lease(self, run_id: str) -> dict | None: ...

    @abstractmethod
    def set_paused(self, run_id: str, paused: bool) -> None:
        """Ask the run's pass to stop starting requests (in-flight ones finish), or to go on."""

    @abstractmethod
    def is_paused(self, run_id: str) -> bool:
        """Paused or cancelled: the pass starts nothing new."""

    @abstractmethod
    def cancel_run(self, run_id: str) -> None:
        """Ask the run's pass to end for good: it starts nothing new, in-flight rows finish, the rest
        stays for a rerun (which clears the cancel)."""

    @abstractmethod
    def is_cancelled(self, run_id: str) -> bool: ...

    @abstractmethod
    def mark_resolved(self, run_id: str, row_ids: Iterable[str]) -> int:
        """Rows of ``run_id`` (by id) that ended without succeeding become ``resolved``: settled by an
        operator, never sent again; how many."""

    @abstractmethod
    def pause_began(self, run_id: str, reason: str) -> None:
        """Record that the run's current pass paused (``reason``: "endpoint down", "operator")."""

    @abstractmethod
    def pause_ended(self, run_id: str, reason: str) -> None:
        """Record that its pause for ``reason`` ended (a pass that ends ends its pauses too)."""


class ChunkLedger(Ledger):
    """Chunks of runs sent through a broker to worker nodes: planned, claimed (fenced), renewed, finished."""

    @abstractmethod
    def plan_chunks(self, run_id: str, pass_no: int, states: Iterable[str], size: int) -> list[int]:
        """Split the rows of ``run_id`` in ``states`` into chunks of ``size`` rows, in dispatch order
        (priority first, then input order); their ids, in that order."""

    @abstractmethod
    def claim_chunk(self, chunk_id: int, node: str, max_deliveries: int, busy_for: float = 60.0) -> ChunkClaim | None:
        """A node takes a chunk: its claim (rows to send, and a new fencing token: the chunk's generation,
        incremented), or None when it is not waiting to be sent (done, dead, retired) or is being sent
        by a node heard from within ``busy_for`` seconds; such a refused delivery is counted. A chunk
        already delivered ``max_deliveries`` times becomes ``dead`` instead (its rows wait for a rerun).
        Times are the database's clock: nodes' clocks may differ."""

    @abstractmethod
    def renew_chunk(self, claim: ChunkClaim) -> bool:
        """The node sending the chunk is alive; False when the claim is no longer its own (the chunk was
        queued again or claimed under a newer token): the node must stop sending it at once."""

    @abstractmethod
    def finish_chunk(self, claim: ChunkClaim, attempts: list[tuple], complete: bool = True) -> bool:
        """Record the chunk's attempts and mark it done (``complete``: nothing of it was left unsent), in one
        transaction before the broker's ack. Under a stale token the attempts are kept as ``superseded``
        only (the rows are not touched) and the chunk is left alone; returns whether the claim held."""

    @abstractmethod
    def ledger_id(self) -> str:
        """This ledger's identity, made once: a node whose ledger has another id must not serve the run."""

    @abstractmethod
    def chunk_counts(self, run_id: str, pass_no: int) -> dict[str, int]:
        """The pass's chunks per state."""

    @abstractmethod
    def silent_chunks(self, run_id: str, pass_no: int, silent_for: float) -> list[int]:
        """Chunks being sent whose node has not renewed them for ``silent_for`` seconds; they are
        queued again (to be delivered again) and their ids returned."""

    @abstractmethod
    def waiting_chunks(self, run_id: str, pass_no: int, queued_for: float) -> list[int]:
        """Chunks of the pass queued for ``queued_for`` seconds (the database's clock) and not taken by any
        node yet (their broker message may be lost); their queue time becomes now."""

    @abstractmethod
    def retire_chunks(self, run_id: str, silent_for: float) -> int:
        """End the chunks earlier passes left (called by a new pass holding the run's lease): those no
        node took become ``retired`` (never sent), as do those whose node has been silent for
        ``silent_for`` seconds; returns how many a live node is still sending (wait for them)."""

    @abstractmethod
    def chunk_summary(self, run_id: str) -> dict[str, int] | None:
        """A run's chunks over all passes (None if it never used worker nodes): ``chunks``, ``dead``,
        ``resent`` (delivered again after a node went silent) and ``refused`` (duplicate deliveries)."""


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
    def attempt_count(self, run_id: str) -> int: ...

    @abstractmethod
    def elapsed(self, run_id: str) -> float:
        """Seconds spent sending, summed over the run's passes."""

    @abstractmethod
    def latency_percentiles(self, run_id: str, quantiles: Iterable[float]) -> dict[float, float | None]:
        """Nearest-rank percentiles of the latency of each row's last answered attempt, in constant memory."""

    @abstractmethod
    def capture_counts(self, run_id: str, names: Iterable[str]) -> dict[str, int]:
        """How many rows have each ``--capture`` value."""

    @abstractmethod
    def replay_count(self, run_id: str) -> int:
        """Succeeded rows whose success was an ``Idempotent-Replayed`` answer (an earlier attempt's charge)."""

    @abstractmethod
    def status_counts(self, run_id: str) -> dict[str, int]:
        """Attempts per HTTP status (``"curl:N"`` for transfers that got no answer)."""

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
