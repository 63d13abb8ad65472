"""The ledger's schema versions: an ordered list of migrations, applied once each, recorded in ``schema_version``.

A new ledger and an old one take the same path: every migration above the version the ledger
records (none recorded: 0) is applied in order, in one locked transaction, and recorded. The
steps create what the declaration (:mod:`engine.ledger.schema`) says and is missing, so a
ledger made before versions existed, whatever release made it, comes out the same as a new
one. A ledger whose version is above :data:`LATEST` was written by a newer batch-engine: it is
refused (:class:`~engine.errors.LedgerTooNew`) rather than read or written wrongly.

To change the schema: change the declaration, then append a :class:`Migration` whose steps
bring an existing ledger there. Never edit a migration that has shipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.errors import LedgerTooNew
from engine.ledger.ddl import Dialect
from engine.ledger.schema import INDEXES, SCHEMA_VERSION, TABLES


@dataclass(frozen=True)
class AddTable:
    table: str

    def apply(self, dialect: Dialect) -> None:
        dialect.create_table(TABLES[self.table])


@dataclass(frozen=True)
class AddColumn:
    """A column later releases added (a table made by the declaration has it already)."""

    table: str
    column: str

    def apply(self, dialect: Dialect) -> None:
        if self.column not in dialect.columns(self.table):
            dialect.add_column(TABLES[self.table], TABLES[self.table].column(self.column))


@dataclass(frozen=True)
class AddIndex:
    index: str

    def apply(self, dialect: Dialect) -> None:
        dialect.create_index(INDEXES[self.index])


@dataclass(frozen=True)
class RenameIndex:
    """PostgreSQL ledgers named four indexes their own way; both dialects use one name now."""

    old: str
    new: str

    def apply(self, dialect: Dialect) -> None:
        dialect.rename_index(self.old, self.new)


Step = AddTable | AddColumn | AddIndex | RenameIndex


@dataclass(frozen=True)
class Migration:
    version: int
    why: str
    steps: tuple[Step, ...]


MIGRATIONS = (
    Migration(
        1,
        "runs, their rows, attempts, passes, pauses and leases",
        (
            *(AddTable(name) for name in ("runs", "requests", "attempts", "passes", "leases", "pauses")),
            AddColumn("runs", "fingerprint"),
            AddColumn("runs", "paused"),
            RenameIndex("requests_run_row", "idx_requests_run_id_row_id"),
            RenameIndex("requests_run_priority_rid", "idx_requests_run_id_priority_rid"),
            RenameIndex("runs_fingerprint", "idx_runs_fingerprint"),
            AddIndex("idx_requests_run_id_row_id"),
            AddIndex("idx_requests_run_id_priority_rid"),
            AddIndex("idx_runs_fingerprint"),
        ),
    ),
    Migration(
        2,
        "chunks for worker nodes",
        (
            AddTable("chunks"),
            AddColumn("chunks", "refused"),
            AddColumn("requests", "chunk_id"),
            RenameIndex("chunks_run_state", "idx_chunks_run_id_state"),
            AddIndex("idx_chunks_run_id_state"),
            AddIndex("requests_chunk"),
        ),
    ),
    Migration(
        3, "fenced chunk claims, and the ledger's identity", (AddColumn("chunks", "generation"), AddTable("meta"))
    ),
    Migration(
        4,
        "partial indexes of sent and of unsettled rows (PostgreSQL ledgers lacked them)",
        (AddIndex("requests_sent"), AddIndex("requests_unsettled")),
    ),
    Migration(5, "the audit log of the dashboard's actions", (AddTable("audit"), AddIndex("idx_audit_run_id"))),
    Migration(
        6,
        "--capture values per row and attempt; answers the API marked Idempotent-Replayed",
        (
            AddColumn("requests", "captured"),
            AddColumn("requests", "replayed"),
            AddColumn("attempts", "captured"),
            AddColumn("attempts", "replayed"),
        ),
    ),
    Migration(
        7,
        "retention: payloads dropped once sent, purged runs' summaries",
        (AddColumn("runs", "keep_payload"), AddColumn("runs", "purged_at"), AddColumn("runs", "summary")),
    ),
)
#: The schema version this code reads and writes.
LATEST = MIGRATIONS[-1].version
assert [migration.version for migration in MIGRATIONS] == list(range(1, LATEST + 1))


def migrate(dialect: Dialect, location: str) -> int:
    """Bring the ledger at ``location`` to :data:`LATEST`; refuse one newer. Returns the version it was at."""
    found = dialect.version()
    if found is not None:
        _refuse_newer(found, location)
        if found == LATEST:  # the usual open: nothing to lock
            return found
    with dialect.locked():
        dialect.create_table(SCHEMA_VERSION)
        found = dialect.version() or 0  # another process may have migrated it meanwhile
        _refuse_newer(found, location)
        for migration in MIGRATIONS[found:]:
            for step in migration.steps:
                step.apply(dialect)
            dialect.record(migration.version, time.time(), migration.why)
    return found


def _refuse_newer(found: int, location: str) -> None:
    if found > LATEST:
        raise LedgerTooNew(
            f"ledger {location} has schema version {found}, newer than this batch-engine reads ({LATEST}):"
            " use the batch-engine that wrote it, or a newer one"
        )
