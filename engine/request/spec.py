"""What every request of a run looks like, from the options a user gave: the :class:`RequestSpec`.

Here ``${VAR}`` references are expanded from the environment (the values are secrets:
kept out of ``repr`` and redacted wherever text is shown), header lines are parsed, and
the destinations a run may reach are fixed. Rendering a row is :mod:`engine.request.template`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, quote_plus, urlsplit

from engine.errors import DestinationError, UsageError

if TYPE_CHECKING:
    from engine.auth.oauth import OAuthClient
    from engine.request.signing import Signing

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


#: Shortest piece of a base64 encoding that is redacted (shorter ones would match ordinary text).
_MIN_BASE64_PIECE = 6
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
_BASE64_CHAR = "[A-Za-z0-9+/_-]"


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every secret, in every encoding an API may reflect it in (see
    :func:`secret_forms`), and a secret cut off at its end, replaced by :data:`REDACTED`.

    The one redaction of the engine: excerpts, errors and shown URLs all go through it."""
    if not text:
        return text
    forms, base64_starts, base64_values = secret_forms(secrets if isinstance(secrets, tuple) else tuple(secrets))
    if base64_values is not None and any(start in text for start in base64_starts):
        text = base64_values.sub(REDACTED, text)
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
        tail_from = max(0, len(text) - len(form) + 1)
        start = text.find(form[:_MIN_SECRET_PREFIX], tail_from)
        while start >= 0:
            if form.startswith(text[start:]):
                text = text[:start] + REDACTED
                break
            start = text.find(form[:_MIN_SECRET_PREFIX], start + 1)
    return text


class SecretForms(NamedTuple):
    """What :func:`redact` looks for: the literal forms, longest first, and the base64 values that
    carry a secret (the whole value goes, e.g. ``base64(user:password)``, not only the secret's part)."""

    forms: tuple[str, ...]
    #: The first characters of every base64 piece: the pattern runs only where one is in the text.
    base64_starts: tuple[str, ...]
    base64_values: re.Pattern | None


@functools.lru_cache(maxsize=16)
def secret_forms(secrets: tuple[str, ...]) -> SecretForms:
    """Each secret as an API may echo it: as is, JSON-escaped (``\\/``, ``\\uXXXX``), URL-encoded
    (upper- and lower-case hex, ``+`` for a space) and base64 (standard and URL-safe, alone or inside
    a longer value such as ``Basic base64(user:password)``); a Basic credential's decoded
    ``user:password`` too. Computed once per set of secrets (a run has one), not per row."""
    forms: set[str] = set()
    pieces: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update(_forms_of(secret))
            pieces.update(_base64_pieces(secret.encode()))
    base64_values = None
    if pieces:
        ordered = sorted(pieces, key=len, reverse=True)
        whole = "|".join(re.escape(piece) for piece in ordered)
        cut = "|".join(_cut_off(piece) for piece in ordered)  # the value cut at the excerpt's end
        base64_values = re.compile(f"{_BASE64_CHAR}*(?:(?:{whole}){_BASE64_CHAR}*=*|(?:{cut})$)")
    starts = tuple(sorted({piece[:_MIN_BASE64_PIECE] for piece in pieces}))
    return SecretForms(tuple(sorted(forms, key=lambda form: (-len(form), form))), starts, base64_values)


def _forms_of(secret: str) -> set[str]:
    forms = {secret, *_json_forms(secret)}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")):
        forms.update((encoded, _PERCENT_HEX.sub(lambda m: m.group().lower(), encoded)))
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(secret.encode()).decode()
        forms.update((whole, whole.rstrip("=")))  # also when cut off (a short secret has no piece)
    decoded = _basic_credential(secret)
    if decoded:
        forms.update(piece for piece in (decoded, decoded.partition(":")[2]) if len(piece) >= _MIN_SECRET_PREFIX)
    return forms


def _json_forms(secret: str) -> set[str]:
    forms: set[str] = set()
    for escaped in (json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        forms.update((escaped, escaped.replace("/", "\\/")))
        forms.add(re.sub(r"\\u[0-9a-f]{4}", lambda m: m.group().upper().replace("\\U", "\\u"), escaped))
    return forms


def _base64_pieces(raw: bytes) -> set[str]:
    """The part of the secret's base64 that is the same wherever it sits in a longer value (three
    alignments: what is encoded before it shifts it by 0, 1 or 2 bytes), standard and URL-safe."""
    pieces = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift, skip in ((0, 0), (1, 2), (2, 3)):
            shifted = encode(b"\0" * shift + raw).decode()
            piece = shifted[skip : 4 * ((shift + len(raw)) // 3)]
            if len(piece) >= _MIN_BASE64_PIECE:
                pieces.add(piece)
    return pieces


def _cut_off(piece: str) -> str:
    """A pattern for any start of ``piece`` of at least :data:`_MIN_BASE64_PIECE` characters."""
    pattern = ""
    for char in reversed(piece[_MIN_BASE64_PIECE:]):
        pattern = f"(?:{re.escape(char)}{pattern})?"
    return re.escape(piece[:_MIN_BASE64_PIECE]) + pattern


def _basic_credential(secret: str) -> str | None:
    """The ``user:password`` a secret stands for when it is a Basic credential (base64 of that)."""
    try:
        decoded = base64.b64decode(secret, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded if ":" in decoded and decoded.isprintable() else None


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
    #: How each attempt is signed (``--sign``), and the OAuth2 client its token comes from.
    signing: Signing | None = field(default=None, repr=False)
    oauth: OAuthClient | None = field(default=None, repr=False)
    #: Every value read from the environment (``${VAR}`` in the URL or a header, the signing secret, the
    #: OAuth2 client secret): redacted wherever shown. A worker adds the access tokens it sends.
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
        signing: Signing | None = None,
        oauth: OAuthClient | None = None,
        environ=os.environ,
    ) -> RequestSpec:
        """Validate the options a user gave and build the spec, or raise a one-line error."""
        method = method.upper()
        secrets = _env_values([url, *header_lines], environ)
        extra = [signing.secret] if signing else []
        extra += [oauth.client_secret] if oauth else []
        secrets = tuple(sorted({*secrets, *extra}, key=len, reverse=True))
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
            signing=signing,
            oauth=oauth,
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
