"""The outage pause as a pass sees it: when it began and ended, and how long it lasted in all."""

from __future__ import annotations

import time
from collections.abc import Callable

#: ``say(note, event, **fields)``: a progress note and an event-log line.
Say = Callable[..., None]


class PauseClock:
    """Says when the senders pause because the endpoint is down and when they resume, and bounds the
    pause of a pass to ``max_pause`` seconds in all."""

    def __init__(self, max_pause: float):
        self.max_pause = max_pause
        self.paused_since: float | None = None  # monotonic
        self.paused_total = 0.0
        self.gave_up: str | None = None

    def observe(self, down_since: float | None, say: Say) -> str | None:
        """Look at the outage state (wall time it began, or None); the reason to give up, once it is time."""
        now = time.monotonic()
        if down_since is not None and self.paused_since is None:
            self.paused_since = now
            since = time.strftime("%H:%M:%S", time.localtime(down_since))
            say(f"paused: endpoint down since {since}", "pause", reason="endpoint down", since=down_since)
        elif down_since is None and self.paused_since is not None:
            self.paused_total += now - self.paused_since
            self.paused_since = None
            say("resumed", "resume")
        paused = self.paused_total + (now - self.paused_since if self.paused_since is not None else 0.0)
        if self.gave_up is None and paused > self.max_pause:
            self.gave_up = f"the endpoint stayed down: the pass paused {self.max_pause:g} s in all (--max-pause)"
            say("giving up: paused longer than --max-pause", "give_up", reason=self.gave_up)
            return self.gave_up
        return None
