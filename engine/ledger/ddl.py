"""The declared schema (:mod:`engine.ledger.schema`) rendered per dialect: SQLite through sqlite-utils,
PostgreSQL as DDL.

Each dialect answers the same few questions (is this table there, which columns has it, which
version is the ledger at) and makes the same few changes, each idempotent: a migration that
was cut short, or a ledger made before versions, is brought up by running the steps again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlite_utils

from engine.ledger.schema import SCHEMA_VERSION, Column, Index, Table


class Dialect(ABC):
    """How one database shows and changes its schema."""

    @abstractmethod
    def locked(self) -> Any:
        """A transaction no other process migrates the ledger beside."""

    @abstractmethod
    def has_table(self, name: str) -> bool: ...

    @abstractmethod
    def columns(self, table: str) -> set[str]: ...

    @abstractmethod
    def create_table(self, table: Table) -> None: ...

    @abstractmethod
    def add_column(self, table: Table, column: Column) -> None:
        """Add ``column`` to an existing ``table`` that lacks it."""

    @abstractmethod
    def create_index(self, index: Index) -> None: ...

    @abstractmethod
    def rename_index(self, old: str, new: str) -> None:
        """Give index ``old``, if there is one, the name ``new``."""

    @abstractmethod
    def execute(self, sql: str, params: tuple = ()) -> Any: ...

    #: The placeholder of a bound parameter.
    PARAM = "?"

    def record(self, version: int, applied_at: float, why: str) -> None:
        """Note that migration ``version`` was applied."""
        self.execute(
            f"INSERT INTO schema_version (version, applied_at, why) VALUES ({self.PARAM}, {self.PARAM}, {self.PARAM})",
            (version, applied_at, why),
        )

    def version(self) -> int | None:
        """The ledger's schema version; None before it has a ``schema_version`` table."""
        if not self.has_table(SCHEMA_VERSION.name):
            return None
        return self.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def _index_ddl(index: Index, if_not_exists: str = "IF NOT EXISTS ") -> str:
    unique = "UNIQUE " if index.unique else ""
    where = f" WHERE {index.where}" if index.where else ""
    return f"CREATE {unique}INDEX {if_not_exists}{index.name} ON {index.table} ({', '.join(index.columns)}){where}"


class SQLiteDialect(Dialect):
    """A SQLite file, through sqlite-utils (tables, columns and plain indexes)."""

    _TYPES = {int: "INTEGER", float: "FLOAT", str: "TEXT"}

    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    @contextmanager
    def locked(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: the file's write lock, so two processes opening an old ledger migrate it once."""
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.execute("ROLLBACK")
            raise
        self.db.conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.db.conn.execute(sql, params)

    def has_table(self, name: str) -> bool:
        return self.db.table(name).exists()

    def columns(self, table: str) -> set[str]:
        return set(self.db.table(table).columns_dict)

    def create_table(self, table: Table) -> None:
        if table.without_rowid:  # sqlite-utils cannot say WITHOUT ROWID
            columns = ", ".join(f"{column.name} {self._TYPES[column.kind]}" for column in table.columns)
            key = ", ".join(table.pk)
            self.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")
            return
        self.db.table(table.name).create(
            {column.name: column.kind for column in table.columns},
            pk=table.pk[0] if len(table.pk) == 1 else table.pk,
            not_null=[column.name for column in table.columns if column.not_null],
            defaults={column.name: column.default for column in table.columns if column.default is not None},
            if_not_exists=True,
        )

    def add_column(self, table: Table, column: Column) -> None:
        self.db.table(table.name).add_column(column.name, column.kind, not_null_default=column.default)

    def create_index(self, index: Index) -> None:
        if index.where:  # sqlite-utils cannot make a partial index
            self.execute(_index_ddl(index))
        else:
            self.db.table(index.table).create_index(
                index.columns, index_name=index.name, unique=index.unique, if_not_exists=True
            )

    def rename_index(self, old: str, new: str) -> None:
        """SQLite cannot rename an index: the old one goes (the step after it makes the new one)."""
        self.execute(f"DROP INDEX IF EXISTS {old}")


class PostgresDialect(Dialect):
    """A PostgreSQL schema (the connection's ``search_path``), as DDL."""

    PARAM = "%s"
    _TYPES = {int: "BIGINT", float: "DOUBLE PRECISION", str: "TEXT"}
    _IDENTITY = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def __init__(self, conn: Any):
        self.conn = conn

    @contextmanager
    def locked(self) -> Iterator[None]:
        """A transaction holding the schema's advisory lock: nodes opening the ledger at once queue."""
        with self.conn.transaction():
            self.execute("SELECT pg_advisory_xact_lock(hashtext('batch-engine schema'))")
            yield

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self.conn.execute(sql, params)

    def has_table(self, name: str) -> bool:
        return self.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def columns(self, table: str) -> set[str]:
        found = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s",
            (table,),
        )
        return {name for (name,) in found.fetchall()}

    def _column(self, table: Table, column: Column) -> str:
        if table.identity and table.pk == (column.name,):
            return f"{column.name} {self._IDENTITY}"
        default = f" NOT NULL DEFAULT {column.default}" if column.default is not None else ""
        not_null = " NOT NULL" if column.not_null and column.default is None else ""
        return f"{column.name} {self._TYPES[column.kind]}{not_null}{default}"

    def create_table(self, table: Table) -> None:
        parts = [self._column(table, column) for column in table.columns]
        if not table.identity:
            parts.append(f"PRIMARY KEY ({', '.join(table.pk)})")
        storage = f" WITH ({table.storage})" if table.storage else ""
        self.execute(f"CREATE TABLE IF NOT EXISTS {table.name} ({', '.join(parts)}){storage}")

    def add_column(self, table: Table, column: Column) -> None:
        self.execute(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {self._column(table, column)}")

    def create_index(self, index: Index) -> None:
        self.execute(_index_ddl(index))

    def rename_index(self, old: str, new: str) -> None:
        self.execute(f"ALTER INDEX IF EXISTS {old} RENAME TO {new}")
