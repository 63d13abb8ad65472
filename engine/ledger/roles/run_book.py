"""The :class:`RunBook` role: runs claimed, loaded, finished, dropped and purged; rows chosen for a rerun."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from engine.ledger.lease import Holder
from engine.ledger.roles.base import Ledger
from engine.ledger.selection import RowFilter


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
        """Insert ``(line, row_id, priority, payload, idempotency_key)`` rows as ``pending``, all or none
        (inside :meth:`loading`: with the rest of its inserts).

        A duplicate id raises :class:`DuplicateRow` naming the row and the line seen first.
        """

    @abstractmethod
    def loading(self) -> AbstractContextManager[None]:
        """The inserts made inside commit together as it ends (or not at all, on an exception), where the
        store gains by it: SQLite writes every page a transaction changed at its commit, and a load's
        index entries for ids in no particular order each land on a page of their own."""

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
