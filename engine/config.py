"""The settings of a run: one validated, immutable record, stored with the run.

The CLI builds a :class:`RunSettings` from its options; ``rerun`` rebuilds the same
record from the ledger, so a later pass sends exactly what the first one did. Header
lines are stored as typed, with ``${VAR}`` unexpanded: secrets stay in the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.auth.oauth import OAuthClient
from engine.delivery.breaker import BreakerSettings
from engine.delivery.extract import CAPTURE_BODY_BYTES, capture_names
from engine.delivery.policy import RetryPolicy
from engine.errors import UsageError
from engine.ledger.retention import KEEP_FAILED, KEEP_PAYLOAD_MODES
from engine.request.fieldtypes import parse_field_types
from engine.request.signing import STANDARD_WEBHOOKS, Signing, split_sign
from engine.request.spec import ENV_REF, IDEMPOTENCY_HEADER, RequestSpec, split_header
from engine.sender_parts import FILES_BESIDES_SOCKETS, SenderParts, TransportOptions

#: Headers whose values are secrets: they must come from ``${VAR}``, never typed in argv.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
#: The only literal words a secret header's value may hold beside its ``${VAR}``.
SCHEME_WORDS = frozenset({"bearer", "basic", "token", "digest", "apikey"})
#: The environment variable holding the passphrase of the --key of mutual TLS.
CLIENT_KEY_PASSWORD_ENV = "ENGINE_CLIENT_KEY_PASSWORD"


def default_workers() -> int:
    return os.cpu_count() or 1


def default_of(record: type, name: str):
    """The default of field ``name`` of a dataclass: option defaults and help texts read it here."""
    return {f.name: f.default for f in dataclasses.fields(record)}[name]


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything that decides what a run sends and how; JSON-serialisable, secret-free."""

    url: str
    method: str = "POST"
    headers: tuple[str, ...] = ()
    secret_headers: tuple[str, ...] = ()
    body_template: str | None = None
    form: bool = False
    allow_hosts: tuple[str, ...] = ()
    id_field: str = "id"
    priority_field: str | None = None
    #: ``NAME:TYPE`` (int, float, bool, str): fields converted while loading.
    field_types: tuple[str, ...] = ()
    idempotency_header: str = IDEMPOTENCY_HEADER
    idempotency_key_field: str | None = None
    idempotency: bool = True
    workers: int = field(default_factory=default_workers)
    concurrency: int = 100
    chunks: int = 100
    rate: float | None = None
    max_attempts: int = RetryPolicy.max_attempts
    backoff_base: float = RetryPolicy.backoff_base
    backoff_cap: float = RetryPolicy.backoff_cap
    retry_after_cap: float = RetryPolicy.retry_after_cap
    #: Seconds to connect, and for a whole attempt (--connect-timeout, --timeout).
    connect_timeout: float = 10.0
    timeout: float = 30.0
    insecure: bool = False
    ca_bundle: str | None = None
    #: HTTP/2 over TLS where the server offers it (ALPN; HTTP/1.1 otherwise), many transfers per connection.
    http2: bool = False
    #: Connections per host and worker at most (0: as many as transfers in flight).
    max_host_connections: int = 0
    #: The proxy (None: libcurl's https_proxy/http_proxy/no_proxy environment; "": none at all).
    proxy: str | None = None
    #: A client certificate and its key (PEM) for mutual TLS; the key's passphrase comes from
    #: ENGINE_CLIENT_KEY_PASSWORD, never from the command line.
    client_cert: str | None = None
    client_key: str | None = None
    #: Which stored payloads a recorded answer drops (engine.ledger.retention): all kept, those of rows
    #: that succeeded dropped (a rerun needs the others), or also those of rows refused for good.
    keep_payload: str = KEEP_FAILED
    #: OAuth2 client credentials: the token endpoint and scope (the client id and secret come from
    #: OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET in each sending machine's environment).
    oauth2_token_url: str | None = None
    oauth2_scope: str | None = None
    #: ``standard-webhooks:${VAR}`` or ``hmac-sha256:${VAR}:HEADER``: each attempt signed with that secret.
    sign: str | None = None
    pause_after: int = BreakerSettings.threshold
    max_pause: float = 300.0
    stall_timeout: float = 15.0
    #: ``NAME=JSONPATH``: values kept from each 2xx JSON answer (--capture charge_id=$.id).
    captures: tuple[str, ...] = ()

    #: The settings that decide what a request is: same values, same request (and same keys).
    REQUEST_FIELDS = (
        "url",
        "method",
        "headers",
        "body_template",
        "form",
        "id_field",
        "idempotency_header",
        "idempotency_key_field",
        "idempotency",
    )

    def __post_init__(self):
        for name in ("workers", "concurrency", "chunks", "max_attempts"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("backoff_base", "backoff_cap", "retry_after_cap", "max_pause", "pause_after"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative")
        if self.rate is not None and self.rate <= 0:
            raise UsageError("--rate must be positive")
        for name in ("connect_timeout", "timeout", "stall_timeout"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        if self.keep_payload not in KEEP_PAYLOAD_MODES:
            raise UsageError(f"--keep-payload must be one of {', '.join(KEEP_PAYLOAD_MODES)}")
        if self.max_host_connections < 0:
            raise UsageError("--max-host-connections must not be negative")
        capture_names(self.captures)
        self._check_proxy()
        self._check_secret_headers()
        self._check_auth()
        parse_field_types(self.field_types)

    def _check_proxy(self) -> None:
        """A proxy's credentials are secrets: from the environment only (libcurl reads https_proxy)."""
        if self.proxy and urllib.parse.urlsplit(self.proxy if "://" in self.proxy else f"http://{self.proxy}").username:
            raise UsageError(
                "--proxy must not carry credentials (they would be in argv and the ledger):"
                " set https_proxy=http://USER:PASSWORD@HOST:PORT in the environment instead"
            )

    def _check_secret_headers(self) -> None:
        check_secret_headers(self.headers, self.secret_headers)

    def _check_auth(self) -> None:
        """--sign names its secret as ``${VAR}``; a Standard Webhooks id is the key; one Authorization header."""
        if self.sign is not None:
            scheme, _, _ = split_sign(self.sign)
            if scheme == STANDARD_WEBHOOKS and not self.idempotency:
                raise UsageError(
                    "--sign standard-webhooks sends the idempotency key as webhook-id: not with --no-idempotency"
                )
        if self.oauth2_scope and not self.oauth2_token_url:
            raise UsageError("--oauth2-scope needs --oauth2-token-url")
        if self.oauth2_token_url and any(
            (split_header(line) or ("",))[0].lower() == "authorization" for line in self.headers
        ):
            raise UsageError(
                "--oauth2-token-url sends its token as the Authorization header: drop --header Authorization"
            )

    #: The settings that decide where a request goes. The default idempotency key derives from
    #: them alone: an edited body or an added header must not mint new keys for rows already sent.
    DESTINATION_FIELDS = ("url", "method", "idempotency_header")

    def request_fingerprint(self) -> str:
        """A digest of what every request of this run looks like (templates, not secrets)."""
        return _digest({name: getattr(self, name) for name in self.REQUEST_FIELDS})

    def destination_fingerprint(self) -> str:
        """A digest of where every request of this run goes (method, URL template, key header)."""
        return _digest({name: getattr(self, name) for name in self.DESTINATION_FIELDS})

    def breaker(self) -> BreakerSettings:
        """The outage pause: trips after ``pause_after`` distinct rows answer "down" in a row; a probe
        that gets no answer within the attempt timeout is replaced by another."""
        return BreakerSettings(threshold=self.pause_after, probe_timeout=self.timeout + 5.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, **overrides) -> RunSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def request_spec(self) -> RequestSpec:
        """The request template, with ``${VAR}`` expanded from this process's environment."""
        return RequestSpec.build(
            self.url,
            method=self.method,
            header_lines=self.headers,
            body_template_text=self.body_template,
            form=self.form,
            allow_hosts=self.allow_hosts,
            idempotency_header=self.idempotency_header if self.idempotency else None,
            signing=Signing.parse(self.sign) if self.sign else None,
            oauth=self.oauth_client(),
        )

    def oauth_client(self) -> OAuthClient | None:
        """The OAuth2 client, its credentials from this process's environment (None without one)."""
        if not self.oauth2_token_url:
            return None
        tls = {"verify_tls": not self.insecure, "ca_bundle": self.ca_bundle}
        return OAuthClient.from_environment(self.oauth2_token_url, self.oauth2_scope, **tls)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            retry_after_cap=self.retry_after_cap,
            idempotent=self.idempotency,
        )

    def transport_options(self) -> TransportOptions:
        """The handles' limits and TLS settings; the key's passphrase from this process's environment."""
        return TransportOptions(
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            verify_tls=not self.insecure,
            ca_bundle=self.ca_bundle,
            resend_harmless=self.idempotency,
            http2=self.http2,
            max_host_connections=self.max_host_connections,
            proxy=self.proxy,
            client_cert=self.client_cert,
            client_key=self.client_key,
            client_key_password=os.environ.get(CLIENT_KEY_PASSWORD_ENV) or None,
            capture_bytes=CAPTURE_BODY_BYTES if self.captures else 0,
        )

    def sender_parts(self, spec: RequestSpec) -> SenderParts:
        """What every sending process needs (a local worker, a node's pool process), built here once;
        ``spec`` is the request built from these settings in the process that will send or hand it on."""
        return SenderParts(
            spec=spec,
            policy=self.policy(),
            transport=self.transport_options(),
            window=self.concurrency,
            chunk_size=self.chunks,
            id_field=self.id_field,
            rate=self.rate,
            breaker=self.breaker(),
            captures=self.captures,
        )

    def fit_open_files(self, limit: int) -> tuple[RunSettings, str | None]:
        """These settings with ``--concurrency`` lowered to what ``limit`` open files per process allow.

        Every transfer in flight is a socket; past the limit libcurl reports a misleading
        "could not connect". Returns the settings and a one-line note, or None if they fit.
        Over HTTP/2 many transfers share a connection: the window is kept, and each worker's
        transport opens no more connections than the limit allows (transfers beyond wait for one).
        """
        room = limit - FILES_BESIDES_SOCKETS
        if self.concurrency <= room or (self.http2 and room >= 1):
            return self, None
        if room < 1:
            raise UsageError(f"the open-file limit (ulimit -n) is {limit}: too low to send anything; raise it")
        return dataclasses.replace(self, concurrency=room), (
            f"note: the open-file limit (ulimit -n) is {limit}, so --concurrency is lowered from {self.concurrency}"
            f" to {room} per worker; raise the hard limit to keep more in flight"
        )


def _digest(shape: dict) -> str:
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def check_secret_headers(headers: Iterable[str], secret_headers: Iterable[str] = ()) -> None:
    """A secret header's value is ``${VAR}``, after at most a scheme word: any other text would be
    typed in argv (or a config file) and stored in the ledger. The value itself is never shown."""
    secret = SECRET_HEADERS | {name.lower() for name in secret_headers}
    for line in headers:
        name, value = split_header(line) or ("", "")  # a malformed line is refused with the request spec
        if name.lower() not in secret:
            continue
        literal = ENV_REF.sub(" ", value).split()
        if not ENV_REF.search(value) or any(word.lower() not in SCHEME_WORDS for word in literal):
            raise UsageError(
                f"--header {name}: a secret must come from the environment, and nothing but a scheme "
                f"word ({', '.join(sorted(w.title() for w in SCHEME_WORDS))}) may stand beside it, "
                f"e.g. --header '{name}: Bearer ${{API_TOKEN}}'"
            )
