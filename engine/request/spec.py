"""What every request of a run looks like, from the options a user gave: the :class:`RequestSpec`.

Here ``${VAR}`` references are expanded from the environment (the values are secrets:
kept out of ``repr`` and redacted wherever text is shown), header lines are parsed, and
the destinations a run may reach are fixed. Rendering a row is :mod:`engine.request.template`.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.errors import DestinationError, UsageError

#: ``${VAR}``: a value read from the environment when the run starts, never stored.
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: The header that carries each row's idempotency key unless --idempotency-header names another.
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Body(str, enum.Enum):
    """What a request's body is: the row as JSON, a JSON template, a form, or nothing."""

    JSON = "json"
    TEMPLATE = "template"
    FORM = "form"
    NONE = "none"


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        raise DestinationError(f"invalid port in URL {url!r}") from None
    return scheme, (parts.hostname or "").lower(), port


def parse_allowed_host(text: str, scheme: str) -> tuple[str, str, int]:
    """An ``--allow-host`` value (``host``, ``host:port`` or a URL) as an origin."""
    return origin_of(text if "://" in text else f"{scheme}://{text}")


def expand_env(text: str, what: str, environ=os.environ) -> str:
    """Replace ``${VAR}`` with the environment's value; a missing variable is an error."""

    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if name not in environ:
            raise UsageError(f"{what}: environment variable {name} is not set")
        return environ[name]

    return ENV_REF.sub(lookup, text)


def _env_values(texts: Iterable[str], environ) -> tuple[str, ...]:
    """The values ``${VAR}`` references in ``texts`` stand for (the set ones)."""
    names = {name for text in texts for name in ENV_REF.findall(text)}
    return tuple(sorted({environ[name] for name in names if environ.get(name)}, key=len, reverse=True))


#: Shown in place of a secret.
REDACTED = "[redacted]"
#: Shortest tail of an excerpt that is redacted when a secret starts with it (a secret cut at the excerpt's end).
_MIN_SECRET_PREFIX = 4


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every secret, and a secret cut off at its end, replaced by :data:`REDACTED`."""
    if not text:
        return text
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
        tail_from = max(0, len(text) - len(secret) + 1)
        start = text.find(secret[:_MIN_SECRET_PREFIX], tail_from)
        while start >= 0:
            if secret.startswith(text[start:]):
                text = text[:start] + REDACTED
                break
            start = text.find(secret[:_MIN_SECRET_PREFIX], start + 1)
    return text


@dataclass(frozen=True, kw_only=True)
class RequestSpec:
    """How every row becomes a request. Plain data: it is sent to each worker process.

    ``url`` and ``headers`` already have ``${VAR}`` expanded, so they may hold secrets: they
    are kept out of ``repr`` and never written to the ledger or the logs.
    """

    url: str = field(repr=False)
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    body: Body = Body.JSON
    body_template: Any = None
    allowed_origins: frozenset[tuple[str, str, int]] = frozenset()
    idempotency_header: str | None = IDEMPOTENCY_HEADER
    #: Every value read from the environment (``${VAR}`` in the URL or a header): redacted wherever shown.
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def build(
        cls,
        url: str,
        *,
        method: str = "POST",
        header_lines: Iterable[str] = (),
        body_template_text: str | None = None,
        form: bool = False,
        allow_hosts: Iterable[str] = (),
        idempotency_header: str | None = IDEMPOTENCY_HEADER,
        environ=os.environ,
    ) -> RequestSpec:
        """Validate the options a user gave and build the spec, or raise a one-line error."""
        method = method.upper()
        secrets = _env_values([url, *header_lines], environ)
        url = expand_env(url, "--url", environ)
        headers = tuple(_parse_header_line(line, environ) for line in header_lines)
        if body_template_text is not None:
            try:
                body_template = json.loads(body_template_text)
            except json.JSONDecodeError as err:
                raise UsageError(f"--body-template: not valid JSON: {err}") from None
            body = Body.TEMPLATE
        else:
            body_template = None
            body = Body.NONE if method in _BODYLESS_METHODS else Body.JSON
        if form:
            if body_template is not None and not isinstance(body_template, dict):
                raise UsageError("--form needs a body template that is a JSON object")
            body = Body.FORM
        try:
            allowed = _allowed_origins(url, allow_hosts)
        except UsageError as err:
            raise UsageError(redact(str(err), secrets)) from None
        return cls(
            url=url,
            method=method,
            headers=headers,
            body=body,
            body_template=body_template,
            allowed_origins=allowed,
            idempotency_header=idempotency_header,
            secrets=secrets,
        )


def split_header(line: str) -> tuple[str, str] | None:
    """``Name: value`` as (name, value), both stripped; None if the line is not a header."""
    name, sep, value = line.partition(":")
    name = name.strip()
    return (name, value.strip()) if sep and _HEADER_NAME.match(name) else None


def _parse_header_line(line: str, environ) -> tuple[str, str]:
    header = split_header(line)
    if header is None:  # the line may be a bare token: never show it
        raise UsageError(
            "--header: expected 'Name: value' (a name, a colon, then the value; the text given "
            "is not shown, it may hold a secret)"
        )
    name, value = header
    return name, expand_env(value, f"--header {name}", environ)


def _allowed_origins(url: str, allow_hosts: Iterable[str]) -> frozenset:
    scheme_end = url.find("://")
    if scheme_end <= 0:
        raise UsageError(f"--url {url!r}: expected an absolute http:// or https:// URL")
    authority_end = url.find("/", scheme_end + 3)
    origin_text = url if authority_end < 0 else url[:authority_end]
    scheme = url[:scheme_end].lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"--url {url!r}: only http and https are supported")
    allowed = {parse_allowed_host(host, scheme) for host in allow_hosts}
    if "{" not in origin_text:
        origin = origin_of(origin_text)
        if not origin[1]:
            raise UsageError(f"--url {url!r}: no host")
        allowed.add(origin)
    elif not allowed:
        raise UsageError(f"--url {url!r}: a placeholder in the host needs --allow-host for each host it may reach")
    return frozenset(allowed)
