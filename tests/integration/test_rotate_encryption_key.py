"""`chargegate rotate-encryption-key`: credentials re-sealed under the first key of the ring.

The command is run as operators run it (the installed `chargegate` entry point in a
subprocess, configured by environment only); afterwards a service whose ring holds the new
key alone must still authorize with the same Google credentials.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sqlite3
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from app.cli import migrate
from app.credentials import rotate as rotation
from app.credentials import store
from app.credentials.crypto import KeyRing, KeyRingError
from app.db import create_engine
from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    ADMIN,
    BOOTSTRAP_KEY,
    GOOGLE,
    PROJECT,
    Gate,
    assessment_json,
    bearer,
    bearer_jwt_claims,
    running,
)
from tests.integration.test_secrets import pg_dump


def ring_entry(kid: str) -> str:
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


OLD = ring_entry("old")
NEW = ring_entry("new")
GONE = ring_entry("gone")
GOOGLE_API_KEY = "AIzaSyD-rotation-test-api-key-0123456789"
CHARGEGATE = Path(sys.executable).with_name("chargegate")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def rotate_cli(keys: str, var_dir: Path, database_url: str | None) -> Run:
    """`chargegate rotate-encryption-key` as an operator runs it: configured by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGATE_")}
    env["CHARGEGATE_ENCRYPTION_KEYS"] = keys
    env["CHARGEGATE_VAR_DIR"] = str(var_dir)
    if database_url is not None:
        env["CHARGEGATE_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        str(CHARGEGATE),
        "rotate-encryption-key",
        env=env,
        cwd=var_dir.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def secrets_of(service_account: dict[str, str]) -> list[str]:
    """Strings whose presence anywhere means a secret leaked (each PEM line, the API key)."""
    lines = [
        line
        for line in service_account["private_key"].splitlines()
        if line and not line.startswith("-----")
    ]
    return [*lines, GOOGLE_API_KEY]


def assert_no_secret(text: str, service_account: dict[str, str]) -> None:
    leaked = [s[:12] + "…" for s in secrets_of(service_account) if s in text]
    assert leaked == []
    assert "PRIVATE KEY" not in text


async def configure(
    client: httpx.AsyncClient, service_account: dict[str, str]
) -> dict[str, dict[str, str]]:
    """acme with a service account, beta with an API key, both protected; their backend keys."""
    gate = Gate(client)
    await gate.protected_operator(service_account, "acme")
    await gate.protected_operator({"type": "api_key", "api_key": GOOGLE_API_KEY}, "beta")
    return {
        operator_id: bearer((await gate.create_key("backend", [operator_id]))["key"])
        for operator_id in ("acme", "beta")
    }


async def assert_authorizes(
    client: httpx.AsyncClient,
    google: respx.MockRouter,
    backends: dict[str, dict[str, str]],
    service_account: dict[str, str],
) -> None:
    """Both operators get `allow`, Google seeing the very credentials that were uploaded."""
    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )
    for operator_id, headers in backends.items():
        response = await client.post(
            "/sessions/authorize",
            json={"operator_id": operator_id, "token": f"tok-{secrets.token_hex(8)}"},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["decision"] == "allow", response.text
        assert response.json()["upstream_error"] is None
        request = route.calls.last.request
        if operator_id == "acme":
            claims = bearer_jwt_claims(
                request.headers["authorization"], service_account["private_key"]
            )
            assert claims["iss"] == service_account["client_email"]
        else:
            assert request.headers["x-goog-api-key"] == GOOGLE_API_KEY
    assert route.call_count == len(backends)


async def pg_rows(database_url: str) -> dict[str, tuple[str, bytes]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT operator_id, key_id, sealed FROM credentials")
    finally:
        await conn.close()
    return {r["operator_id"]: (r["key_id"], bytes(r["sealed"])) for r in rows}


async def cli_audit_entries(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT operator_id FROM audit_log WHERE actor = 'cli'")
    finally:
        await conn.close()
    return sorted(r["operator_id"] for r in rows)


# ---------------------------------------------------------------------------
# PostgreSQL.


async def test_rotation_moves_every_credential_to_the_new_key(
    make_settings: Any,
    google: respx.MockRouter,
    service_account: dict[str, str],
    database: str,
    tmp_path: Path,
) -> None:
    async with running(create_app(make_settings(encryption_keys=OLD))) as client:
        backends = await configure(client, service_account)
        uploaded = {
            operator_id: (await client.get(f"/operators/{operator_id}/credentials", headers=ADMIN))
            .raise_for_status()
            .json()
            for operator_id in ("acme", "beta")
        }
    before = await pg_rows(database)
    assert {kid for kid, _ in before.values()} == {"old"}

    run = await rotate_cli(f"{NEW},{OLD}", tmp_path / "var", database)
    assert run.returncode == 0, run.output
    assert "re-encrypted 2, already current 0, failed 0" in run.stdout
    assert_no_secret(run.output, service_account)
    assert NEW.split(":")[1] not in run.output
    assert OLD.split(":")[1] not in run.output

    after = await pg_rows(database)
    new_ring, old_ring = KeyRing.parse(NEW), KeyRing.parse(OLD)
    for operator_id in ("acme", "beta"):
        key_id, sealed = after[operator_id]
        assert key_id == "new"
        assert sealed != before[operator_id][1]
        # Same secret as before, still bound to its operator, no longer opened by the old key.
        assert new_ring.open(key_id, sealed, operator_id.encode()) == old_ring.open(
            "old", before[operator_id][1], operator_id.encode()
        )
        with pytest.raises(KeyRingError):
            new_ring.open(key_id, sealed, b"someone-else")
        with pytest.raises(KeyRingError):
            old_ring.open("old", sealed, operator_id.encode())
    assert_no_secret(await pg_dump(database), service_account)
    assert await cli_audit_entries(database) == ["acme", "beta"]

    # A service that holds the new key alone decrypts them and authorizes.
    async with running(create_app(make_settings(encryption_keys=NEW))) as client:
        await assert_authorizes(client, google, backends, service_account)
        for operator_id in ("acme", "beta"):
            log = await client.get(f"/operators/{operator_id}/audit-log", headers=ADMIN)
            assert log.status_code == 200, log.text
            assert_no_secret(log.text, service_account)
            newest = log.json()["items"][0]
            assert newest["actor"] == "cli"
            assert newest["action"] == "credentials.replaced"
            # The secret did not change: neither did its public metadata.
            assert newest["changes"] == {
                "credentials": {"old": uploaded[operator_id], "new": uploaded[operator_id]}
            }
            current = await client.get(f"/operators/{operator_id}/credentials", headers=ADMIN)
            assert current.json() == uploaded[operator_id]

    # Idempotent: a second run re-encrypts nothing and leaves every byte as it was.
    again = await rotate_cli(f"{NEW},{OLD}", tmp_path / "var", database)
    assert again.returncode == 0, again.output
    assert "re-encrypted 0, already current 2, failed 0" in again.stdout
    assert await pg_rows(database) == after
    assert await cli_audit_entries(database) == ["acme", "beta"]


async def test_a_credential_the_ring_cannot_open_fails_the_command_and_stays_as_it_was(
    make_settings: Any, service_account: dict[str, str], database: str, tmp_path: Path
) -> None:
    async with running(create_app(make_settings(encryption_keys=OLD))) as client:
        gate = Gate(client)
        await gate.create_operator("acme")
        await gate.put_credentials("acme", service_account)
        await gate.create_operator("moved")
        await gate.put_credentials("moved", {"type": "api_key", "api_key": "AIza-moved-key"})
    async with running(create_app(make_settings(encryption_keys=GONE))) as client:
        gate = Gate(client)
        await gate.create_operator("beta")
        await gate.put_credentials("beta", {"type": "api_key", "api_key": GOOGLE_API_KEY})
    # acme's sealed secret copied onto another operator: the key is in the ring, but the
    # binding to the operator makes it fail to authenticate.
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "UPDATE credentials SET sealed ="
            " (SELECT sealed FROM credentials WHERE operator_id = 'acme')"
            " WHERE operator_id = 'moved'"
        )
    finally:
        await conn.close()
    before = await pg_rows(database)

    run = await rotate_cli(f"{NEW},{OLD}", tmp_path / "var", database)
    assert run.returncode == 1, run.output
    assert "re-encrypted 1, already current 0, failed 2" in run.stdout
    failures = [line for line in run.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 2
    assert failures[0].startswith("failed: beta: ")
    assert "gone" in failures[0]
    assert failures[1].startswith("failed: moved: ")
    assert "does not authenticate" in failures[1]
    assert_no_secret(run.output, service_account)
    assert "AIza-moved-key" not in run.output

    after = await pg_rows(database)
    assert after["beta"] == before["beta"]
    assert after["moved"] == before["moved"]
    assert after["acme"][0] == "new"
    assert await cli_audit_entries(database) == ["acme"]

    # Once the missing key is back in the ring, a second run finishes the job.
    again = await rotate_cli(f"{NEW},{OLD},{GONE}", tmp_path / "var", database)
    assert again.returncode == 1, again.output
    assert "re-encrypted 1, already current 1, failed 1" in again.stdout
    assert (await pg_rows(database))["beta"][0] == "new"


async def test_a_credential_uploaded_during_the_rotation_is_not_overwritten(
    make_settings: Any,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(create_app(make_settings(encryption_keys=OLD))) as client:
        gate = Gate(client)
        await gate.create_operator("acme")
        await gate.put_credentials("acme", {"type": "api_key", "api_key": GOOGLE_API_KEY})
    ring = KeyRing.parse(f"{NEW},{OLD}")
    uploaded_meanwhile = store.seal(ring, "acme", {"type": "api_key", "api_key": "AIza-newer"})

    def upload_meanwhile() -> None:
        # What a replica's PUT does between the command's read and its write.
        async def write() -> None:
            conn = await asyncpg.connect(database)
            try:
                await conn.execute(
                    "UPDATE credentials SET key_id = $1, sealed = $2 WHERE operator_id = 'acme'",
                    *uploaded_meanwhile,
                )
            finally:
                await conn.close()

        thread = threading.Thread(target=asyncio.run, args=(write(),))
        thread.start()
        thread.join()

    real_reseal = store.reseal
    calls = 0

    def reseal_racing_an_upload(*args: Any) -> tuple[str, bytes]:
        nonlocal calls
        calls += 1
        result = real_reseal(*args)
        if calls == 1:
            upload_meanwhile()
        return result

    monkeypatch.setattr(store, "reseal", reseal_racing_an_upload)
    engine = create_engine(make_settings(encryption_keys=f"{NEW},{OLD}"))
    try:
        report = await rotation.rotate(engine, ring)
    finally:
        await engine.dispose()

    assert calls == 1
    assert report.reencrypted == []
    assert report.current == ["acme"]
    assert report.failed == []
    assert (await pg_rows(database))["acme"] == uploaded_meanwhile
    assert await cli_audit_entries(database) == []


async def test_the_command_refuses_an_unusable_key_ring(
    make_settings: Any, database: str, tmp_path: Path
) -> None:
    run = await rotate_cli("new:not-base64!", tmp_path / "var", database)
    assert run.returncode == 2
    assert "entry 1 (new) is not valid base64" in run.stderr
    assert "not-base64" not in run.output


# ---------------------------------------------------------------------------
# The embedded SQLite default.


def sqlite_rows(var_dir: Path) -> dict[str, tuple[str, bytes]]:
    with sqlite3.connect(var_dir / "chargegate.db") as conn:
        rows = conn.execute("SELECT operator_id, key_id, sealed FROM credentials").fetchall()
    return {operator_id: (key_id, bytes(sealed)) for operator_id, key_id, sealed in rows}


async def test_rotation_on_embedded_sqlite(
    tmp_path: Path, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    var_dir = tmp_path / "var"

    def settings(keys: str) -> Settings:
        return Settings(
            database_url=None,
            var_dir=var_dir,
            recaptcha_base_url=GOOGLE,
            bootstrap_admin_key=BOOTSTRAP_KEY,
            encryption_keys=keys,
            outbox_poll_seconds=0.1,
        )

    await asyncio.to_thread(migrate, settings(OLD))
    async with running(create_app(settings(OLD))) as client:
        backends = await configure(client, service_account)
    before = sqlite_rows(var_dir)
    assert {kid for kid, _ in before.values()} == {"old"}

    run = await rotate_cli(f"{NEW},{OLD}", var_dir, None)
    assert run.returncode == 0, run.output
    assert "re-encrypted 2, already current 0, failed 0" in run.stdout
    assert_no_secret(run.output, service_account)
    after = sqlite_rows(var_dir)
    assert {kid for kid, _ in after.values()} == {"new"}
    database_file = b"".join(
        path.read_bytes() for path in var_dir.iterdir() if path.name.startswith("chargegate.db")
    )
    for secret in secrets_of(service_account):
        assert secret.encode() not in database_file

    async with running(create_app(settings(NEW))) as client:
        await assert_authorizes(client, google, backends, service_account)

    again = await rotate_cli(f"{NEW},{OLD}", var_dir, None)
    assert again.returncode == 0, again.output
    assert "re-encrypted 0, already current 2, failed 0" in again.stdout
    assert sqlite_rows(var_dir) == after
