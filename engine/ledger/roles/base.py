"""The life every ledger role shares (:class:`Ledger`: where it is, close, reconnect, recording).

Each role (:mod:`engine.ledger.roles`) derives from it, so a caller holding any one role can still
close it and write safely.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager


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
