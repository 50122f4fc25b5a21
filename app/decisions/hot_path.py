"""The two writes every authorize call makes: the replay claim and the decision record.

On PostgreSQL they run as plain SQL on the asyncpg connection of a pooled SQLAlchemy
connection: SQLAlchemy's execution layer costs about three times the driver's own CPU
per statement, and these two statements are most of the database work on the hot path
(measured in bench/RESULTS.md). Every other dialect (the embedded SQLite) goes through
SQLAlchemy Core. Both write the same rows; the test suite runs one on each database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.db import insert_for, table_of
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
    if engine.dialect.name == "postgresql":
        return AsyncpgHotPath(autocommit, _fair_gate(engine))
    return CoreHotPath(autocommit, _fair_gate(engine))


def _fair_gate(engine: AsyncEngine) -> asyncio.Semaphore:
    """Admits the hot path to the connection pool first come, first served.

    Waiters on SQLAlchemy's pool are overtaken by newcomers that find a connection free,
    which under load starves a few requests for seconds (p99 far above p50). An asyncio
    semaphore is FIFO; two connections stay for the caches and the outbox.
    """
    size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
    return asyncio.Semaphore(max(1, size - 2))


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
    """PostgreSQL: the same statements as plain SQL on the pooled asyncpg connection."""

    _CLAIM = (
        "INSERT INTO token_claims (token_sha256, claimed_at) VALUES ($1, $2) "
        "ON CONFLICT (token_sha256) DO NOTHING RETURNING token_sha256"
    )
    # The column names are our own model's: nothing from a request is in this text.
    _INSERT = (
        f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join(f'${n}' for n in range(1, len(DECISION_COLUMNS) + 1))})"
    )

    def __init__(self, engine: AsyncEngine, gate: asyncio.Semaphore) -> None:
        self._engine = engine
        self._gate = gate

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        # The pool, its limits and its reconnects stay SQLAlchemy's; only execution is direct.
        async with self._gate, self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

    async def claim_token(self, token_sha256: str, now: datetime) -> bool:
        async with self._driver() as driver:
            return await driver.fetchval(self._CLAIM, token_sha256, now) is not None

    async def record_decision(self, values: dict[str, Any]) -> None:
        args = [
            json.dumps(values[c]) if c in _JSON_COLUMNS else values[c] for c in DECISION_COLUMNS
        ]
        async with self._driver() as driver:
            await driver.execute(self._INSERT, *args)
