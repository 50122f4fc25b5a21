"""`chargegate rotate-encryption-key`: every stored credential re-sealed under the ring's first key.

Safe while the service runs. Each credential is read, re-sealed in memory (same plaintext,
same binding to its operator) and written back in its own short transaction, and only if
the row still holds the sealed bytes that were read: a credential uploaded meanwhile is
never overwritten, it is read again instead. Running replicas need nothing: they cache
decrypted credentials by their sealed bytes, so the next re-read of the row decrypts the
new bytes with the key ring they already hold (the new key must be in every replica's ring
before this runs). A second run finds nothing to do. Nothing secret is ever printed.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import TextIO

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import repository as audit
from app.auth.keys import CLI_ACTOR
from app.credentials import store
from app.credentials.crypto import KeyRing, KeyRingError, load_keyring
from app.credentials.models import StoredCredential
from app.db import create_engine, table_of
from app.settings import Settings

# API.md's audit actions are policy.updated, credentials.replaced and credentials.deleted
# (AuditEntryOut allows no other): a re-encryption is recorded as a replacement by "cli"
# whose old and new metadata are the same, since the secret itself did not change.
AUDIT_ACTION = "credentials.replaced"
# A credential that changes under us this many times in a row is reported, not chased.
MAX_ATTEMPTS = 5

_credentials = table_of(StoredCredential)


@dataclass
class RotationReport:
    primary_id: str
    reencrypted: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    # (operator id, why): the reason names key ids at most, never key material.
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"re-encrypted {len(self.reencrypted)}, already current {len(self.current)}, "
            f"failed {len(self.failed)} (encrypting key: {self.primary_id})"
        ]
        lines += [f"failed: {operator_id}: {why}" for operator_id, why in self.failed]
        return "\n".join(lines)


async def rotate(engine: AsyncEngine, keyring: KeyRing) -> RotationReport:
    """Re-seals every credential not yet under `keyring.primary_id`."""
    report = RotationReport(keyring.primary_id)
    async with engine.connect() as conn:
        operator_ids = list(
            (
                await conn.execute(
                    select(_credentials.c.operator_id).order_by(_credentials.c.operator_id)
                )
            ).scalars()
        )
    for operator_id in operator_ids:
        await _rotate_one(engine, keyring, operator_id, report)
    return report


async def _rotate_one(
    engine: AsyncEngine, keyring: KeyRing, operator_id: str, report: RotationReport
) -> None:
    for _ in range(MAX_ATTEMPTS):
        # Read outside any write transaction: the write below is one short compare-and-set.
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(_credentials.c.key_id, _credentials.c.sealed, _credentials.c.meta).where(
                        _credentials.c.operator_id == operator_id
                    )
                )
            ).one_or_none()
        if row is None:
            return  # deleted meanwhile: nothing left to re-encrypt
        old_key_id, old_sealed = row.key_id, bytes(row.sealed)
        if old_key_id == keyring.primary_id:
            report.current.append(operator_id)
            return
        try:
            new_key_id, new_sealed = store.reseal(keyring, operator_id, old_key_id, old_sealed)
        except KeyRingError as exc:
            report.failed.append((operator_id, str(exc)))
            return
        async with engine.begin() as conn:
            result = await conn.execute(
                update(_credentials)
                .where(
                    _credentials.c.operator_id == operator_id,
                    _credentials.c.key_id == old_key_id,
                    _credentials.c.sealed == old_sealed,
                )
                .values(key_id=new_key_id, sealed=new_sealed)
            )
            if result.rowcount == 1:
                await audit.record(
                    conn,
                    operator_id,
                    CLI_ACTOR,
                    AUDIT_ACTION,
                    {"credentials": {"old": row.meta, "new": row.meta}},
                )
                report.reencrypted.append(operator_id)
                return
        # Replaced (or deleted) between the read and the write: look again.
    report.failed.append(
        (operator_id, f"changed concurrently {MAX_ATTEMPTS} times in a row; run the command again")
    )


async def _run(settings: Settings, keyring: KeyRing) -> RotationReport:
    engine = create_engine(settings)
    try:
        return await rotate(engine, keyring)
    finally:
        await engine.dispose()


def main(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The command: 0 when every credential is under the first key, 1 if any is not."""
    try:
        keyring = load_keyring(settings)
    except KeyRingError as exc:
        print(f"chargegate rotate-encryption-key: {exc}", file=err)
        return 2
    report = asyncio.run(_run(settings, keyring))
    print(report.summary(), file=out)
    if not report.ok:
        print(
            "Some credentials could not be re-encrypted: keep the keys they need in "
            "CHARGEGATE_ENCRYPTION_KEYS (or upload them again) before removing any key.",
            file=err,
        )
        return 1
    return 0
