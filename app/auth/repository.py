"""SQL for API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth.keys import Role, hash_api_key, new_api_key, new_key_id
from app.auth.models import ApiKey
from app.db import table_of

_api_keys = table_of(ApiKey)


async def insert_key(
    conn: AsyncConnection,
    name: str,
    role: Role,
    operator_ids: list[str] | None,
    expires_at: datetime | None,
    now: datetime,
) -> tuple[str, str]:
    """Stores a new key's hash; returns (id, the key itself) — the only time it is seen."""
    raw_key = new_api_key()
    key_id = new_key_id()
    await conn.execute(
        insert(_api_keys).values(
            id=key_id,
            name=name,
            role=role.value,
            operator_ids=operator_ids,
            key_sha256=hash_api_key(raw_key),
            created_at=now,
            expires_at=expires_at,
        )
    )
    return key_id, raw_key


async def revoke_key(conn: AsyncConnection, key_id: str, now: datetime) -> bool:
    result = await conn.execute(
        update(_api_keys)
        .where(_api_keys.c.id == key_id, _api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount > 0
