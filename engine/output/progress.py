"""Progress on stderr: a tqdm bar on a terminal, else a log record every few seconds.

With ``--log-format json``, or when stderr is not a terminal (cron, CI, a pipe), there is no
bar: every progress line is a record of the ``engine.output.progress`` logger, so it reaches
stderr in the format every other line has (one JSON object per line for a log stack).
"""

from __future__ import annotations

import logging
import sys
import time

from engine.output.logs import json_logging

#: Seconds between progress lines when there is no bar.
PLAIN_INTERVAL = 5.0

log = logging.getLogger(__name__)


class Progress:
    """Shows how many rows of a pass are done, with the ok / not-ok split and retries."""

    def __init__(self, total: int, description: str, quiet: bool = False):
        self.total, self.description, self.quiet = total, description, quiet
        self.bar = None
        self.done = 0
        self.last_line = 0.0
        self.started = time.monotonic()
        #: Whether a line can be redrawn in place (a bar): otherwise frequent notes are thinned out.
        self.tty = sys.stderr.isatty() and not json_logging()
        if not quiet and self.tty:
            from tqdm import tqdm  # only for a bar: a quiet or logged run does not import it

            self.bar = tqdm(
                total=total or None, desc=description, unit="req", file=sys.stderr, dynamic_ncols=True, smoothing=0.1
            )

    def update(self, tally) -> None:
        finished = tally.succeeded + tally.not_succeeded
        if self.bar is not None:
            self.bar.update(finished - self.done)
            self.bar.set_postfix(ok=tally.succeeded, failed=tally.not_succeeded, retries=tally.retries, refresh=False)
        elif not self.quiet and time.monotonic() - self.last_line >= PLAIN_INTERVAL:
            self.last_line = time.monotonic()
            rate = finished / max(1e-9, self.last_line - self.started)
            log.info(
                "%s: %d/%d done, ok=%d failed=%d retries=%d (%.0f req/s)",
                self.description,
                finished,
                self.total,
                tally.succeeded,
                tally.not_succeeded,
                tally.retries,
                rate,
            )
        self.done = finished

    def count(self, done: int) -> None:
        """Set how many items are done, for work with no known total (loading the input)."""
        if self.bar is not None:
            self.bar.update(done - self.done)
        self.done = done

    def note(self, text: str) -> None:
        """A status line (waiting, paused) that does not break the bar."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_description_str(f"{self.description} ({text})")
        else:
            log.info("%s: %s", self.description, text)

    def alert(self, text: str) -> None:
        """A line the operator must see even with ``--quiet``: something is wrong that waiting will not fix."""
        if self.bar is not None:
            self.bar.write(f"{self.description}: {text}", file=sys.stderr)
        else:
            log.warning("%s: %s", self.description, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
