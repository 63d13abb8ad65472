"""The ledger's contract, cut by role: RunBook, PassLedger, ChunkLedger, LedgerReader.

Each role is what one kind of caller needs (the loader, a pass, a worker node, a reader such as
the dashboard), so a caller, or a fake in a unit test, can name the part it uses; every store
implements them all as :class:`~engine.ledger.store.Store`. Each role includes the
:class:`Ledger` life (close, reconnect, recording).

Rows travel in and out as :mod:`engine.wire` records: a page to send holds
:class:`~engine.wire.Dispatch` rows, and :meth:`PassLedger.record` takes attempt tuples as
workers report them.
"""

from engine.ledger.roles.base import Ledger
from engine.ledger.roles.chunk_ledger import ChunkLedger
from engine.ledger.roles.pass_ledger import CANCELLED_FLAG, Page, PassLedger
from engine.ledger.roles.reader import EXPORT_COLUMNS, EXPORT_PAGE, FOUND_COLUMNS, LedgerReader, RowTotals
from engine.ledger.roles.run_book import RunBook

__all__ = [
    "CANCELLED_FLAG",
    "EXPORT_COLUMNS",
    "EXPORT_PAGE",
    "FOUND_COLUMNS",
    "ChunkLedger",
    "Ledger",
    "LedgerReader",
    "Page",
    "PassLedger",
    "RowTotals",
    "RunBook",
]
