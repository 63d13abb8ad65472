"""The fault knobs of the bundled mock billing API (see :mod:`engine.mock.api`).

Kept apart from the server so the CLI can show their defaults without importing asyncio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class MockConfig:
    """The fault knobs; probabilities are per request, times in seconds."""

    latency: float = 0.0
    jitter: float = 0.0
    p500: float = 0.0
    p503: float = 0.0
    p429: float = 0.0
    retry_after: float = 1.0
    p_drop_before: float = 0.0
    p_drop_after: float = 0.0
    p_hang: float = 0.0
    fail_rate: float = 0.0
    outage_at: float | None = None
    outage_for: float = 0.0
    max_inflight: int = 0
    seed: int | None = None
    #: False: a request whose key is still being processed is charged too (many real APIs), not 409.
    lock_keys: bool = True
    #: Pad each successful answer to at least this many bytes.
    body_bytes: int = 0
    #: Echo the request's headers in each answer's body (as APIs that quote the request in errors do).
    echo_headers: bool = False

    def update(self, changes: dict) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise KeyError(key)
            setattr(self, key, value)
