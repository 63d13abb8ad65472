"""SQLite's statements of many rows: loading requests, and recording a batch of results.

One statement of a hundred rows costs SQLite about half of what a statement a row does
(``executemany``), so loading inserts requests a hundred at a time, and recording inserts a
batch's attempts and, from SQLite 3.33 on (``UPDATE … FROM``), updates their rows the same way.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Callable
from typing import NamedTuple

from engine.ledger.retention import payload_after
from engine.states import SUCCEEDED
from engine.wire import RID, Attempt

#: Rows per statement (loading, and a batch of results: their attempts and their rows' updates): one
#: statement of many rows costs SQLite about half of what a statement per row does (``executemany``:
#: loading a million rows took 1.4 against 2.7 s of CPU).
_STATEMENT_ROWS = 100

#: The fields of an attempt that may be absent. Binding Python's None costs sqlite3 a failed
#: adapter lookup (about 0.3 µs a value, measured: a successful attempt has three), so each
#: pattern of absent fields gets statements with NULL written in and binds only what is present.
_OPTIONAL = tuple(Attempt._fields.index(name) for name in ("http_status", "curl_error", "error", "excerpt", "captured"))


#: ``UPDATE … FROM`` came with SQLite 3.33: from it on, a batch's results update their rows as many to a
#: statement as an INSERT takes (a statement per row cost 6.3 µs a row, 100 to a statement 4.8, measured
#: on a million-row ledger); an older SQLite updates one row a statement.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


class _AttemptStatements(NamedTuple):
    """The insert into attempts and the update of the row, for attempts with the same fields absent."""

    row: str  # one attempt's values in the insert: placeholders, NULL where absent
    update: str  # one attempt's update of its row, its values numbered (?1 …) in field order
    updates: str  # the same for many attempts, ``{rows}`` standing for their VALUES (``UPDATE … FROM``)
    values: str  # one attempt's row in those VALUES: a placeholder for each value bound
    present: Callable[[tuple], tuple]  # the attempt's values the statements bind, in order


@functools.cache
def _attempt_statements(absent: tuple[bool, ...]) -> _AttemptStatements:
    """Statements for attempts whose optional fields are None where ``absent`` says so."""
    missing = {index for index, gone in zip(_OPTIONAL, absent, strict=True) if gone}
    present = [index for index in range(len(Attempt._fields)) if index not in missing]
    # bound in field order, like the numbered placeholders (one row) and the VALUES' columns (many)
    row = "(" + ", ".join("NULL" if index in missing else "?" for index in range(len(Attempt._fields))) + ")"
    numbered = _fields_as(present, "?{}")
    columns = _fields_as(present, "v.column{}")
    update = f"UPDATE requests {_recorded(numbered)} WHERE rid = ?1 AND {_newer(numbered)}"
    updates = (
        f"UPDATE requests {_recorded(columns)} FROM (VALUES {{rows}}) AS v"
        f" WHERE requests.rid = {columns['rid']} AND {_newer(columns)}"
    )
    values = "(" + ", ".join("?" * len(present)) + ")"
    return _AttemptStatements(row, update, updates, values, operator.itemgetter(*present))


def _fields_as(present: list[int], form: str) -> dict[str, str]:
    """Each attempt field as SQL: the ``form`` of its number among the fields present, or NULL."""
    value = dict.fromkeys(Attempt._fields, "NULL")
    value.update({Attempt._fields[index]: form.format(number) for number, index in enumerate(present, 1)})
    return value


def _recorded(value: dict[str, str]) -> str:
    """The row's new columns once an attempt whose fields are the SQL expressions ``value`` is recorded."""
    return (
        f"SET attempts = {value['attempt']}, status = {value['outcome']},"
        f" http_status = {value['http_status']}, curl_error = {value['curl_error']}, error = {value['error']},"
        f" latency_ms = {value['duration_ms']}, captured = {value['captured']}, replayed = {value['replayed']},"
        f" updated_at = {value['started_at']} + {value['duration_ms']} / 1000.0,"
        f" payload = {payload_after(value['outcome'])}"  # dropped as it succeeds (--keep-payload)
    )


def _newer(value: dict[str, str]) -> str:
    """Whether the attempt ``value`` may change its row: a late or repeated result never undoes a success,
    nor does an older attempt overwrite a newer one, unless it succeeded (a charge is what counts)."""
    return (
        f"requests.status != '{SUCCEEDED}'"
        f" AND (coalesce(requests.attempts, 0) <= {value['attempt']} OR {value['outcome']} = '{SUCCEEDED}')"
    )


