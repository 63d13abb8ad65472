"""The ledger: what happened to every request of every run."""

from engine.ledger.sqlite import (  # noqa: F401
    BUSY_TIMEOUT,
    DuplicateRow,
    Ledger,
    LeaseHeld,
    LeaseLost,
    Page,
)
