"""Pool-wide state in shared memory: writes under the array's lock, reads without it."""

from __future__ import annotations


class SharedState:
    """Base for state every worker process sees: a ``multiprocessing.Array`` of doubles.

    Reading one aligned double is atomic, so the hot path reads through ``view``
    (the raw array) and takes the lock only to change something.
    """

    def __init__(self, shared):
        self.shared = shared
        self.view = shared.get_obj()

    def __getstate__(self):  # sent to a worker: the shared array travels, its view is rebuilt there
        state = self.__dict__.copy()
        del state["view"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.view = self.shared.get_obj()
