"""The kill switch: a pass whose share of refused rows shows the request itself is wrong stops.

A wrong template or an expired key fails every customer alike. Once ``min_sample`` rows of a
pass have a definitive outcome, a share of ``rejected`` plus ``failed`` rows above
``max_rate`` stops the pass on purpose (exit 4): rows not yet sent stay ``pending`` for
``rerun``. The decision is a pure method; the :class:`~engine.run.supervisor.PassSupervisor`
looks at it and drains the senders.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UsageError

#: Share of refused rows above which a ``bill`` stops (``rerun``: no kill switch unless asked).
BILL_MAX_FAILURE_RATE = 0.5
#: Definitive outcomes a pass needs before its share of refused rows means anything.
DEFAULT_MIN_SAMPLE = 50
#: What ``--max-failure-rate`` takes to turn the kill switch off (0 does too).
OFF_WORDS = frozenset({"off", "none", "no"})


@dataclass(frozen=True, kw_only=True)
class KillSwitch:
    """Stop a pass once ``refused / definitive > max_rate``, with at least ``min_sample`` definitive."""

    max_rate: float
    min_sample: int = DEFAULT_MIN_SAMPLE

    def __post_init__(self):
        if not 0 < self.max_rate < 1:
            raise UsageError("--max-failure-rate must be between 0 and 1 (0 or 'off' turns the kill switch off)")
        if self.min_sample < 1:
            raise UsageError("--min-sample must be at least 1")

    @classmethod
    def from_option(cls, text: str | None, min_sample: int | None, default: float | None) -> KillSwitch | None:
        """The switch ``--max-failure-rate TEXT`` names (None: ``default``; 0 or ``off``: none)."""
        if text is None:
            rate = default
        elif text.strip().lower() in OFF_WORDS:
            rate = None
        else:
            try:
                rate = float(text)
            except ValueError:
                raise UsageError(f"--max-failure-rate: expected a share such as 0.2 or 'off', found {text!r}") from None
        if not rate:
            return None
        return cls(max_rate=rate, min_sample=DEFAULT_MIN_SAMPLE if min_sample is None else min_sample)

    def tripped(self, refused: int, definitive: int) -> str | None:
        """Why the pass must stop, or None."""
        if definitive < self.min_sample or refused <= self.max_rate * definitive:
            return None
        return (
            f"stopped by the kill switch: {refused} of the first {definitive} rows with an outcome were"
            f" rejected or failed ({refused / definitive:.0%} > --max-failure-rate {self.max_rate:g});"
            " rows not yet sent stay pending"
        )
