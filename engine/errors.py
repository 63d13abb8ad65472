"""Every error batch-engine raises on purpose.

    EngineError                 base; the CLI prints ``str(err)`` as one line
    ├── UsageError              options that contradict each other or cannot work
    ├── InputError              a bad input row: names the file, line and field
    ├── TemplateError           a URL/header/body template that cannot be rendered
    │   └── DestinationError    a rendered URL whose scheme/host/port is not allowed
    └── LedgerError             the ledger cannot be opened, written, or lacks a run
        ├── LedgerTooNew        its schema version is newer than this code's: exit 2, nothing touched
        └── LedgerUnavailable   it cannot record now (disk full, locked, I/O error): exit 3

Anything else reaching the CLI is a bug and is shown as such.
"""


class EngineError(Exception):
    """Base of every expected error; its message is one line meant for a person."""

    exit_code = 2


class UsageError(EngineError):
    """Options that contradict each other or cannot work."""


class InputError(EngineError):
    """A row of the input that cannot be sent as it is."""

    def __init__(self, source: str, line: int | None, message: str, field: str | None = None):
        self.source, self.line, self.message, self.field = source, line, message, field
        where = source if line is None else f"{source}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")

    def __reduce__(self):  # pickled as it was made (it travels from the process that read the input)
        return type(self), (self.source, self.line, self.message, self.field)


class TemplateError(EngineError):
    """A template that refers to something the row or the environment lacks."""


class DestinationError(TemplateError):
    """A URL that would leave the allow-listed scheme, host and port."""


class LedgerError(EngineError):
    """The ledger file cannot be used, or does not hold what was asked for."""


class UnknownRun(LedgerError):
    """The ledger holds no run of that id."""


class LedgerUnavailable(LedgerError):
    """The ledger (or the log beside it) cannot record now: nothing more is sent until it can."""

    exit_code = 3


class LedgerTooNew(LedgerError):
    """The ledger's schema version is above what this code knows: a newer batch-engine wrote it."""
