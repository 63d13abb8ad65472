"""The :class:`ChunkLedger` role: chunks of a run sent through a broker, claimed under a fencing token."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

from engine.ledger.claim import ChunkClaim
from engine.ledger.roles.base import Ledger


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
