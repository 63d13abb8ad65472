"""A node's claim on a chunk, fenced: the generation the ledger gave it, and what a stale one's results become.

Every claim of a chunk increments its ``generation`` in the ledger; that number is the claim's
fencing token. A node that was frozen past its lease (VM pause, SIGSTOP, a long GC) still
believes it holds the chunk, but its token no longer matches: its renewals fail, and the
results it brings back are kept only for the audit, as ``superseded`` attempts, never as
the rows' outcomes (another node owns them now).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.states import SUPERSEDED
from engine.wire import Attempt, Dispatch

#: A superseded attempt is stored under ``attempt + generation * SUPERSEDED_STRIDE``: the current
#: holder numbers its attempts of the same row from the same point, and both must be kept.
SUPERSEDED_STRIDE = 1_000_000


@dataclass(frozen=True)
class ChunkClaim:
    """Chunk ``chunk_id`` held by ``node`` under fencing token ``generation``, with the rows to send."""

    chunk_id: int
    node: str
    generation: int
    rows: list[Dispatch]


def superseded(attempts: list[tuple], generation: int) -> list[tuple]:
    """The attempts of a stale claim, as audit records that cannot be mistaken for outcomes."""
    return [
        Attempt(*attempt)._replace(
            attempt=attempt[1] + generation * SUPERSEDED_STRIDE,
            outcome=SUPERSEDED,
            error=f"sent under a lost claim (generation {generation}); its {attempt[2]} is not the row's outcome",
        )
        for attempt in attempts
    ]
