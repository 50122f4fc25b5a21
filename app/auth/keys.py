"""API keys: their format, their hash, who they are, and a short-lived lookup cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.models import ApiKey
from app.cache import RefreshingCache
from app.db import table_of, utcnow

KEY_PREFIX = "cg_"
BOOTSTRAP_ACTOR = "bootstrap"
CLI_ACTOR = "cli"


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    OPERATOR_ADMIN = "operator_admin"
    BACKEND = "backend"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    # None: every operator.
    operator_ids: frozenset[str] | None

    def may_act_for(self, operator_id: str) -> bool:
        if self.role is Role.PLATFORM_ADMIN or self.operator_ids is None:
            return True
        return operator_id in self.operator_ids


def new_api_key() -> str:
    """`cg_` + 43 base64url characters (32 random bytes): matchable by secret scanners."""
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(10)


def hash_api_key(raw_key: str) -> str:
    # The keys carry 256 random bits, so a fast hash is enough; no stretching is needed.
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _KeyRecord:
    principal: Principal
    expires_at: datetime | None


class ApiKeyCache:
    """Resolves bearer keys to principals; a revocation is seen within 1.5 times `ttl` seconds."""

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        engine: AsyncEngine,
        ttl: float,
        bootstrap_key: SecretStr | None,
        stale: float = 0.0,
    ) -> None:
        self._engine = engine
        self._bootstrap_sha = (
            hashlib.sha256(bootstrap_key.get_secret_value().encode()).digest()
            if bootstrap_key
            else None
        )
        self._records: RefreshingCache[str, _KeyRecord | None] = RefreshingCache(
            self._load, ttl=ttl, grace=ttl / 2, max_entries=self.MAX_ENTRIES, stale=stale
        )

    async def principal_for(self, raw_key: str) -> Principal | None:
        if self._bootstrap_sha is not None and hmac.compare_digest(
            hashlib.sha256(raw_key.encode()).digest(), self._bootstrap_sha
        ):
            return Principal(BOOTSTRAP_ACTOR, Role.PLATFORM_ADMIN, None)
        if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 100:
            return None
        record = await self._records.get(hash_api_key(raw_key))
        if record is None:
            return None
        if record.expires_at is not None and utcnow() >= record.expires_at:
            return None
        return record.principal

    async def _load(self, key_sha: str) -> _KeyRecord | None:
        table = table_of(ApiKey)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        table.c.id, table.c.role, table.c.operator_ids, table.c.expires_at
                    ).where(table.c.key_sha256 == key_sha, table.c.revoked_at.is_(None))
                )
            ).one_or_none()
        if row is None:
            return None
        operator_ids = None if row.operator_ids is None else frozenset(row.operator_ids)
        return _KeyRecord(Principal(row.id, Role(row.role), operator_ids), row.expires_at)
