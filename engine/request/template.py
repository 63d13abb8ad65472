"""Turning one input row into one HTTP request: URL, headers and body templates.

A template is parsed once into literal and ``{field}`` parts, so rendering a row is
a join, and a template can never reach attributes or indexes the way
``str.format`` can. Values placed in a URL are percent-encoded, so a row can only
change the scheme, host or port if a placeholder sits in that part of the URL, and
then every rendered URL is checked against the allowed destinations.
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote, urlencode, urlsplit

from engine.errors import DestinationError, TemplateError, UsageError
from engine.jsontext import json_bytes

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: The header that carries each row's idempotency key unless --idempotency-header names another.
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Template:
    """A string split into literal text and ``{field}`` references."""

    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str, what: str) -> "Template":
        parts = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as err:
            raise TemplateError(f"{what}: {err} in {text!r}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (not name or spec or conversion):
                raise TemplateError(f"{what}: use plain {{field}} placeholders, not {{{name}}} in {text!r}")
            parts.append((literal, name))
        return cls(tuple(parts))

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, row: dict[str, Any], encode=str) -> str:
        return "".join(lit + (encode(_text(row[name])) if name is not None else "") for lit, name in self.parts)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value if isinstance(value, str) else str(value)


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def _url_quote(text: str) -> str:
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


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

    return _ENV_VAR.sub(lookup, text)


def _env_values(texts: Iterable[str], environ) -> tuple[str, ...]:
    """The values ``${VAR}`` references in ``texts`` stand for (the set ones)."""
    names = {name for text in texts for name in _ENV_VAR.findall(text)}
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

    ``headers`` already has ``${VAR}`` expanded, so it may hold secrets: it is kept
    out of ``repr`` and never written to the ledger or the logs.
    """

    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    body: str = "json"  # json | template | form | none
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
    ) -> "RequestSpec":
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
            body = "template"
        else:
            body_template = None
            body = "none" if method in _BODYLESS_METHODS else "json"
        if form:
            if body_template is not None and not isinstance(body_template, dict):
                raise UsageError("--form needs a body template that is a JSON object")
            body = "form"
        try:
            allowed = _allowed_origins(url, allow_hosts)
        except UsageError as err:
            raise UsageError(redact(str(err), secrets)) from None
        spec = cls(
            url=url, method=method, headers=headers, body=body, body_template=body_template,
            allowed_origins=allowed, idempotency_header=idempotency_header, secrets=secrets,
        )
        CompiledRequest(spec)  # parse every template now, so errors surface before loading
        return spec


def _parse_header_line(line: str, environ) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):  # the line may be a bare token: never show it
        raise UsageError("--header: expected 'Name: value' (a name, a colon, then the value; the text given "
                         "is not shown, it may hold a secret)")
    return name, expand_env(value.strip(), f"--header {name}", environ)


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


class CompiledRequest:
    """A :class:`RequestSpec` parsed once; ``render(row)`` gives (url, header lines, body)."""

    def __init__(self, spec: RequestSpec):
        self.spec = spec
        self.url = Template.parse(spec.url, "--url")
        self.host_is_dynamic = _placeholder_in_origin(spec.url)
        self.headers = [(name, Template.parse(value, f"--header {name}")) for name, value in spec.headers]
        self.body_parts = _compile_body(spec.body_template) if spec.body_template is not None else None
        self.fields = self.url.fields.union(*(t.fields for _, t in self.headers), _body_fields(self.body_parts))
        self.header_fields = frozenset().union(*(t.fields for _, t in self.headers))
        self.content_type = {"json": "application/json", "template": "application/json",
                             "form": "application/x-www-form-urlencoded"}.get(spec.body)
        names = {name.lower() for name, _ in spec.headers}
        self.fixed_headers = [f"{name}: {t.render({})}" for name, t in self.headers if not t.fields]
        self.row_headers = [(name, t) for name, t in self.headers if t.fields]
        if self.content_type and "content-type" not in names:
            self.fixed_headers.append(f"Content-Type: {self.content_type}")
        if spec.body != "none":  # no "Expect: 100-continue" round trip before large bodies
            self.fixed_headers.append("Expect:")

    def missing_fields(self, row: dict) -> list[str]:
        if self.fields <= row.keys():  # every row takes this path; only a bad one is sorted out
            return []
        return sorted(name for name in self.fields if name not in row)

    def check(self, row: dict) -> None:
        """Raise if this row would render a request that must not be sent."""
        if self.host_is_dynamic:
            self.check_destination(self.render_url(row))
        for name, template in self.row_headers:
            value = template.render(row)
            if "\r" in value or "\n" in value:
                raise TemplateError(f"header {name}: value contains a line break")

    def check_destination(self, url: str) -> None:
        shown = redact(url, self.spec.secrets)
        try:
            origin = origin_of(url)
        except DestinationError:
            raise DestinationError(f"URL {shown!r} is not a valid URL") from None
        if origin not in self.spec.allowed_origins:
            raise DestinationError(f"URL {shown!r} leaves the allowed hosts ({origin[0]}://{origin[1]}:{origin[2]})")

    def render_url(self, row: dict) -> str:
        return self.url.render(row, _url_quote)

    def render(self, row: dict, payload: str | None = None) -> tuple[str, list[str], bytes | None]:
        """The request for ``row``; ``payload``, the row already encoded as JSON, is reused as the body."""
        url = self.render_url(row)
        if self.host_is_dynamic:
            self.check_destination(url)
        headers = self.fixed_headers
        if self.row_headers:
            headers = headers + [f"{name}: {t.render(row)}" for name, t in self.row_headers]
        return url, headers, self.render_body(row, payload)

    def render_body(self, row: dict, payload: str | None = None) -> bytes | None:
        kind = self.spec.body
        if kind == "none":
            return None
        if kind == "json" and payload is not None:
            return payload.encode()
        source = row if self.body_parts is None else _render_body(self.body_parts, row)
        if kind == "form":
            return urlencode({k: _text(v) for k, v in source.items()}).encode()
        return json_bytes(source)


def _placeholder_in_origin(url: str) -> bool:
    start = url.find("://") + 3
    end = url.find("/", start)
    return "{" in url[: (len(url) if end < 0 else end)]


def _compile_body(node: Any) -> Any:
    """Parse every string of a JSON body template; ``"{f}"`` alone keeps the value's type."""
    if isinstance(node, dict):
        return {key: _compile_body(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_compile_body(value) for value in node]
    if isinstance(node, str):
        template = Template.parse(node, "--body-template")
        return template if template.fields else node
    return node


def _body_fields(node: Any) -> frozenset[str]:
    if isinstance(node, Template):
        return node.fields
    if isinstance(node, dict):
        return frozenset().union(*(_body_fields(v) for v in node.values()))
    if isinstance(node, list):
        return frozenset().union(*(_body_fields(v) for v in node))
    return frozenset()


def _render_body(node: Any, row: dict) -> Any:
    if isinstance(node, Template):
        if len(node.parts) == 1 and node.parts[0][0] == "":
            return row[node.parts[0][1]]
        return node.render(row)
    if isinstance(node, dict):
        return {key: _render_body(value, row) for key, value in node.items()}
    if isinstance(node, list):
        return [_render_body(value, row) for value in node]
    return node
