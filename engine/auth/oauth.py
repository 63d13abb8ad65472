"""OAuth2 client credentials (RFC 6749 §4.4): the client a run authenticates as, and one token request.

The client id and secret come only from ``OAUTH_CLIENT_ID`` / ``OAUTH_CLIENT_SECRET`` in the
environment of the process that sends (a worker node reads its own), never from argv or the ledger.
The credentials go as HTTP Basic (the scheme every authorization server must accept). A token
request is rare (about once per expiry per machine), so it uses the standard library's client,
not the CurlMulti that carries the rows.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote, urlencode

from engine.errors import EngineError, UsageError
from engine.request.spec import redact

if TYPE_CHECKING:
    import ssl

#: The environment variables holding the client's credentials.
CLIENT_ID_ENV = "OAUTH_CLIENT_ID"
CLIENT_SECRET_ENV = "OAUTH_CLIENT_SECRET"
#: Longest wait for the token endpoint (s).
TOKEN_TIMEOUT = 15.0
#: Lifetime assumed when the endpoint gives no ``expires_in`` (s).
DEFAULT_EXPIRES_IN = 3600.0
#: Most bytes of a token endpoint's error answer shown.
ERROR_EXCERPT = 200


class TokenError(EngineError):
    """The token endpoint could not be reached or refused the client (the message is redacted)."""


class Token(NamedTuple):
    """An access token and when it was fetched and expires (Unix times)."""

    value: str
    fetched_at: float
    expires_at: float


@dataclass(frozen=True, kw_only=True)
class OAuthClient:
    """Where tokens come from and whose they are: plain data, sent to each local worker."""

    token_url: str
    scope: str | None = None
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    verify_tls: bool = True
    ca_bundle: str | None = None

    @classmethod
    def from_environment(cls, token_url: str, scope: str | None = None, environ=os.environ, **tls) -> OAuthClient:
        """The client of ``--oauth2-token-url``, its credentials read from ``environ``."""
        if not token_url.lower().startswith(("https://", "http://")):
            raise UsageError(f"--oauth2-token-url {token_url!r}: expected an http:// or https:// URL")
        missing = [name for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV) if not environ.get(name)]
        if missing:
            raise UsageError(f"--oauth2-token-url: environment variable {' and '.join(missing)} is not set")
        return cls(
            token_url=token_url,
            scope=scope,
            client_id=environ[CLIENT_ID_ENV],
            client_secret=environ[CLIENT_SECRET_ENV],
            **tls,
        )

    @property
    def identity(self) -> str:
        """Which client and scope a shared token belongs to (no secret in it)."""
        return f"{self.token_url} {self.client_id} {self.scope or ''}"

    def fetch(self) -> Token:
        """Ask the token endpoint for a new access token; :class:`TokenError` in one line if it cannot."""
        import urllib.error  # here, not at the top: only a run with OAuth pays for loading urllib and ssl
        import urllib.request

        form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
        # RFC 6749 §2.3.1: each part is form-encoded before it is joined into the Basic credential
        basic = base64.b64encode(f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}".encode())
        request = urllib.request.Request(
            self.token_url,
            data=urlencode(form).encode(),
            headers={
                "Authorization": f"Basic {basic.decode()}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        fetched_at = time.time()
        try:
            with urllib.request.urlopen(request, timeout=TOKEN_TIMEOUT, context=self._tls()) as answer:
                data = json.loads(answer.read())
        except urllib.error.HTTPError as err:
            excerpt = err.read(ERROR_EXCERPT).decode("utf-8", "replace")
            raise self._error(f"HTTP {err.code}: {excerpt}") from None
        except (OSError, ValueError) as err:
            raise self._error(str(err)) from None
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise self._error("the answer has no access_token")
        expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
        return Token(data["access_token"], fetched_at, fetched_at + expires_in)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.token_url.lower().startswith("https://"):
            return None
        import ssl

        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _error(self, message: str) -> TokenError:
        shown = redact(message, (self.client_secret,))
        return TokenError(f"--oauth2-token-url: no token from {self.token_url}: {shown}")
