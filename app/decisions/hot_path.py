"""The two writes every authorize call makes: the replay claim and the decision record.

On PostgreSQL they run as plain SQL on the asyncpg connection of a pooled SQLAlchemy
connection (SQLAlchemy's execution layer costs about three times the driver's own CPU
per statement), and by group commit: claims or decisions that queue up while earlier
ones are written go out together, each caller still waiting for its own commit
(measured in bench/RESULTS.md). Every other dialect (the embedded SQLite) goes through
SQLAlchemy Core. Both write the same rows; the test suite runs one on each database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.db import insert_for, is_unavailable, table_of
from app.decisions.group_commit import GroupCommit
from app.decisions.models import Decision, TokenClaim

_decisions = table_of(Decision)
_claims = table_of(TokenClaim)

DECISION_COLUMNS = tuple(
    c.name for c in _decisions.columns if c.name not in ("outcome", "outcome_reasons", "outcome_at")
)
_JSON_COLUMNS = frozenset({"risk_reasons"})


class HotPath(Protocol):
    async def claim_token(self, token_sha256: str, now: datetime) -> bool:
        """True for the first presentation of a token, service-wide; False for a replay."""

    async def record_decision(self, values: dict[str, Any]) -> None:
        """Commits one decision row (the columns of DECISION_COLUMNS)."""


def hot_path_for(engine: AsyncEngine) -> HotPath:
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    slots = _pool_slots(engine)
    # The hot path enters the connection pool through a FIFO semaphore: waiters on
    # SQLAlchemy's pool are overtaken by newcomers that find a connection free, which
    # under load starved a few requests for seconds (p99 far above p50).
    gate = asyncio.Semaphore(slots)
    if engine.dialect.name == "postgresql":
        return AsyncpgHotPath(autocommit, gate, slots)
    return CoreHotPath(autocommit, gate)


def _pool_slots(engine: AsyncEngine) -> int:
    """Pool connections the hot path may hold at once; two stay for caches and the outbox."""
    size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
    return max(1, size - 2)


class CoreHotPath:
    """Any dialect, through SQLAlchemy Core; single statements in autocommit."""

    def __init__(self, engine: AsyncEngine, gate: asyncio.Semaphore) -> None:
        self._engine = engine
        self._gate = gate
        self._claim = (
            insert_for(engine.dialect.name, _claims)
            .values(token_sha256=bindparam("token_sha256"), claimed_at=bindparam("claimed_at"))
            .on_conflict_do_nothing(index_elements=["token_sha256"])
            .returning(_claims.c.token_sha256)
        )
        self._insert = insert(_decisions)

    async def claim_token(self, token_sha256: str, now: datetime) -> bool:
        async with self._gate, self._engine.connect() as conn:
            result = await conn.execute(
                self._claim, {"token_sha256": token_sha256, "claimed_at": now}
            )
            return result.first() is not None

    async def record_decision(self, values: dict[str, Any]) -> None:
        async with self._gate, self._engine.connect() as conn:
            await conn.execute(self._insert, values)


class AsyncpgHotPath:
    """PostgreSQL: the same rows as plain SQL on the pooled asyncpg connection, written by
    group commit (one statement for the claims, one for the decisions, that queue up while
    earlier ones run)."""

    _CLAIM = (
        "INSERT INTO token_claims (token_sha256, claimed_at) "
        "SELECT * FROM unnest($1::varchar[], $2::timestamptz[]) "
        "ON CONFLICT (token_sha256) DO NOTHING RETURNING token_sha256"
    )
    # The column names are our own model's: nothing from a request is in this text.
    _INSERT = (
        f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join(f'${n}' for n in range(1, len(DECISION_COLUMNS) + 1))})"
    )

    def __init__(self, engine: AsyncEngine, gate: asyncio.Semaphore, slots: int) -> None:
        self._engine = engine
        self._gate = gate
        # Half the slots each, so claims and records never queue behind each other.
        writers = max(1, slots // 2)
        self._claims: GroupCommit[tuple[str, datetime], bool] = GroupCommit(
            self._claim_batch, writers
        )
        self._records: GroupCommit[list[Any], None] = GroupCommit(self._record_batch, writers)

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        # The pool, its limits and its reconnects stay SQLAlchemy's; only execution is direct.
        async with self._gate, self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                yield raw.driver_connection
            except Exception as exc:
                if is_unavailable(exc):
                    # SQLAlchemy did not see the failure: drop the connection from the pool
                    # rather than hand it to the next caller (after a database restart).
                    await conn.invalidate()
                raise

    async def claim_token(self, token_sha256: str, now: datetime) -> bool:
        return await self._claims.submit((token_sha256, now))

    async def record_decision(self, values: dict[str, Any]) -> None:
        row = [json.dumps(values[c]) if c in _JSON_COLUMNS else values[c] for c in DECISION_COLUMNS]
        await self._records.submit(row)

    async def _claim_batch(self, claims: Sequence[tuple[str, datetime]]) -> list[bool]:
        digests = [digest for digest, _ in claims]
        async with self._driver() as driver:
            rows = await driver.fetch(self._CLAIM, digests, [at for _, at in claims])
        inserted = {row[0] for row in rows}
        # The same token twice in one batch: only its first presentation is new.
        first = []
        for digest in digests:
            first.append(digest in inserted)
            inserted.discard(digest)
        return first

    async def _record_batch(self, rows: Sequence[list[Any]]) -> list[None]:
        async with self._driver() as driver:
            # One round trip for the whole batch, atomically (asyncpg pipelines executemany).
            await driver.executemany(self._INSERT, rows)
        return [None] * len(rows)
