"""The statements of :class:`~engine.ledger.roles.ChunkLedger`: chunks planned, claimed under a fencing
token (the database's clock decides who holds what), renewed, finished, queued again or retired."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from engine.ledger.claim import ChunkClaim, superseded
from engine.ledger.roles import ChunkLedger
from engine.ledger.sql_base import SQLBase
from engine.states import CHUNK_DEAD, CHUNK_DONE, CHUNK_QUEUED, CHUNK_RETIRED, CHUNK_RUNNING
from engine.wire import Attempt, Dispatch


class SQLChunkLedger(SQLBase, ChunkLedger):
    """Chunks for worker nodes, in SQL."""

    def plan_chunks(self, run_id: str, pass_no: int, states: Iterable[str], size: int) -> list[int]:
        states = tuple(states)
        chunk_ids: list[int] = []
        batch: list[int] = []
        for page in self._pages(run_id, states):
            for row in page.rows:
                batch.append(row.rid)
                if len(batch) == size:
                    chunk_ids.append(self._new_chunk(run_id, pass_no, states, batch))
                    batch = []
        if batch:
            chunk_ids.append(self._new_chunk(run_id, pass_no, states, batch))
        return chunk_ids

    def _new_chunk(self, run_id: str, pass_no: int, states: tuple, rids: list[int]) -> int:
        with self._transaction():
            chunk_id = self._value(
                "INSERT INTO chunks (run_id, pass_no, rows, states, state, deliveries, refused, generation, queued_at)"
                f" VALUES (?, ?, ?, ?, '{CHUNK_QUEUED}', 0, 0, 0, {self.NOW}) RETURNING chunk_id",
                (run_id, pass_no, len(rids), ",".join(states)),
            )
            self._set_chunk(chunk_id, rids)
        return chunk_id

    def _set_chunk(self, chunk_id: int, rids: list[int]) -> None:
        """The rows ``rids`` belong to chunk ``chunk_id`` (a store may do it in one statement)."""
        self._run_many("UPDATE requests SET chunk_id = ? WHERE rid = ?", [(chunk_id, rid) for rid in rids])

    def claim_chunk(self, chunk_id: int, node: str, max_deliveries: int, busy_for: float = 60.0) -> ChunkClaim | None:
        with self._exclusive(f"chunk:{chunk_id}"):
            found = self._run(
                f"SELECT state, deliveries, states, heartbeat_at > {self.NOW} - ?, generation FROM chunks"
                " WHERE chunk_id = ?",
                (busy_for, chunk_id),
            ).fetchone()
            if found is None:
                return None
            state, deliveries, states, busy, generation = found
            if state not in (CHUNK_QUEUED, CHUNK_RUNNING) or (state == CHUNK_RUNNING and busy):
                # finished, or another node is sending it: a second copy must not go out
                self._run("UPDATE chunks SET refused = refused + 1 WHERE chunk_id = ?", (chunk_id,))
                return None
            if deliveries >= max_deliveries:
                self._run(
                    f"UPDATE chunks SET state = '{CHUNK_DEAD}', finished_at = {self.NOW} WHERE chunk_id = ?",
                    (chunk_id,),
                )
                return None
            self._run(
                f"UPDATE chunks SET state = '{CHUNK_RUNNING}', deliveries = deliveries + 1, node = ?,"
                f" generation = generation + 1, heartbeat_at = {self.NOW} WHERE chunk_id = ?",
                (node, chunk_id),
            )
        membership, state_params = self._in(states.split(","))
        rows = self._run(
            "SELECT rid, row_id, payload, idempotency_key, attempts FROM requests"
            f" WHERE chunk_id = ? AND status {membership} ORDER BY priority DESC, rid",
            (chunk_id, *state_params),
        ).fetchall()
        return ChunkClaim(chunk_id, node, generation + 1, [Dispatch(*row) for row in rows])

    #: The condition under which a claim is still its holder's: running, by it, under its token.
    _HELD = f"chunk_id = ? AND node = ? AND generation = ? AND state = '{CHUNK_RUNNING}'"

    def renew_chunk(self, claim: ChunkClaim) -> bool:
        with self._transaction():
            return bool(
                self._run(
                    f"UPDATE chunks SET heartbeat_at = {self.NOW} WHERE {self._HELD}",
                    (claim.chunk_id, claim.node, claim.generation),
                ).rowcount
            )

    def finish_chunk(self, claim: ChunkClaim, attempts: list[tuple], complete: bool = True) -> bool:
        token = (claim.chunk_id, claim.node, claim.generation)
        with self._exclusive(f"chunk:{claim.chunk_id}"):  # claim_chunk's lock: no new token meanwhile
            held = self._run(f"SELECT 1 FROM chunks WHERE {self._HELD}", token).fetchone() is not None
            if not held:
                self._write_superseded(superseded(attempts, claim.generation))
                return False
            if attempts:
                self._write_attempts(attempts)
            if complete:  # else it stays running, unrenewed: queued again once silent (its in-flight timed out)
                self._run(
                    f"UPDATE chunks SET state = '{CHUNK_DONE}', finished_at = {self.NOW} WHERE {self._HELD}", token
                )
        return True

    def _write_superseded(self, attempts: list[tuple]) -> None:
        """Audit records only: the rows' state is the current holder's to write."""
        if attempts:
            fields = ", ".join(Attempt._fields)
            self._run_many(
                f"INSERT INTO attempts ({fields}) VALUES ({', '.join('?' for _ in Attempt._fields)})"
                " ON CONFLICT (rid, attempt) DO NOTHING",
                attempts,
            )

    def ledger_id(self) -> str:
        with self._transaction():
            self._run(
                "INSERT INTO meta (key, value) VALUES ('ledger_id', ?) ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(8),),
            )
            return self._value("SELECT value FROM meta WHERE key = 'ledger_id'", ())

    def chunk_counts(self, run_id: str, pass_no: int) -> dict[str, int]:
        counts = dict.fromkeys((CHUNK_QUEUED, CHUNK_RUNNING, CHUNK_DONE, CHUNK_DEAD), 0)
        counts.update(
            self._run(
                "SELECT state, count(*) FROM chunks WHERE run_id = ? AND pass_no = ? GROUP BY state", (run_id, pass_no)
            ).fetchall()
        )
        return counts

    def silent_chunks(self, run_id: str, pass_no: int, silent_for: float) -> list[int]:
        return self._queue_again(run_id, pass_no, CHUNK_RUNNING, "heartbeat_at", silent_for)

    def waiting_chunks(self, run_id: str, pass_no: int, queued_for: float) -> list[int]:
        return self._queue_again(run_id, pass_no, CHUNK_QUEUED, "queued_at", queued_for)

    def _queue_again(self, run_id: str, pass_no: int, state: str, column: str, older_than: float) -> list[int]:
        """The pass's chunks in ``state`` whose ``column`` is ``older_than`` seconds old by the database's
        clock (the only clock every node and the coordinator share): queued (again), as of now. One whose row
        another session holds (a node frozen inside a transaction) is passed over until the server ends that session."""
        with self._transaction():
            found = [
                chunk_id
                for (chunk_id,) in self._run(
                    f"SELECT chunk_id FROM chunks WHERE run_id = ? AND pass_no = ? AND state = '{state}'"
                    f" AND {column} < {self.NOW} - ? ORDER BY chunk_id{self.SKIP_LOCKED}",
                    (run_id, pass_no, older_than),
                ).fetchall()
            ]
            self._run_many(
                f"UPDATE chunks SET state = '{CHUNK_QUEUED}', queued_at = {self.NOW}"
                f" WHERE chunk_id = ? AND state = '{state}'",
                [(chunk_id,) for chunk_id in found],
            )
        return found

    def retire_chunks(self, run_id: str, silent_for: float) -> int:
        with self._transaction():
            self._run(
                f"UPDATE chunks SET state = '{CHUNK_RETIRED}', finished_at = {self.NOW} WHERE run_id = ?"
                f" AND (state = '{CHUNK_QUEUED}' OR (state = '{CHUNK_RUNNING}' AND heartbeat_at < {self.NOW} - ?))",
                (run_id, silent_for),
            )
            return self._value(f"SELECT count(*) FROM chunks WHERE run_id = ? AND state = '{CHUNK_RUNNING}'", (run_id,))

    def chunk_summary(self, run_id: str) -> dict[str, int] | None:
        chunks, dead, resent, refused = self._run(
            f"SELECT count(*), coalesce(sum(CASE WHEN state = '{CHUNK_DEAD}' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN deliveries > 1 THEN deliveries - 1 ELSE 0 END), 0), coalesce(sum(refused), 0)"
            " FROM chunks WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if not chunks:
            return None
        return {"chunks": chunks, "dead": dead, "resent": resent, "refused": refused}
