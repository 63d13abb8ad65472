"""Which rows of a run to show, export or send again: one immutable filter, and its one codec.

The dashboard's failures page and its "rerun exactly these" form, ``export``'s and ``rerun``'s
options all build a :class:`RowFilter`, and it encodes itself for every boundary it crosses: a
query string or a form (:meth:`RowFilter.to_query`, :meth:`RowFilter.from_query`), argv
(:meth:`RowFilter.to_argv`, :meth:`RowFilter.from_options`) and SQL (:meth:`RowFilter.where`).
A value that names no rows (``http_status=5xx``, ``status=bogus``) is refused with
:class:`InvalidFilter`, never dropped: dropping it would widen the selection.

``unknown`` and ``rejected`` rows are sent again only on an explicit opt-in, however the filter
names them: :func:`opted_in` is that rule, and the runner applies it (:meth:`RowFilter.sendable`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from engine.errors import UsageError
from engine.ledger.schema import SENT, UNSETTLED
from engine.states import FAILED, KEY_CONFLICT, PENDING, REJECTED, RETRYING, STATES, SUCCEEDED, UNKNOWN

#: What "failures" means when no state is named: every row that ended without succeeding.
NOT_SUCCEEDED = (FAILED, REJECTED, UNKNOWN, KEY_CONFLICT, RETRYING)
#: The states resent only on an explicit opt-in, and the filter's field that opts in.
OPT_INS = {UNKNOWN: "include_unknown", REJECTED: "include_rejected"}
#: What each opt-in risks, in the operator's words.
RISKS = {
    UNKNOWN: "they may have been charged already: resending can charge those customers twice",
    REJECTED: "the API refused them; if it charged before refusing, resending can charge twice",
}

#: The query string's (and form's) name of each field, and its argv option.
_QUERY_TO_ARGV = {
    "status": "--status",
    "http_status": "--http-status",
    "curl_error": "--curl-error",
    "error": "--error-contains",
    "row_id": "--row-id",
    "include_unknown": "--include-unknown",
    "include_rejected": "--include-rejected",
}
#: Fields that are a flag: present or not.
_FLAGS = ("include_unknown", "include_rejected")
#: Fields that may appear more than once.
_REPEATED = ("status", "row_id")
_TRUE = ("1", "on", "true", "yes")
_DIGITS = re.compile(r"[0-9]{1,9}")
#: The longest text a filter value may be (an error text, a row id): longer is refused, not cut.
MAX_TEXT = 200
#: The most values a repeated field (``row_id``, ``status``) may carry.
MAX_VALUES = 100


class InvalidFilter(UsageError):
    """A filter value that names no rows: refused (a 400, or exit 2), never dropped."""


def opted_in(states: Iterable[str], include_rejected: bool = False, include_unknown: bool = False) -> tuple[str, ...]:
    """The one guard: ``states`` without ``rejected`` and ``unknown`` unless the operator opted in to each."""
    chosen = {REJECTED: include_rejected, UNKNOWN: include_unknown}
    return tuple(state for state in states if chosen.get(state, True))


@dataclass(frozen=True)
class RowFilter:
    """Rows in ``states`` (none: no row), with this last HTTP status / curl error, whose error contains
    a text (case-insensitive), and with one of ``row_ids`` (none: any id). ``include_unknown`` and
    ``include_rejected`` are the operator's opt-ins for sending such rows again."""

    states: tuple[str, ...] = NOT_SUCCEEDED
    http_status: int | None = None
    curl_error: int | None = None
    error_contains: str | None = None
    row_ids: tuple[str, ...] = ()
    include_unknown: bool = False
    include_rejected: bool = False

    def __post_init__(self):  # one order, so that equal selections are equal filters
        object.__setattr__(self, "states", tuple(s for s in STATES if s in self.states))
        object.__setattr__(self, "row_ids", tuple(sorted(set(self.row_ids))))

    # -- what a rerun may send ------------------------------------------------------

    def sendable(self) -> RowFilter:
        """These rows, less the unknown and rejected ones the operator did not opt in to."""
        return replace(self, states=opted_in(self.states, self.include_rejected, self.include_unknown))

    def held_back(self) -> tuple[str, ...]:
        """The states this filter names that a rerun of it leaves alone (no opt-in)."""
        sendable = self.sendable().states
        return tuple(state for state in self.states if state not in sendable)

    # -- query string and form ------------------------------------------------------

    @classmethod
    def from_query(
        cls, pairs: Iterable[tuple[str, str]], ignore: Iterable[str] = (), default_states=NOT_SUCCEEDED
    ) -> RowFilter:
        """The filter a query string's or a form's ``(name, value)`` pairs name; other names than
        the filter's and ``ignore`` are refused. An empty value is no value (a blank form field)."""
        skip = set(ignore)
        values: dict[str, list[str]] = {}
        for name, value in pairs:
            if name in skip:
                continue
            if name not in _QUERY_TO_ARGV:
                raise InvalidFilter(f"invalid filter: unknown parameter {name!r}")
            if not isinstance(value, str):
                raise InvalidFilter(f"invalid filter: {name} must be text")
            if value != "":
                values.setdefault(name, []).append(_text(name, value))
        return cls.from_options(
            states=values.get("status", ()),
            http_status=_one(values, "http_status"),
            curl_error=_one(values, "curl_error"),
            error_contains=_one(values, "error"),
            row_ids=values.get("row_id", ()),
            include_unknown=_flag(values, "include_unknown"),
            include_rejected=_flag(values, "include_rejected"),
            default_states=default_states,
        )

    def to_query(self, opt_ins: bool = True) -> list[tuple[str, str]]:
        """The ``(name, value)`` pairs of a query string or a form's hidden fields (without the
        opt-ins if ``opt_ins`` is false: a form's tick boxes carry them)."""
        pairs = [("status", state) for state in self.states]
        for name, value in (
            ("http_status", self.http_status),
            ("curl_error", self.curl_error),
            ("error", self.error_contains),
        ):
            if value is not None:
                pairs.append((name, str(value)))
        pairs += [("row_id", row_id) for row_id in self.row_ids]
        if opt_ins:
            pairs += [(name, "1") for name in _FLAGS if getattr(self, name)]
        return pairs

    # -- argv -----------------------------------------------------------------------

    @classmethod
    def from_options(
        cls,
        *,
        states: Iterable[str] = (),
        http_status: str | int | None = None,
        curl_error: str | int | None = None,
        error_contains: str | None = None,
        row_ids: Iterable[str] = (),
        include_unknown: bool = False,
        include_rejected: bool = False,
        default_states: Iterable[str] = NOT_SUCCEEDED,
    ) -> RowFilter:
        """The filter the command line's options name (their values as typed); ``default_states``
        when no state is named."""
        named = tuple(states)
        ids = tuple(_text("row_id", row_id) for row_id in row_ids)
        if len(named) > MAX_VALUES or len(ids) > MAX_VALUES:
            raise InvalidFilter(f"invalid filter: more than {MAX_VALUES} values of status or row_id")
        for state in named:
            if state not in STATES:
                raise InvalidFilter(f"invalid filter: status {state!r} is not one of {', '.join(STATES)}")
        return cls(
            states=named or tuple(default_states),
            http_status=_number("http_status", http_status, 100, 599),
            curl_error=_number("curl_error", curl_error, 1, 199),
            error_contains=_text("error", error_contains) if error_contains else None,
            row_ids=ids,
            include_unknown=bool(include_unknown),
            include_rejected=bool(include_rejected),
        )

    def to_argv(self) -> list[str]:
        """The options of ``rerun`` (or, without opt-ins, ``export``) that name exactly this filter."""
        return [
            _QUERY_TO_ARGV[name] if name in _FLAGS else f"{_QUERY_TO_ARGV[name]}={value}"
            for name, value in self.to_query()
        ]

    # -- SQL ------------------------------------------------------------------------

    def where(self, like: str = "LIKE") -> tuple[str, tuple]:
        """The SQL condition on ``requests`` (``like``: the case-insensitive LIKE of the store) and its values."""
        if not self.states:
            return "1 = 0", ()
        clauses = [f"status IN ({', '.join('?' for _ in self.states)})"]
        params: list = list(self.states)
        if not {PENDING, SUCCEEDED} & set(self.states):  # the ledger reads its index of these rows
            clauses.append(UNSETTLED)
        elif PENDING not in self.states:
            clauses.append(SENT)
        for column in ("http_status", "curl_error"):
            if getattr(self, column) is not None:
                clauses.append(f"{column} = ?")
                params.append(getattr(self, column))
        if self.row_ids:
            clauses.append(f"row_id IN ({', '.join('?' for _ in self.row_ids)})")
            params += self.row_ids
        if self.error_contains:  # the error, or the HTTP status as the summary names it ("HTTP 503")
            clauses.append(f"(error {like} ? ESCAPE '\\' OR ('HTTP ' || http_status) {like} ? ESCAPE '\\')")
            params += ["%" + _escape_like(self.error_contains) + "%"] * 2
        return " AND ".join(clauses), tuple(params)

    def describe(self) -> str:
        """The filter in words, for a summary line or a page title."""
        parts = ["any state" if self.states == STATES else "/".join(self.states) or "no state"]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.curl_error is not None:
            parts.append(f"curl {self.curl_error}")
        if self.error_contains:
            parts.append(f"error contains {self.error_contains!r}")
        if self.row_ids:
            parts.append(f"row {', '.join(self.row_ids)}")
        return ", ".join(parts)


