"""The mock API's OAuth2 token endpoint (client credentials) and the check of each charge's Bearer token.

``POST /oauth/token`` with ``grant_type=client_credentials`` (form-encoded) and the client's
credentials, as HTTP Basic or as ``client_id``/``client_secret`` form fields, answers a new opaque
token with ``expires_in`` = the ``token_expires_in`` knob. With ``require_token`` on, a charge
without a token that is still valid gets 401 before anything is charged; ``token_valid_for``
makes tokens stop working earlier than announced, as a server that revokes them does.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from urllib.parse import parse_qsl

from engine.mock.config import MockConfig

#: Tokens of a mock server at most; the oldest are forgotten first.
MAX_TOKENS = 10_000
_INVALID_CLIENT = b'{"error":"invalid_client"}'


class TokenIssuer:
    """The tokens this mock gave out and when each stops working (monotonic)."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.valid_until: dict[str, float] = {}

    def issue(self, headers: dict, body: bytes) -> tuple[int, bytes, str]:
        """Answer a token request: (status, body, extra header lines)."""
        try:
            form = dict(parse_qsl(body.decode()))
        except UnicodeDecodeError:
            form = {}
        if form.get("grant_type") != "client_credentials":
            return 400, b'{"error":"unsupported_grant_type"}', ""
        if not _has_client(headers.get(b"authorization", b""), form):
            return 401, _INVALID_CLIENT, 'WWW-Authenticate: Basic realm="token"\r\n'
        token = secrets.token_urlsafe(24)
        lasts = self.config.token_expires_in
        if self.config.token_valid_for is not None:
            lasts = min(lasts, self.config.token_valid_for)
        if len(self.valid_until) >= MAX_TOKENS:
            self.valid_until.pop(next(iter(self.valid_until)))
        self.valid_until[token] = time.monotonic() + lasts
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.config.token_expires_in}
        return 200, json.dumps(answer).encode(), "Cache-Control: no-store\r\n"

    def allows(self, headers: dict) -> bool:
        """Whether a request may go on: no token is needed, or it carries one still valid."""
        if not self.config.require_token:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        until = self.valid_until.get(token.strip()) if scheme.lower() == "bearer" else None
        return until is not None and time.monotonic() < until


def _has_client(authorization: bytes, form: dict) -> bool:
    """The request names a client and a secret (Basic, or form fields); any non-empty pair is accepted."""
    if form.get("client_id") and form.get("client_secret"):
        return True
    scheme, _, value = authorization.partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        client, _, secret = base64.b64decode(value.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    return bool(client and secret)
