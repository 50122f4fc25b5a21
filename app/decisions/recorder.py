"""The authorize path's writes, kept flowing while the database is away.

Normally a replay claim and a decision record are committed before the answer (through
the hot path's group commit). When a write finds the database unreachable, the recorder
is "away": token claims are checked against an in-process set (Google's own `DUPE`
covers tokens claimed before the outage), and decisions wait in a bounded in-memory
buffer, in the order they were made. A background task retries, writes the claims and
then the buffered decisions in order, and ends the outage once nothing is left; new
decisions keep queueing behind the buffer until then, so the order holds. The buffer
lives in this process: a decision is lost only if the process dies before the database
returns (or the shutdown grace runs out first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import insert_for, is_unavailable, table_of
from app.decisions import repository as repo
from app.decisions.hot_path import HotPath
from app.decisions.models import Decision, IdempotencyRecord, TokenClaim
from app.errors import ServiceUnavailable
from app.metrics import DECISION_BUFFER_SIZE

log = logging.getLogger("chargegate.decisions")

_decisions = table_of(Decision)
_claims = table_of(TokenClaim)
_idempotency = table_of(IdempotencyRecord)

FLUSH_BATCH = 500


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key taken by a request; its answer is committed with its decision."""

    api_key_id: str
    key: str
    request_sha256: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Buffered:
    row: dict[str, Any]
    idempotency: IdempotencyClaim | None
    response: dict[str, Any]


class DecisionRecorder:
    def __init__(
        self, engine: AsyncEngine, hot_path: HotPath, capacity: int, retry_seconds: float = 0.5
    ) -> None:
        self._engine = engine
        self._hot_path = hot_path
        self._capacity = capacity
        self._retry = retry_seconds
        self._buffer: deque[_Buffered] = deque()
        # Tokens claimed while away: the replay check of this process until the outage ends.
        self._local_claims: dict[str, datetime] = {}
        self._away_since: float | None = None
        # Bumped by every claim or decision taken while away: the flusher ends the outage only
        # after a pass in which nothing new arrived.
        self._arrivals = 0
        self._flusher: asyncio.Task[None] | None = None

    @property
    def database_away(self) -> bool:
        return self._away_since is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def ensure_room(self) -> None:
        """Called before a decision is made: 503 rather than a decision that cannot be kept."""
        if self._away_since is not None and (
            len(self._buffer) >= self._capacity or len(self._local_claims) >= self._capacity
        ):
            raise ServiceUnavailable(
                "The database is unavailable and the decision buffer is full; try again shortly.",
                headers={"Retry-After": "1"},
            )

    async def claim_token(self, token_sha256: str, now: datetime) -> bool:
        """True for the first presentation of a token (service-wide while the database is
        there, in this process while it is away)."""
        if self._away_since is None:
            try:
                return await self._hot_path.claim_token(token_sha256, now)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self.database_unavailable(exc)
        if token_sha256 in self._local_claims:
            return False
        self._local_claims[token_sha256] = now
        self._arrivals += 1
        return True

    async def record(
        self,
        row: dict[str, Any],
        response: dict[str, Any],
        idempotency: IdempotencyClaim | None,
    ) -> None:
        """Commits the decision (and, with an Idempotency-Key, the `response` a retry gets)
        now, or buffers it while the database is away."""
        if self._away_since is None:
            try:
                if idempotency is None:
                    await self._hot_path.record_decision(row)
                else:
                    await repo.record_idempotent_decision(
                        self._engine,
                        row,
                        (idempotency.api_key_id, idempotency.key),
                        response,
                    )
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self.database_unavailable(exc)
        self._buffer.append(_Buffered(row, idempotency, response))
        self._arrivals += 1
        DECISION_BUFFER_SIZE.set(len(self._buffer))

    def database_unavailable(self, exc: BaseException) -> None:
        """A write found the database away: buffer from now on, until the flusher gets through."""
        if self._away_since is not None:
            return
        self._away_since = time.monotonic()
        log.error(
            "database unavailable: buffering decisions in memory",
            extra={"error_type": type(exc).__name__, "buffer_capacity": self._capacity},
        )
        self._flusher = asyncio.create_task(self._flush_until_back(), name="decision-flusher")

    async def _flush_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._retry)
            try:
                if await self.flush():
                    return
            except Exception as exc:
                if not is_unavailable(exc):
                    log.error(
                        "buffered decisions not written",
                        extra={"error_type": type(exc).__name__},
                    )

    async def flush(self) -> bool:
        """Writes the claims and buffered decisions (oldest first); True once nothing is
        left and the outage is over."""
        if not self._buffer and not self._local_claims:
            async with self._engine.connect() as conn:  # nothing to write: is it back?
                await conn.execute(text("SELECT 1"))
        while True:
            arrivals = self._arrivals
            await self._write_claims(list(self._local_claims.items()))
            while self._buffer:
                batch = list(islice(self._buffer, FLUSH_BATCH))
                await self._write_decisions(batch)
                for _ in batch:
                    self._buffer.popleft()
                DECISION_BUFFER_SIZE.set(len(self._buffer))
            if arrivals == self._arrivals:
                break
        # No await since the check above: nothing can have slipped in.
        if self._away_since is not None:
            log.warning(
                "database back: buffered decisions written",
                extra={"away_seconds": round(time.monotonic() - self._away_since, 1)},
            )
        self._away_since = None
        self._local_claims.clear()
        self._flusher = None
        return True

    async def close(self, deadline: float) -> None:
        """At shutdown: write what is buffered, trying until `deadline` (time.monotonic())."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        while self._away_since is not None:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    await self.flush()
            except Exception as exc:
                if time.monotonic() + self._retry >= deadline:
                    log.error(
                        "decisions lost at shutdown: the database did not come back in time",
                        extra={"lost": len(self._buffer), "error_type": type(exc).__name__},
                    )
                    return
                await asyncio.sleep(self._retry)

    async def _write_claims(self, claims: list[tuple[str, datetime]]) -> None:
        if not claims:
            return
        statement = insert_for(self._engine.dialect.name, _claims).on_conflict_do_nothing(
            index_elements=["token_sha256"]
        )
        async with self._engine.begin() as conn:
            for start in range(0, len(claims), FLUSH_BATCH):
                rows = claims[start : start + FLUSH_BATCH]
                await conn.execute(
                    statement, [{"token_sha256": d, "claimed_at": at} for d, at in rows]
                )

    async def _write_decisions(self, batch: list[_Buffered]) -> None:
        dialect = self._engine.dialect.name
        # A write that failed after its commit left the row there: skip it, don't fail.
        decisions = insert_for(dialect, _decisions).on_conflict_do_nothing(
            index_elements=["decision_id"]
        )
        answers = insert_for(dialect, _idempotency)
        answers = answers.on_conflict_do_update(
            index_elements=["api_key_id", "idempotency_key"],
            set_={"response": answers.excluded.response},
            where=_idempotency.c.response.is_(None),
        )
        idempotent = [
            {
                "api_key_id": b.idempotency.api_key_id,
                "idempotency_key": b.idempotency.key,
                "request_sha256": b.idempotency.request_sha256,
                "created_at": b.idempotency.created_at,
                "response": b.response,
            }
            for b in batch
            if b.idempotency is not None
        ]
        async with self._engine.begin() as conn:
            await conn.execute(decisions, [b.row for b in batch])
            if idempotent:
                await conn.execute(answers, idempotent)
