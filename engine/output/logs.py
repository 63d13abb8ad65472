"""Where the engine's log records go: one handler on the ``engine`` logger, text or JSON, on stderr.

Every module logs through ``logging.getLogger(__name__)`` and never prints; the command line
chooses the handler once (``--log-level``, ``--log-format``). A JSON record is one object per
line with the same keys every time (``time level logger run_id chunk node message``), so a log
stack can index them; a record that is not about a run, a chunk or a node has ``null`` there.
The run's event file (``--log-file``, :mod:`engine.output.events`) is a separate record and
stays as it is.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: The formats ``--log-format`` offers.
LOG_FORMATS = ("text", "json")
#: The levels ``--log-level`` offers.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The context fields a record may carry (``extra=``); JSON lines always have them, ``null`` when absent.
CONTEXT_FIELDS = ("run_id", "chunk", "node")
#: Loggers whose lines are written for the operator as they are (in text format, no prefix).
OPERATOR_LOGGERS = ("engine.cli", "engine.output.progress")
#: Text-format prefix of the worker nodes' lines (their per-chunk lines, grepped by operators).
NODE_PREFIX = "batch-engine node: "
#: Text-format prefix of any other library line.
LIBRARY_PREFIX = "batch-engine: "


class JsonFormatter(logging.Formatter):
    """One JSON object per record, keys in a fixed order; an exception becomes one ``exception`` string."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            **{name: getattr(record, name, None) for name in CONTEXT_FIELDS},
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The lines as operators have always read them: the CLI's and the progress lines bare, a node's
    with ``batch-engine node:``, anything else with ``batch-engine:`` and its level when not INFO."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.name.startswith(OPERATOR_LOGGERS):
            return message
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        prefix = NODE_PREFIX if record.name.startswith("engine.cluster") else LIBRARY_PREFIX
        return f"{prefix}{level}{message}"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it; Celery redirects it)."""

    def __init__(self, stream=None):
        super().__init__()
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self):
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it: the property decides instead
        pass


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Send the ``engine`` loggers' records to stderr (or ``stream``) in ``fmt``, from ``level`` up.

    Called again (another command in the same process), it replaces its own handler. The
    ``engine`` logger does not propagate: Celery and other libraries take over the root logger."""
    engine_log = logging.getLogger("engine")
    for handler in [h for h in engine_log.handlers if isinstance(h, StderrHandler)]:
        engine_log.removeHandler(handler)
    handler = StderrHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    engine_log.addHandler(handler)
    engine_log.setLevel(level.upper())
    engine_log.propagate = False


def logging_ready() -> bool:
    """Whether :func:`setup_logging` gave the ``engine`` loggers their handler."""
    return any(isinstance(h, StderrHandler) for h in logging.getLogger("engine").handlers)


def json_logging() -> bool:
    """Whether the engine's records are written as JSON (the progress bar then yields to records)."""
    return any(
        isinstance(h, StderrHandler) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger("engine").handlers
    )
