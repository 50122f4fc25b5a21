"""What authorize needs of an operator (policy + decrypted credentials), cached briefly.

Every replica re-reads an operator once its entry is `ttl` seconds old (serving the old
one at most ttl/2 longer while the re-read runs), so a policy or credential change is in
force everywhere within 1.5 times ttl; the replica that made the change drops its entry at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cache import RefreshingCache
from app.credentials.crypto import KeyRing, KeyRingError
from app.credentials.models import StoredCredential
from app.credentials.store import unseal
from app.credentials.types import GoogleCredential
from app.db import table_of
from app.operators.models import Policy
from app.operators.policy import FailMode, Mode, PolicySnapshot

log = logging.getLogger("chargegate.operators")


@dataclass(frozen=True, slots=True)
class OperatorState:
    operator_id: str
    policy: PolicySnapshot
    credential: GoogleCredential | None
    # Why stored credentials are unusable (e.g. their key left the key ring); never secret.
    credential_error: str | None = None


class OperatorStateCache:
    # The public site-key endpoint lets anyone ask for any operator id: "unknown" answers
    # are cached too, so the cache must not grow with every id a client makes up.
    MAX_ENTRIES = 10_000

    def __init__(
        self, engine: AsyncEngine, keyring: KeyRing, ttl: float, stale: float = 0.0
    ) -> None:
        self._engine = engine
        self._keyring = keyring
        self._cache: RefreshingCache[str, OperatorState | None] = RefreshingCache(
            self._load, ttl=ttl, grace=ttl / 2, max_entries=self.MAX_ENTRIES, stale=stale
        )
        # Unsealing and parsing a key costs more than reading it: keep the parsed one.
        self._unsealed: dict[tuple[str, bytes], GoogleCredential] = {}

    async def get(self, operator_id: str) -> OperatorState | None:
        return await self._cache.get(operator_id)

    def invalidate(self, operator_id: str) -> None:
        self._cache.invalidate(operator_id)

    async def _load(self, operator_id: str) -> OperatorState | None:
        p = table_of(Policy)
        c = table_of(StoredCredential)
        query = (
            select(p, c.c.key_id, c.c.sealed, c.c.meta)
            .select_from(p.outerjoin(c, c.c.operator_id == p.c.operator_id))
            .where(p.c.operator_id == operator_id)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            return None
        policy = PolicySnapshot(
            version=row.version,
            enabled=row.enabled,
            mode=Mode(row.mode),
            score_threshold=row.score_threshold,
            expected_action=row.expected_action,
            allowed_hostnames=tuple(row.allowed_hostnames),
            max_token_age_seconds=row.max_token_age_seconds,
            fail_mode=FailMode(row.fail_mode),
            site_key=row.site_key,
            gcp_project_id=row.gcp_project_id,
            max_authorize_per_minute=row.max_authorize_per_minute,
        )
        credential = None
        if row.sealed is not None:
            memo_key = (operator_id, bytes(row.sealed))
            credential = self._unsealed.get(memo_key)
            if credential is None:
                try:
                    credential = unseal(
                        self._keyring,
                        operator_id,
                        row.key_id,
                        bytes(row.sealed),
                        row.meta["fingerprint"],
                    )
                except KeyRingError as exc:
                    # Like missing credentials (authorize follows fail_mode), not a 500 for
                    # every call: the public site key and the policy stay readable.
                    log.error(
                        "stored credentials cannot be decrypted",
                        extra={"operator_id": operator_id, "error": str(exc)},
                    )
                    return OperatorState(operator_id, policy, None, credential_error=str(exc))
                self._unsealed = {k: v for k, v in self._unsealed.items() if k[0] != operator_id}
                self._unsealed[memo_key] = credential
        return OperatorState(operator_id, policy, credential)
