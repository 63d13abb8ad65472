"""What an API tells us in its answer's headers: a replayed answer, whether to retry, its quota left.

- ``Idempotent-Replayed: true`` (Stripe): the answer of an earlier attempt under the same key, not a
  new charge; the ledger records it, and ``report`` counts such successes.
- ``Stripe-Should-Retry: true|false``: the API's own word on retrying; the retry policy weighs it
  (:meth:`engine.delivery.policy.RetryPolicy.classify`).
- ``RateLimit: "default";r=0;t=30`` (draft-ietf-httpapi-ratelimit-headers; ``r`` remaining, ``t``
  seconds to reset) and the older ``RateLimit-Remaining: 0`` with ``RateLimit-Reset: 30``: with
  nothing left, the sender rests until the reset (:meth:`engine.delivery.gate.Gate.rest_all`).
  ``RateLimit-Policy`` only describes the quota, so it is not needed to pace. These are hints
  below ``--rate``: they can only slow a sender down.

Plain Python, no libcurl: the transport's header callback keeps these headers' raw values and
:func:`read_hints` makes them one :class:`Hints`.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

REPLAYED, SHOULD_RETRY = b"idempotent-replayed", b"stripe-should-retry"
RATELIMIT, REMAINING, RESET = b"ratelimit", b"ratelimit-remaining", b"ratelimit-reset"
#: The headers kept (lower-case names), and the first bytes of their names, so that the header
#: callback skips every other line after one look at its first byte.
HINT_HEADERS = frozenset({REPLAYED, SHOULD_RETRY, RATELIMIT, REMAINING, RESET})
HINT_INITIALS = frozenset(b"IiSsRr")
#: A ``RateLimit-Reset`` above this is a Unix time (as some APIs send), not seconds from now.
EPOCH_ABOVE = 1_000_000_000


class Hints(NamedTuple):
    replayed: bool = False
    #: ``Stripe-Should-Retry`` as a bool; None when absent or unreadable.
    should_retry: bool | None = None
    #: Seconds until the quota resets when the answer says none is left; None otherwise.
    quota_rest: float | None = None


NO_HINTS = Hints()


def read_hints(headers: dict[bytes, bytes]) -> Hints:
    """The hints in ``headers`` (lower-case names, stripped raw values)."""
    if not headers:
        return NO_HINTS
    return Hints(
        replayed=_flag(headers.get(REPLAYED)) is True,
        should_retry=_flag(headers.get(SHOULD_RETRY)),
        quota_rest=_quota_rest(headers),
    )


def _flag(value: bytes | None) -> bool | None:
    if value is None:
        return None
    word = value.strip().lower()
    return True if word == b"true" else False if word == b"false" else None


def _quota_rest(headers: dict[bytes, bytes]) -> float | None:
    """Seconds to rest: the reset of a quota with nothing remaining, from either header style."""
    if RATELIMIT in headers:
        rests = [reset for remaining, reset in _items(headers[RATELIMIT]) if remaining is not None and remaining <= 0]
        return max(0.0, *rests) if rests else None
    remaining, reset = _number(headers.get(REMAINING)), _number(headers.get(RESET))
    if remaining is None or remaining > 0:
        return None
    if reset is not None and reset > EPOCH_ABOVE:
        reset -= time.time()
    return max(0.0, reset or 0.0)


def _items(value: bytes) -> list[tuple[float | None, float]]:
    """``(remaining, reset)`` of each item of a structured-field list: ``"name";r=50;t=30, ...``."""
    items = []
    for item in value.split(b","):
        params = dict(part.strip().partition(b"=")[::2] for part in item.split(b";")[1:])
        items.append((_number(params.get(b"r")), _number(params.get(b"t")) or 0.0))
    return items


def _number(value: bytes | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is None or math.isfinite(number) else None
