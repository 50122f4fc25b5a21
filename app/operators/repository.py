"""SQL for operators, their policies and their credential rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.credentials.models import StoredCredential
from app.db import table_of
from app.operators.models import Operator, Policy

_operators = table_of(Operator)
_policies = table_of(Policy)
_credentials = table_of(StoredCredential)


async def create_operator(
    conn: AsyncConnection,
    operator_id: str,
    name: str,
    policy: dict[str, Any],
    now: datetime,
    actor: str,
) -> bool:
    """False when the operator exists already."""
    try:
        async with conn.begin_nested():
            await conn.execute(
                insert(_operators).values(operator_id=operator_id, name=name, created_at=now)
            )
    except IntegrityError:
        return False
    await conn.execute(
        insert(_policies).values(
            operator_id=operator_id, version=1, updated_at=now, updated_by=actor, **policy
        )
    )
    return True


async def operator_page(conn: AsyncConnection, limit: int, after: str | None) -> list[Row[Any]]:
    query = select(_operators)
    if after is not None:
        query = query.where(_operators.c.operator_id > after)
    result = await conn.execute(query.order_by(_operators.c.operator_id).limit(limit + 1))
    return list(result.all())


async def operator_exists(conn: AsyncConnection, operator_id: str) -> bool:
    query = select(_operators.c.operator_id).where(_operators.c.operator_id == operator_id)
    return (await conn.execute(query)).first() is not None


async def policy_row(
    conn: AsyncConnection, operator_id: str, *, for_update: bool = False
) -> Row[Any] | None:
    query = select(_policies).where(_policies.c.operator_id == operator_id)
    if for_update:
        query = query.with_for_update()
    return (await conn.execute(query)).one_or_none()


async def save_policy(
    conn: AsyncConnection,
    operator_id: str,
    values: dict[str, Any],
    version: int,
    now: datetime,
    actor: str,
) -> None:
    await conn.execute(
        update(_policies)
        .where(_policies.c.operator_id == operator_id)
        .values(version=version, updated_at=now, updated_by=actor, **values)
    )


async def credential_meta(conn: AsyncConnection, operator_id: str) -> dict[str, Any] | None:
    query = select(_credentials.c.meta).where(_credentials.c.operator_id == operator_id)
    meta: dict[str, Any] | None = (await conn.execute(query)).scalar_one_or_none()
    return meta


async def put_credential(
    conn: AsyncConnection,
    operator_id: str,
    kind: str,
    meta: dict[str, Any],
    key_id: str,
    sealed: bytes,
    now: datetime,
) -> None:
    await conn.execute(delete(_credentials).where(_credentials.c.operator_id == operator_id))
    await conn.execute(
        insert(_credentials).values(
            operator_id=operator_id,
            type=kind,
            meta=meta,
            key_id=key_id,
            sealed=sealed,
            updated_at=now,
        )
    )


async def delete_credential(conn: AsyncConnection, operator_id: str) -> None:
    await conn.execute(delete(_credentials).where(_credentials.c.operator_id == operator_id))
