"""Turning one input row into one HTTP request: URL, headers and body templates.

A template is parsed once into literal and ``{field}`` parts, so rendering a row is
a join, and a template can never reach attributes or indexes the way
``str.format`` can. Values placed in a URL are percent-encoded, so a row can only
change the scheme, host or port if a placeholder sits in that part of the URL, and
then every rendered URL is checked against the allowed destinations.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from engine.errors import DestinationError, TemplateError
from engine.jsontext import json_bytes
from engine.request.spec import Body, RequestSpec, origin_of, redact

if TYPE_CHECKING:
    from engine.auth.tokens import Authorizer


@dataclass(frozen=True)
class Template:
    """A string split into literal text and ``{field}`` references."""

    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, text: str, what: str) -> Template:
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


_CONTENT_TYPES = {
    Body.JSON: "application/json",
    Body.TEMPLATE: "application/json",
    Body.FORM: "application/x-www-form-urlencoded",
}


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
        self.content_type = _CONTENT_TYPES.get(spec.body)
        names = {name.lower() for name, _ in spec.headers}
        self.fixed_headers = [f"{name}: {t.render({})}" for name, t in self.headers if not t.fields]
        self.row_headers = [(name, t) for name, t in self.headers if t.fields]
        if self.content_type and "content-type" not in names:
            self.fixed_headers.append(f"Content-Type: {self.content_type}")
        if spec.body != Body.NONE:  # no "Expect: 100-continue" round trip before large bodies
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
        if kind == Body.NONE:
            return None
        if kind == Body.JSON and payload is not None:
            return payload.encode()
        source = row if self.body_parts is None else _render_body(self.body_parts, row)
        if kind == Body.FORM:
            return urlencode({k: _text(v) for k, v in source.items()}).encode()
        return json_bytes(source)


class RowRequests:
    """A worker's renderer: a dispatched row (id, JSON payload, key) as (url, header lines, body).

    Each attempt is rendered afresh, so its access token (``authorizer``) is the current one and
    its signature (``--sign``) carries the attempt's own timestamp."""

    def __init__(self, spec: RequestSpec, id_field: str, authorizer: Authorizer | None = None):
        self.compiled = CompiledRequest(spec)
        self.id_field = id_field
        self.key_header = spec.idempotency_header
        self.signing = spec.signing
        self.authorizer = authorizer
        # the common case, a URL like /customers/{id}/charges and the row as the body, needs no parsing
        self.needs_fields = bool(self.compiled.fields - {id_field}) or spec.body not in (Body.JSON, Body.NONE)
        self.url_pieces = self._id_only_url()
        self.payload_is_body = spec.body == Body.JSON  # with no fields needed: the body is the payload or none
        self.key_prefix = f"{self.key_header}: " if self.key_header else None

    def _id_only_url(self) -> list[str] | None:
        """The URL's literal text around its placeholders when each one is the row's id, with nothing
        else to render per row (no row headers, the row itself as the body): its URL is then the
        quoted id joined between them (about 2 µs a request less than rendering it field by field)."""
        compiled = self.compiled
        if self.needs_fields or compiled.host_is_dynamic or compiled.row_headers:
            return None
        pieces = [literal for literal, _ in compiled.url.parts]
        if compiled.url.parts[-1][1] is not None:
            pieces.append("")  # the URL ends with a placeholder
        return pieces

    def render(self, row_id: str, payload: str, key: str) -> tuple[str, list[str], bytes | None]:
        key_prefix = self.key_prefix
        if self.url_pieces is not None:
            url = _url_quote(row_id).join(self.url_pieces)
            headers = [*self.compiled.fixed_headers, key_prefix + key] if key_prefix else self.compiled.fixed_headers
            body = payload.encode() if self.payload_is_body else None
        else:
            fields = json.loads(payload) if self.needs_fields else {self.id_field: row_id}
            url, headers, body = self.compiled.render(fields, payload)
            if key_prefix:
                headers = headers + [key_prefix + key]
        if self.authorizer is not None:
            headers = headers + [self.authorizer.header()]
        if self.signing is not None:
            headers = headers + self.signing.headers(key, body)
        return url, headers, body


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
