"""A question for the ledger asked on a second connection, on another thread, while this one goes on.

A summary's scans of a large run are each a pass over its rows inside the database (SQLite's
sorter, PostgreSQL's backend), which releases the interpreter while it works: the longest scan,
asked beside the others, runs on the other core. For reads only.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import engine.ledger as ledgers
from engine.ledger.store import Store

T = TypeVar("T")


def ask_beside(ledger: Store, question: Callable[[Store], T]) -> Callable[[], T]:
    """Start ``question`` on a connection of its own to ``ledger``; the returned call waits for its
    answer (raising what it raised). An in-memory ledger, which only its own connection sees, is
    asked on that connection when the answer is awaited."""
    if ledger.location == ledgers.MEMORY:
        return lambda: question(ledger)
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-beside")
    future = thread.submit(_ask, ledger.location, question)
    thread.shutdown(wait=False)  # the thread ends with its one question
    return future.result


def _ask(location: str, question: Callable[[Store], T]) -> T:
    with ledgers.open_store(location, create=False) as other:
        return question(other)
