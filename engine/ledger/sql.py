"""The queries every SQL store shares, written once and cut by role: :class:`SQLStore` joins them.

:mod:`engine.ledger.sql_base` says how a statement runs; :mod:`~engine.ledger.sql_runs`,
:mod:`~engine.ledger.sql_passes`, :mod:`~engine.ledger.sql_chunks`,
:mod:`~engine.ledger.sql_reader` and :mod:`~engine.ledger.sql_retention` hold each role's statements. A dialect
(:mod:`~engine.ledger.sqlite`, :mod:`~engine.ledger.postgres`) adds what it does its own way.
"""

from __future__ import annotations

from engine.ledger.sql_chunks import SQLChunkLedger
from engine.ledger.sql_passes import SQLPassLedger
from engine.ledger.sql_retention import SQLRetention
from engine.ledger.sql_runs import SQLRunBook
from engine.ledger.store import Store


class SQLStore(SQLRunBook, SQLPassLedger, SQLChunkLedger, SQLRetention, Store):
    """A :class:`Store` over a DB-API connection ``conn``."""
