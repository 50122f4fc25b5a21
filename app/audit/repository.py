"""The change log of policies and credentials."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.models import AuditEntry
from app.db import table_of, utcnow

_audit = table_of(AuditEntry)


async def record(
    conn: AsyncConnection, operator_id: str, actor: str, action: str, changes: dict[str, Any]
) -> None:
    await conn.execute(
        insert(_audit).values(
            operator_id=operator_id, at=utcnow(), actor=actor, action=action, changes=changes
        )
    )


async def page(
    conn: AsyncConnection, operator_id: str, limit: int, before_id: int | None
) -> list[Any]:
    query = select(_audit).where(_audit.c.operator_id == operator_id)
    if before_id is not None:
        query = query.where(_audit.c.id < before_id)
    result = await conn.execute(query.order_by(_audit.c.id.desc()).limit(limit + 1))
    return list(result.all())
