"""The mock API's ``--ratelimit`` quota: N requests per fixed window, told in IETF ``RateLimit`` headers.

As draft-ietf-httpapi-ratelimit-headers words it: ``RateLimit-Policy: "default";q=N;w=S`` describes
the quota, ``RateLimit: "default";r=LEFT;t=SECONDS`` says what is left in this window and when it
resets. A request over the quota is answered 429.
"""

from __future__ import annotations

import math

from engine.mock.config import MockConfig


class Quota:
    """Requests counted per window since ``started`` (monotonic)."""

    def __init__(self, config: MockConfig, started: float):
        self.config, self.started = config, started
        self.window, self.used = -1, 0

    def take(self, now: float) -> tuple[bool, str]:
        """Count a request: whether the quota allows it, and the header lines to answer it with."""
        c = self.config
        if not c.ratelimit:
            return True, ""
        window = int((now - self.started) // c.ratelimit_window)
        if window != self.window:
            self.window, self.used = window, 0
        allowed = self.used < c.ratelimit
        self.used += allowed
        reset = max(1, math.ceil(self.started + (window + 1) * c.ratelimit_window - now))  # never early
        return allowed, (
            f'RateLimit-Policy: "default";q={c.ratelimit};w={c.ratelimit_window:g}\r\n'
            f'RateLimit: "default";r={c.ratelimit - self.used};t={reset}\r\n'
        )
