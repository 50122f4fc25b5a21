"""SQL of the authorize path, the decision listing and the annotation outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import insert_for, table_of, utcnow
from app.decisions.models import AnnotationOutbox, Decision, IdempotencyRecord, TokenClaim

_decisions = table_of(Decision)
_claims = table_of(TokenClaim)
_idempotency = table_of(IdempotencyRecord)
_outbox = table_of(AnnotationOutbox)

RETENTION = timedelta(hours=25)


_INSERT_DECISION = insert(_decisions)


async def record_idempotent_decision(
    engine: AsyncEngine,
    values: dict[str, Any],
    idempotency: tuple[str, str],
    response: dict[str, Any],
) -> None:
    """Commits the decision together with the answer an idempotent retry will get."""
    api_key_id, key = idempotency
    async with engine.begin() as conn:
        await conn.execute(_INSERT_DECISION, values)
        await conn.execute(
            update(_idempotency)
            .where(_idempotency.c.api_key_id == api_key_id, _idempotency.c.idempotency_key == key)
            .values(response=response)
        )


async def claim_idempotency_key(
    engine: AsyncEngine, api_key_id: str, key: str, request_sha256: str, now: datetime
) -> bool:
    statement = (
        insert_for(engine.dialect.name, _idempotency)
        .values(
            api_key_id=api_key_id,
            idempotency_key=key,
            request_sha256=request_sha256,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["api_key_id", "idempotency_key"])
        .returning(_idempotency.c.api_key_id)
    )
    async with engine.begin() as conn:
        return (await conn.execute(statement)).first() is not None


async def idempotency_record(engine: AsyncEngine, api_key_id: str, key: str) -> Row[Any] | None:
    query = select(_idempotency).where(
        _idempotency.c.api_key_id == api_key_id, _idempotency.c.idempotency_key == key
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).one_or_none()


async def release_idempotency_key(
    engine: AsyncEngine, api_key_id: str, key: str, created_at: datetime | None = None
) -> None:
    """Drops an unanswered claim, so that a retry can run the request."""
    condition = [
        _idempotency.c.api_key_id == api_key_id,
        _idempotency.c.idempotency_key == key,
        _idempotency.c.response.is_(None),
    ]
    if created_at is not None:
        condition.append(_idempotency.c.created_at == created_at)
    async with engine.begin() as conn:
        await conn.execute(delete(_idempotency).where(*condition))


async def decision_page(
    conn: AsyncConnection,
    operator_id: str,
    limit: int,
    before: tuple[datetime, str] | None,
    decision: str | None,
    since: datetime | None,
) -> list[Row[Any]]:
    query = select(_decisions).where(_decisions.c.operator_id == operator_id)
    if decision is not None:
        query = query.where(_decisions.c.decision == decision)
    if since is not None:
        query = query.where(_decisions.c.evaluated_at >= since)
    if before is not None:
        at, decision_id = before
        query = query.where(
            or_(
                _decisions.c.evaluated_at < at,
                and_(_decisions.c.evaluated_at == at, _decisions.c.decision_id < decision_id),
            )
        )
    query = query.order_by(_decisions.c.evaluated_at.desc(), _decisions.c.decision_id.desc())
    return list((await conn.execute(query.limit(limit + 1))).all())


# decision_id, operator_id, assessment_name, outcome, outcome_reasons
OutcomeTarget = Row[Any, Any, Any, Any, Any]


async def decision_for_update(conn: AsyncConnection, decision_id: str) -> OutcomeTarget | None:
    query = (
        select(
            _decisions.c.decision_id,
            _decisions.c.operator_id,
            _decisions.c.assessment_name,
            _decisions.c.outcome,
            _decisions.c.outcome_reasons,
        )
        .where(_decisions.c.decision_id == decision_id)
        .with_for_update()
    )
    return (await conn.execute(query)).one_or_none()


async def record_outcome(
    conn: AsyncConnection,
    decision: OutcomeTarget,
    outcome: str,
    reasons: Sequence[str],
    now: datetime,
) -> None:
    """Sets the decision's outcome and queues its annotation, superseding an undelivered one."""
    await conn.execute(
        update(_decisions)
        .where(_decisions.c.decision_id == decision.decision_id)
        .values(outcome=outcome, outcome_reasons=list(reasons), outcome_at=now)
    )
    await conn.execute(
        update(_outbox)
        .where(_outbox.c.decision_id == decision.decision_id, _outbox.c.status == "pending")
        .values(status="superseded")
    )
    await conn.execute(
        insert(_outbox).values(
            decision_id=decision.decision_id,
            operator_id=decision.operator_id,
            assessment_name=decision.assessment_name,
            annotation=outcome.upper(),
            reasons=[r.upper() for r in reasons],
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


async def due_annotations(engine: AsyncEngine, now: datetime, limit: int) -> list[Row[Any]]:
    query = (
        select(_outbox)
        .where(_outbox.c.status == "pending", _outbox.c.next_attempt_at <= now)
        .order_by(_outbox.c.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def lease_annotation(engine: AsyncEngine, row: Row[Any], until: datetime) -> bool:
    """Takes one delivery attempt for this replica; False when another replica took it."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(_outbox)
            .where(
                _outbox.c.id == row.id,
                _outbox.c.status == "pending",
                _outbox.c.next_attempt_at == row.next_attempt_at,
            )
            .values(next_attempt_at=until)
        )
    return result.rowcount == 1


async def release_annotation(engine: AsyncEngine, outbox_id: int, leased_until: datetime) -> None:
    """Gives back a lease this replica still holds, so the annotation is due at once."""
    async with engine.begin() as conn:
        await conn.execute(
            update(_outbox)
            .where(
                _outbox.c.id == outbox_id,
                _outbox.c.status == "pending",
                _outbox.c.next_attempt_at == leased_until,
            )
            .values(next_attempt_at=utcnow())
        )


async def finish_annotation(engine: AsyncEngine, outbox_id: int, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(_outbox).where(_outbox.c.id == outbox_id).values(**values))


async def pending_annotations(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(_outbox).where(_outbox.c.status == "pending")
        )
    return int(count or 0)


async def purge_expired(engine: AsyncEngine, now: datetime) -> None:
    """Forgets replay claims and idempotency records past the 24 h the contract promises."""
    async with engine.begin() as conn:
        await conn.execute(delete(_claims).where(_claims.c.claimed_at < now - RETENTION))
        await conn.execute(delete(_idempotency).where(_idempotency.c.created_at < now - RETENTION))
