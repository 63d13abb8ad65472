"""The open-file limit: every transfer in flight is a socket, and each worker process holds its window."""

from __future__ import annotations

import logging
import resource

from engine.config import RunSettings

log = logging.getLogger(__name__)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def fit_open_files(settings: RunSettings) -> RunSettings:
    """Raise this process's open-file limit (workers inherit it) and fit ``--concurrency`` under it."""
    soft, _ = raise_open_file_limit()
    settings, note = settings.fit_open_files(soft)
    if note:
        log.warning(note)
    return settings
