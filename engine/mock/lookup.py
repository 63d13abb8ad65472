"""The mock API's lookups: was a charge made under this idempotency key, or for this customer?

What ``engine reconcile`` asks to settle rows whose outcome is unknown. A lookup never charges.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from engine.mock.api import BillingState, Request

#: A lookup of the charge made under an idempotency key (URL-encoded in the path).
_BY_KEY_PATH = re.compile(rb"/charges/by-key/([^/?]+)")
#: The customer a path names: a charge's (``POST``) or a lookup's (``GET``).
CUSTOMER_PATH = re.compile(rb"/customers/([^/?]+)")
#: A lookup's answer when no charge was made.
_NOT_CHARGED = (404, b'{"error":"no such charge"}', "")


async def lookup(state: BillingState, request: Request) -> tuple[int, bytes, str] | None:
    """A ``GET`` of a charge, by idempotency key or by customer: 200 with the charge if it was made,
    404 if not, 409 while a request under that key is still being processed. Nothing is charged;
    None when the path is not a lookup."""
    by_key = _BY_KEY_PATH.search(request.path)
    by_customer = CUSTOMER_PATH.search(request.path)
    if by_key is None and by_customer is None:
        return None
    if state.config.latency > 0:
        await asyncio.sleep(state.config.latency)
    if state.in_outage():
        return 503, b'{"error":"down for maintenance"}', ""
    if by_key is not None:
        key = unquote(by_key.group(1).decode("utf-8", "replace"))
        if key in state.keys and state.keys[key] is None:
            return 409, b'{"error":"a request with this Idempotency-Key is in progress"}', ""
        remembered = state.keys.get(key)
        return (*remembered, "") if remembered else _NOT_CHARGED
    assert by_customer is not None
    customer = by_customer.group(1).decode("utf-8", "replace")
    charges = state.charges.get(customer, 0)
    return (200, json.dumps({"customer": customer, "charges": charges}).encode(), "") if charges else _NOT_CHARGED
