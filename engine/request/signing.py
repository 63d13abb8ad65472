"""Signed requests: ``--sign standard-webhooks:${SECRET}`` or ``--sign hmac-sha256:${SECRET}:HEADER``.

A :class:`Signing` is parsed once from the option (the secret expanded from the environment, never
typed in argv, redacted like every ``${VAR}`` value) and travels in the
:class:`~engine.request.spec.RequestSpec` to each sending process. Each attempt is signed there, as it
is rendered: a retry gets a fresh timestamp over the same body, and the coordinator never signs.

Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` is the row's idempotency key,
``webhook-timestamp`` the attempt's Unix time in seconds, and ``webhook-signature`` is ``v1,`` and
the base64 HMAC-SHA256 of ``id.timestamp.body``, keyed with the secret's base64-decoded bytes after
its ``whsec_`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field

from engine.errors import UsageError
from engine.request.spec import ENV_REF, expand_env, split_header

#: The scheme of the Standard Webhooks specification.
STANDARD_WEBHOOKS = "standard-webhooks"
#: A hex HMAC-SHA256 of the body in a header the user names.
HMAC_SHA256 = "hmac-sha256"
SCHEMES = (STANDARD_WEBHOOKS, HMAC_SHA256)
#: The prefix Standard Webhooks secrets carry before their base64 bytes.
WHSEC_PREFIX = "whsec_"
_USAGE = "--sign: expected standard-webhooks:${VAR} or hmac-sha256:${VAR}:HEADER, the secret from the environment"


@dataclass(frozen=True)
class Signing:
    """How each attempt is signed; ``key`` is the secret's HMAC key (kept out of ``repr``)."""

    scheme: str
    key: bytes = field(repr=False)
    #: The secret as the environment gave it: redacted wherever text is shown.
    secret: str = field(repr=False)
    header: str = ""

    @classmethod
    def parse(cls, text: str, environ=os.environ) -> Signing:
        """``--sign`` as typed (``${VAR}`` unexpanded), with the secret read from ``environ``."""
        scheme, reference, header = split_sign(text)
        secret = expand_env(reference, "--sign", environ)
        if not secret:
            raise UsageError(f"--sign: the environment variable in {reference} is empty")
        key = _webhook_key(secret) if scheme == STANDARD_WEBHOOKS else secret.encode()
        return cls(scheme, key, secret, header)

    def headers(self, key: str, body: bytes | None, now: float | None = None) -> list[str]:
        """The header lines that sign one attempt of the request whose idempotency key is ``key``."""
        payload = body or b""
        if self.scheme == HMAC_SHA256:
            return [f"{self.header}: {hmac.new(self.key, payload, hashlib.sha256).hexdigest()}"]
        timestamp = str(int(time.time() if now is None else now))
        signed = f"{key}.{timestamp}.".encode() + payload
        signature = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        return [f"webhook-id: {key}", f"webhook-timestamp: {timestamp}", f"webhook-signature: v1,{signature}"]


def split_sign(text: str) -> tuple[str, str, str]:
    """``--sign`` as (scheme, ``${VAR}``, header): the secret must be a reference to the environment."""
    scheme, _, rest = text.partition(":")
    reference, _, header = rest.partition(":") if scheme == HMAC_SHA256 else (rest, "", "")
    if scheme not in SCHEMES or not ENV_REF.fullmatch(reference) or (scheme == HMAC_SHA256) != bool(header):
        raise UsageError(_USAGE)
    if header and split_header(f"{header}: x") is None:
        raise UsageError(f"--sign: {header!r} is not a header name")
    return scheme, reference, header


def _webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after ``whsec_``."""
    try:
        return base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("--sign standard-webhooks: the secret is not whsec_ followed by base64") from None
