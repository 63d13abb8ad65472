"""The :class:`PassLedger` role: a pass's pages (:class:`Page`), recorded answers, lease, pauses and cancel."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from engine.ledger.lease import Hold, Holder
from engine.ledger.roles.base import Ledger
from engine.wire import Dispatch


class Page(NamedTuple):
    """Rows to send, all of one priority ``level``, in rid order."""

    level: float
    rows: list[Dispatch]


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
