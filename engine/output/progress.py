"""Progress on stderr: a tqdm bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL = 5.0


class Progress:
    """Shows how many rows of a pass are done, with the ok / not-ok split and retries."""

    def __init__(self, total: int, description: str, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.description, self.quiet = total, description, quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        self.done = 0
        self.last_line = 0.0
        self.started = time.monotonic()
        if not quiet and self.tty:
            self.bar = tqdm(
                total=total or None, desc=description, unit="req", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def update(self, tally) -> None:
        finished = tally.succeeded + tally.not_succeeded
        if self.bar is not None:
            self.bar.update(finished - self.done)
            self.bar.set_postfix(ok=tally.succeeded, failed=tally.not_succeeded, retries=tally.retries, refresh=False)
        elif not self.quiet and time.monotonic() - self.last_line >= PLAIN_INTERVAL:
            self.last_line = time.monotonic()
            rate = finished / max(1e-9, self.last_line - self.started)
            print(
                f"{self.description}: {finished}/{self.total} done, ok={tally.succeeded} "
                f"failed={tally.not_succeeded} retries={tally.retries} ({rate:.0f} req/s)",
                file=self.stream,
                flush=True,
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
            print(f"{self.description}: {text}", file=self.stream, flush=True)

    def alert(self, text: str) -> None:
        """A line the operator must see even with ``--quiet``: something is wrong that waiting will not fix."""
        if self.bar is not None:
            self.bar.write(f"{self.description}: {text}", file=self.stream)
        else:
            print(f"{self.description}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
