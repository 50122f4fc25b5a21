"""Shared fixtures: a fresh Postgres database per run, running apps, keys and operators.

Every test gets an empty schema (tables are truncated after each test), apps are
started with their real lifespan, and Google is only ever reached through respx
(`respx.mock(using="httpx")`, which refuses any request no route matches).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI

from app.cli import migrate
from app.main import create_app
from app.models import Base
from app.settings import Settings

PG_ADMIN_DSN = os.environ.get("CHARGEGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
GOOGLE = "https://recaptchaenterprise.test"
PROJECT = "acme-project"
SITE_KEY = "6LcTESTsitekey0000000000000000000000000"
BOOTSTRAP_KEY = "cg_bootstrap-" + secrets.token_urlsafe(24)
# The fields of an authorize answer, as API.md lists them.
AUTHORIZE_RESPONSE_FIELDS = frozenset(
    {
        "decision_id",
        "decision",
        "verdict",
        "reason",
        "score",
        "threshold",
        "mode",
        "policy_version",
        "assessment_name",
        "token_invalid_reason",
        "risk_reasons",
        "upstream_error",
        "evaluated_at",
    }
)
ENCRYPTION_KEYS = "t1:" + base64.b64encode(secrets.token_bytes(32)).decode()


# ---------------------------------------------------------------------------
# The database: one fresh Postgres database for the whole run, built by Alembic.


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"chargegate_test_{os.getpid()}_{secrets.token_hex(3)}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    migrate(_settings(database_url=url, var_dir=Path("var")))
    yield url
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin_sql(statement: str, dsn: str = PG_ADMIN_DSN) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _settings(*, database_url: str, var_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "var_dir": var_dir,
        "recaptcha_base_url": GOOGLE,
        "upstream_timeout_seconds": 1.0,
        "encryption_keys": ENCRYPTION_KEYS,
        "bootstrap_admin_key": BOOTSTRAP_KEY,
        "state_cache_seconds": 1.0,
        "outbox_poll_seconds": 0.1,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """The test database, emptied after the test."""
    yield database_url
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    _admin_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE", database_url)


@pytest.fixture
def make_settings(database: str, tmp_path: Path) -> Any:
    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", database)
        return _settings(var_dir=tmp_path / "var", **overrides)

    return factory


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    result: Settings = make_settings()
    return result


# ---------------------------------------------------------------------------
# Running apps.


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started, and a client that talks to it over ASGI."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://chargegate.test"
        ) as client:
            yield client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://chargegate.test") as c:
        yield c


@pytest.fixture
def google() -> Iterator[respx.MockRouter]:
    """reCAPTCHA Enterprise as respx routes; any request no route matches is an error."""
    with respx.mock(using="httpx", assert_all_called=False) as router:
        # respx sees every httpx client; the test clients talk to the app over ASGI.
        router.route(host__regex=r"^chargegate.*\.test$").pass_through()
        yield router


# ---------------------------------------------------------------------------
# Keys, operators and credentials.


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(BOOTSTRAP_KEY)


@pytest.fixture(scope="session")
def rsa_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def service_account(rsa_private_key_pem: str) -> dict[str, str]:
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": rsa_private_key_pem,
        "client_email": f"chargegate@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/chargegate",
        "universe_domain": "googleapis.com",
    }


@dataclass
class Gate:
    """A client plus helpers for the set-up steps most tests share."""

    client: httpx.AsyncClient

    async def create_operator(self, operator_id: str = "acme", name: str = "ACME Charging") -> None:
        response = await self.client.post(
            "/operators", json={"operator_id": operator_id, "name": name}, headers=ADMIN
        )
        assert response.status_code == 201, response.text

    async def create_key(
        self, role: str, operator_ids: list[str] | None, **extra: Any
    ) -> dict[str, Any]:
        response = await self.client.post(
            "/api-keys",
            json={"name": f"{role} key", "role": role, "operator_ids": operator_ids, **extra},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def put_credentials(self, operator_id: str, credentials: dict[str, Any]) -> None:
        response = await self.client.put(
            f"/operators/{operator_id}/credentials", json=credentials, headers=ADMIN
        )
        assert response.status_code == 200, response.text

    async def set_policy(self, operator_id: str, **fields: Any) -> dict[str, Any]:
        response = await self.client.patch(
            f"/operators/{operator_id}/policy", json=fields, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def protected_operator(
        self, credentials: dict[str, Any], operator_id: str = "acme", **policy: Any
    ) -> None:
        """An operator with credentials and protection enabled (enforce, threshold 0.5)."""
        await self.create_operator(operator_id)
        await self.put_credentials(operator_id, credentials)
        await self.set_policy(
            operator_id, enabled=True, site_key=SITE_KEY, gcp_project_id=PROJECT, **policy
        )


@pytest.fixture
def gate(client: httpx.AsyncClient) -> Gate:
    return Gate(client)


@pytest.fixture
async def backend(gate: Gate, service_account: dict[str, str]) -> dict[str, str]:
    """Headers of a backend key for `acme`, an operator with protection on (enforce, 0.5)."""
    await gate.protected_operator(service_account)
    key = await gate.create_key("backend", ["acme"])
    return bearer(key["key"])


@pytest.fixture
def assessments(google: respx.MockRouter) -> respx.Route:
    """Google's assessment route, answering a valid token with score 0.9."""
    return google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )


def assessment_json(
    *,
    score: float = 0.8999999761581421,
    valid: bool = True,
    invalid_reason: str = "INVALID_REASON_UNSPECIFIED",
    action: str = "start_session",
    hostname: str = "portal.acme.example",
    create_time: str | None = None,
    reasons: list[str] | None = None,
    name: str = "projects/123456789/assessments/abc123",
) -> dict[str, Any]:
    """An assessment as Google really answers (float32 score, camelCase, unused fields)."""
    from datetime import UTC, datetime

    created = create_time or datetime.now(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )
    return {
        "name": name,
        "event": {
            "token": "",
            "siteKey": SITE_KEY,
            "userAgent": "",
            "userIpAddress": "",
            "expectedAction": action,
            "hashedAccountId": "",
        },
        "riskAnalysis": {"score": score, "reasons": reasons or [], "extendedVerdictReasons": []},
        "tokenProperties": {
            "valid": valid,
            "invalidReason": invalid_reason,
            "hostname": hostname,
            "androidPackageName": "",
            "iosBundleId": "",
            "action": action,
            "createTime": created,
        },
    }


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem+json answer with this status; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


def verify_jwt(token: str, public_key: rsa.RSAPublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of an RS256 JWT, after checking its signature."""
    header, claims, signature = token.split(".")
    public_key.verify(
        _unb64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return json.loads(_unb64(header)), json.loads(_unb64(claims))


def bearer_jwt_claims(authorization: str, private_key_pem: str) -> dict[str, Any]:
    """The claims of an `Authorization: Bearer <JWT>` signed by this private key."""
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return verify_jwt(token, key.public_key())[1]


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until `check` held; fails the test when it did not within `within` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            pytest.fail(f"not seen within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def count_rows(database_url: str, table: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        value = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
    finally:
        await conn.close()
    return int(value)
