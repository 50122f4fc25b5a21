"""Delivers outcome annotations to Google from the database outbox, surviving restarts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import utcnow
from app.decisions import repository as repo
from app.metrics import ANNOTATION_BACKLOG, ANNOTATIONS
from app.operators.state import OperatorStateCache
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.types import UpstreamError, UpstreamErrorKind

log = logging.getLogger("chargegate.outbox")

DELIVERY_WINDOW = timedelta(days=7)
MAX_BACKOFF_SECONDS = 3600.0
LEASE = timedelta(seconds=60)
BATCH = 50
PURGE_EVERY_SECONDS = 600.0

# Google may accept these later; any other 4xx will never succeed.
_TRANSIENT = {
    UpstreamErrorKind.TIMEOUT,
    UpstreamErrorKind.UNREACHABLE,
    UpstreamErrorKind.RATE_LIMITED,
    UpstreamErrorKind.SERVER_ERROR,
    UpstreamErrorKind.BAD_RESPONSE,
    UpstreamErrorKind.CIRCUIT_OPEN,
}


def backoff_seconds(attempts: int, base: float) -> float:
    """Capped exponential back-off with full jitter in its upper half."""
    ceiling = min(MAX_BACKOFF_SECONDS, base * 2.0 ** min(attempts, 30))
    return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret


class AnnotationOutbox:
    def __init__(
        self,
        engine: AsyncEngine,
        operators: OperatorStateCache,
        recaptcha: RecaptchaClient,
        poll_seconds: float,
    ) -> None:
        self._engine = engine
        self._operators = operators
        self._recaptcha = recaptcha
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the round, so a report queued during it is not left for the next poll.
            self._wake.clear()
            try:
                await self.deliver_due()
                if loop.time() - last_purge > PURGE_EVERY_SECONDS:
                    await repo.purge_expired(self._engine, utcnow())
                    last_purge = loop.time()
            except Exception as exc:  # the database may be away; try again next round
                log.warning("outbox round failed", extra={"error_type": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)

    async def deliver_due(self) -> int:
        """One pass over the due annotations; returns how many were delivered."""
        delivered = 0
        rows = await repo.due_annotations(self._engine, utcnow(), BATCH)
        for row in rows:
            leased_until = utcnow() + LEASE
            if not await repo.lease_annotation(self._engine, row, leased_until):
                continue
            try:
                delivered += await self._deliver(row)
            except asyncio.CancelledError:
                # Stopped mid-call: hand the annotation back now, not when the lease runs out.
                await asyncio.shield(repo.release_annotation(self._engine, row.id, leased_until))
                raise
        if rows or delivered:
            ANNOTATION_BACKLOG.set(await repo.pending_annotations(self._engine))
        return delivered

    async def _deliver(self, row: Row[Any]) -> int:
        now = utcnow()
        state = await self._operators.get(row.operator_id)
        try:
            if state is None or state.credential is None:
                raise UpstreamError.of(UpstreamErrorKind.CREDENTIALS_REJECTED, "no credentials")
            await self._recaptcha.annotate(
                state.credential, row.assessment_name, row.annotation, row.reasons
            )
        except UpstreamError as exc:
            kind = exc.failure.kind
            attempts = row.attempts + 1
            missing_credentials = state is None or state.credential is None
            retryable = kind in _TRANSIENT or missing_credentials
            if retryable and now - row.created_at < DELIVERY_WINDOW:
                retry_at = now + timedelta(seconds=backoff_seconds(attempts, self._poll_seconds))
                await repo.finish_annotation(
                    self._engine,
                    row.id,
                    attempts=attempts,
                    next_attempt_at=retry_at,
                    last_error=kind.value,
                )
                ANNOTATIONS.labels("retry").inc()
            else:
                final = "expired" if retryable else "rejected"
                await repo.finish_annotation(
                    self._engine, row.id, attempts=attempts, status=final, last_error=kind.value
                )
                ANNOTATIONS.labels(final).inc()
                log.warning(
                    "annotation given up",
                    extra={
                        "decision_id": row.decision_id,
                        "result": final,
                        "upstream_error": kind.value,
                    },
                )
            return 0
        await repo.finish_annotation(
            self._engine,
            row.id,
            attempts=row.attempts + 1,
            status="delivered",
            delivered_at=utcnow(),
            last_error=None,
        )
        ANNOTATIONS.labels("delivered").inc()
        return 1