#: Where loading inserts: the run's id and the time are bound once a statement (?1, ?2), then each
#: pending request's (line, id, priority, payload, key).
_REQUESTS_INTO = (
    "INSERT INTO requests (run_id, line, row_id, priority, payload, idempotency_key, status, attempts, updated_at)"
    " VALUES {rows}"
)
_PENDING_FIELDS = 5
_BY_ROW = operator.itemgetter(RID)
_ATTEMPTS_INTO = f"INSERT INTO attempts ({', '.join(Attempt._fields)}) VALUES {{rows}}"


@functools.cache
def _many(statement: str, row: str, rows: int) -> str:
    """``statement`` with ``rows`` rows, each written as ``row``, where it says ``{rows}``."""
    return statement.replace("{rows}", ", ".join([row] * rows))


def _in_groups(conn: sqlite3.Connection, statement: str, row: str, rows: list[tuple]) -> None:
    """Run ``statement`` over ``rows`` (each a tuple of bound values, placed as ``row`` says)
    :data:`_STATEMENT_ROWS` at a time, in order."""
    for start in range(0, len(rows), _STATEMENT_ROWS):
        group = rows[start : start + _STATEMENT_ROWS]
        conn.execute(_many(statement, row, len(group)), [*itertools.chain.from_iterable(group)])


def _each_row_once(values: list[tuple]) -> list[list[tuple]]:
    """``values`` (attempts, the row's id first) in turns that hold a row at most once, its attempts in
    their order: one ``UPDATE … FROM`` applies a single, arbitrary one of a row's matches."""
    turns: list[list[tuple]] = []
    seen: dict[int, int] = {}
    for value in values:
        turn = seen.get(value[0], 0)
        seen[value[0]] = turn + 1
        if turn == len(turns):
            turns.append([])
        turns[turn].append(value)
    return turns


def _by_absent_fields(attempts: list[tuple]) -> dict[tuple[bool, ...], list[tuple]]:
    """The attempts grouped by which optional fields they lack (a batch has two or three patterns)."""
    http_status, curl_error, error, excerpt, captured = _OPTIONAL
    groups: dict[tuple[bool, ...], list[tuple]] = {}
    for attempt in attempts:
        absent = (
            attempt[http_status] is None,
            attempt[curl_error] is None,
            attempt[error] is None,
            attempt[excerpt] is None,
            attempt[captured] is None,
        )
        groups.setdefault(absent, []).append(attempt)
    return groups


def insert_pending(conn: sqlite3.Connection, run_id: str, now: float, rows: list[tuple]) -> None:
    """Insert ``(line, row_id, priority, payload, idempotency_key)`` rows of ``run_id`` as ``pending``, in
    order, :data:`_STATEMENT_ROWS` to a statement; no tuple is built per row (a load's writer is one of
    its two busy cores)."""
    for start in range(0, len(rows), _STATEMENT_ROWS):
        group = rows[start : start + _STATEMENT_ROWS]
        conn.execute(_pending_rows(len(group)), [run_id, now, *itertools.chain.from_iterable(group)])


@functools.cache
def _pending_rows(rows: int) -> str:
    """The insert of ``rows`` pending requests, their values numbered after the run's id and the time."""
    return _REQUESTS_INTO.replace("{rows}", ", ".join(_pending_row(3 + n * _PENDING_FIELDS) for n in range(rows)))


def _pending_row(first: int) -> str:
    """One pending request's values: the run's id (?1), its own five from ``?first`` on, the time (?2)."""
    own = ", ".join(f"?{number}" for number in range(first, first + _PENDING_FIELDS))
    return f"(?1, {own}, 'pending', 0, ?2)"


def write_attempts(conn: sqlite3.Connection, attempts: list[tuple]) -> None:
    """Insert the attempts and move their rows on, in the caller's transaction; each row ends as if its
    attempts had been applied one by one in order (the rule is :func:`_newer`'s).

    They are written in the order of their rows (a stable sort: a row's own attempts keep theirs).
    Answers end in no particular order within a window, and rows written as they ended send each
    update to another page of the table and of its indexes: 4,096 answers of a 16,000 window with
    spread latencies cost 17.8 µs a row written as they ended, 10.7 in row order."""
    attempts = sorted(attempts, key=_BY_ROW)
    for absent, group in _by_absent_fields(attempts).items():
        statements = _attempt_statements(absent)
        values = list(map(statements.present, group))
        _in_groups(conn, _ATTEMPTS_INTO, statements.row, values)
        if _UPDATE_FROM:
            for turn in _each_row_once(values):
                _in_groups(conn, statements.updates, statements.values, turn)
        else:
            conn.executemany(statements.update, values)