def _one(values: dict[str, list[str]], name: str) -> str | None:
    given = values.get(name, [])
    if len(given) > 1 and name not in _REPEATED:
        raise InvalidFilter(f"invalid filter: {name} given {len(given)} times")
    return given[0] if given else None


def _flag(values: dict[str, list[str]], name: str) -> bool:
    value = _one(values, name)
    if value is not None and value.lower() not in _TRUE:
        raise InvalidFilter(f"invalid filter: {name}={value!r} (tick box: 1 or absent)")
    return value is not None


def _number(name: str, value: str | int | None, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidFilter(f"invalid filter: {name} {str(value)!r} is not a number from {low} to {high}")
    return int(text)


def _text(name: str, value: str) -> str:
    """``value`` if it is a sane filter text: at most :data:`MAX_TEXT` characters, and no NUL byte
    (PostgreSQL refuses it in a query: a 500, not the operator's mistake)."""
    if len(value) > MAX_TEXT:
        raise InvalidFilter(f"invalid filter: {name} is {len(value)} characters long (at most {MAX_TEXT})")
    if "\0" in value:
        raise InvalidFilter(f"invalid filter: {name} {value!r} holds a NUL byte")
    return value


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Selection:
    """The rows an operator chose to send again: those matching ``rows`` and, if ``row_ids`` is not
    empty, whose id is listed there."""

    rows: RowFilter
    row_ids: tuple[str, ...] = ()
