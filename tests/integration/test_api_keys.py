"""API keys: creation, format, storage as a hash, validation, revocation, expiry, bootstrap, CLI."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.cli import main as cli_main
from tests.conftest import (
    ADMIN,
    BOOTSTRAP_KEY,
    ENCRYPTION_KEYS,
    Gate,
    bearer,
    count_rows,
    eventually,
)
from tests.conftest import (
    assert_problem as problem,
)

KEY_SHAPE = re.compile(r"^cg_[A-Za-z0-9_-]{43}$")
ID_SHAPE = re.compile(r"^key_[A-Za-z0-9_-]+$")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    body = problem(response, status)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    return body


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def api_key_rows(database: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT row_to_json(k)::text AS text, k.* FROM api_keys k")
    finally:
        await conn.close()
    return [dict(r) for r in rows]


@pytest.fixture
async def acme(gate: Gate) -> Gate:
    await gate.create_operator("acme")
    return gate


async def works_for(client: httpx.AsyncClient, role: str, key: str) -> bool:
    """Whether `key` can do what its role may do for acme."""
    headers = bearer(key)
    if role == "platform_admin":
        response = await client.get("/operators", headers=headers)
    elif role == "operator_admin":
        response = await client.get("/operators/acme/policy", headers=headers)
    else:
        response = await client.post(
            "/sessions/authorize", json={"operator_id": "acme"}, headers=headers
        )
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        return False
    assert response.status_code == 200, response.text
    return True


# ---------------------------------------------------------------------------
# Creation.


@pytest.mark.parametrize(
    ("role", "operator_ids"),
    [
        ("platform_admin", None),
        ("operator_admin", ["acme"]),
        ("backend", ["acme"]),
        ("backend", None),
    ],
)
async def test_create_key_answers_201_with_a_key_that_works_at_once(
    acme: Gate, role: str, operator_ids: list[str] | None
) -> None:
    response = await acme.client.post(
        "/api-keys",
        json={"name": f"{role} key", "role": role, "operator_ids": operator_ids},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "key", "name", "role", "operator_ids", "created_at", "expires_at"}
    assert KEY_SHAPE.match(body["key"]), body["key"]
    assert ID_SHAPE.match(body["id"]), body["id"]
    assert body["name"] == f"{role} key"
    assert body["role"] == role
    assert body["operator_ids"] == operator_ids
    assert body["expires_at"] is None
    created = datetime.fromisoformat(body["created_at"])
    assert body["created_at"].endswith("Z")
    assert abs(datetime.now(UTC) - created) < timedelta(seconds=30)
    assert await works_for(acme.client, role, body["key"])


async def test_every_key_and_id_is_different(acme: Gate) -> None:
    keys = [await acme.create_key("backend", ["acme"]) for _ in range(5)]
    assert len({k["key"] for k in keys}) == 5
    assert len({k["id"] for k in keys}) == 5


async def test_a_key_is_stored_only_as_a_hash(acme: Gate, database: str) -> None:
    created = await acme.create_key("operator_admin", ["acme"])
    [row] = await api_key_rows(database)
    assert row["id"] == created["id"]
    assert created["key"] not in row["text"]
    assert created["key"][3:] not in row["text"]
    assert created["key"][3:25] not in row["text"]


async def test_expires_at_is_stored_and_answered_in_utc(acme: Gate) -> None:
    response = await acme.client.post(
        "/api-keys",
        json={
            "name": "expiring",
            "role": "backend",
            "operator_ids": ["acme"],
            "expires_at": "2030-06-01T02:00:00+02:00",
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"] == "2030-06-01T00:00:00Z"


async def test_operator_ids_may_list_several_operators(acme: Gate) -> None:
    await acme.create_operator("other")
    key = await acme.create_key("operator_admin", ["acme", "other"])
    assert sorted(key["operator_ids"]) == ["acme", "other"]
    for operator in ("acme", "other"):
        response = await acme.client.get(
            f"/operators/{operator}/policy", headers=bearer(key["key"])
        )
        assert response.status_code == 200


INVALID_BODIES = [
    pytest.param({"name": "k", "role": "superuser", "operator_ids": None}, id="unknown-role"),
    pytest.param({"name": "k", "role": "Backend", "operator_ids": ["acme"]}, id="role-wrong-case"),
    pytest.param({"name": "k", "role": 1, "operator_ids": ["acme"]}, id="role-number"),
    pytest.param({"name": "k", "role": "backend", "operator_ids": []}, id="empty-operator-list"),
    pytest.param({"name": "k", "role": "backend", "operator_ids": ["nope"]}, id="unknown-operator"),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme", "nope"]},
        id="one-unknown-operator",
    ),
    pytest.param({"name": "k", "role": "backend", "operator_ids": ["ACME"]}, id="bad-operator-id"),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": "acme"}, id="operator-ids-string"
    ),
    pytest.param(
        {"name": "k", "role": "operator_admin", "operator_ids": None}, id="operator-admin-all"
    ),
    pytest.param(
        {
            "name": "k",
            "role": "backend",
            "operator_ids": ["acme"],
            "expires_at": "2020-01-01T00:00:00Z",
        },
        id="expires-in-the-past",
    ),
    pytest.param(
        {
            "name": "k",
            "role": "backend",
            "operator_ids": ["acme"],
            "expires_at": "2030-01-01T00:00:00",
        },
        id="expires-naive",
    ),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme"], "expires_at": "next year"},
        id="expires-garbage",
    ),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme"], "expires_at": 1893456000},
        id="expires-number",
    ),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme"], "expires_at": "1893456000"},
        id="expires-unix-time-string",
    ),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme"], "expires_at": "2030-01-01"},
        id="expires-date-only",
    ),
    pytest.param({"role": "backend", "operator_ids": ["acme"]}, id="no-name"),
    pytest.param({"name": "", "role": "backend", "operator_ids": ["acme"]}, id="empty-name"),
    pytest.param(
        {"name": "a\u0000b", "role": "backend", "operator_ids": ["acme"]}, id="nul-in-name"
    ),
    pytest.param({"name": "x" * 201, "role": "backend", "operator_ids": ["acme"]}, id="long-name"),
    pytest.param({"name": "k", "operator_ids": ["acme"]}, id="no-role"),
    pytest.param(
        {"name": "k", "role": "backend", "operator_ids": ["acme"], "scopes": []}, id="unknown-field"
    ),
]


@pytest.mark.parametrize("body", INVALID_BODIES)
async def test_invalid_key_requests_are_422_and_create_nothing(
    acme: Gate, database: str, body: dict[str, Any]
) -> None:
    response = await acme.client.post("/api-keys", json=body, headers=ADMIN)
    assert_problem(response, 422)
    assert await count_rows(database, "api_keys") == 0


async def test_a_key_just_expiring_is_refused(acme: Gate) -> None:
    expires = datetime.now(UTC) - timedelta(milliseconds=1)
    response = await acme.client.post(
        "/api-keys",
        json={
            "name": "k",
            "role": "backend",
            "operator_ids": ["acme"],
            "expires_at": rfc3339(expires),
        },
        headers=ADMIN,
    )
    body = assert_problem(response, 422)
    assert "expires_at" in body["detail"]


# ---------------------------------------------------------------------------
# Revocation.


async def test_revoked_key_is_refused_within_two_seconds(acme: Gate) -> None:
    key = await acme.create_key("operator_admin", ["acme"])
    assert await works_for(acme.client, "operator_admin", key["key"])
    response = await acme.client.delete(f"/api-keys/{key['id']}", headers=ADMIN)
    assert response.status_code == 204
    assert response.content == b""

    async def refused() -> bool:
        return not await works_for(acme.client, "operator_admin", key["key"])

    await eventually(refused, 2.0)
    assert_problem(await acme.client.get("/operators/acme/policy", headers=bearer(key["key"])), 401)


async def test_revoking_one_key_leaves_the_others_working(acme: Gate) -> None:
    revoked = await acme.create_key("backend", ["acme"])
    kept = await acme.create_key("backend", ["acme"])
    assert (
        await acme.client.delete(f"/api-keys/{revoked['id']}", headers=ADMIN)
    ).status_code == 204
    await asyncio.sleep(1.2)
    assert await works_for(acme.client, "backend", kept["key"])
    assert not await works_for(acme.client, "backend", revoked["key"])


async def test_revoking_twice_is_404(acme: Gate, database: str) -> None:
    key = await acme.create_key("backend", ["acme"])
    assert (await acme.client.delete(f"/api-keys/{key['id']}", headers=ADMIN)).status_code == 204
    assert_problem(await acme.client.delete(f"/api-keys/{key['id']}", headers=ADMIN), 404)
    [row] = await api_key_rows(database)
    assert row["revoked_at"] is not None


@pytest.mark.parametrize("key_id", ["key_0000000000000000dead", "bootstrap", "x" * 40])
async def test_revoking_an_unknown_id_is_404(acme: Gate, key_id: str) -> None:
    assert_problem(await acme.client.delete(f"/api-keys/{key_id}", headers=ADMIN), 404)


async def test_the_bootstrap_key_cannot_be_revoked(acme: Gate) -> None:
    await acme.client.delete("/api-keys/bootstrap", headers=ADMIN)
    assert (await acme.client.get("/operators", headers=ADMIN)).status_code == 200


async def test_a_key_can_revoke_itself_only_if_platform_admin(acme: Gate) -> None:
    admin = await acme.create_key("platform_admin", None)
    response = await acme.client.delete(f"/api-keys/{admin['id']}", headers=bearer(admin["key"]))
    assert response.status_code == 204

    async def refused() -> bool:
        return not await works_for(acme.client, "platform_admin", admin["key"])

    await eventually(refused, 2.0)


# ---------------------------------------------------------------------------
# Expiry.


async def test_a_key_works_until_it_expires_then_is_401(acme: Gate) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    key = await acme.create_key("operator_admin", ["acme"], expires_at=rfc3339(expires))
    assert key["expires_at"] == rfc3339(expires)
    assert await works_for(acme.client, "operator_admin", key["key"])
    await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    response = await acme.client.get("/operators/acme/policy", headers=bearer(key["key"]))
    assert_problem(response, 401)


async def test_an_expired_key_cannot_be_used_from_the_cache(acme: Gate) -> None:
    # Used a moment before expiry (so the lookup is cached), refused right after it.
    expires = datetime.now(UTC) + timedelta(seconds=0.6)
    key = await acme.create_key("backend", ["acme"], expires_at=rfc3339(expires))
    assert await works_for(acme.client, "backend", key["key"])
    await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    assert not await works_for(acme.client, "backend", key["key"])


# ---------------------------------------------------------------------------
# Bootstrap and the CLI.


async def test_the_bootstrap_key_acts_as_platform_admin(gate: Gate) -> None:
    response = await gate.client.post(
        "/operators", json={"operator_id": "boot", "name": "Boot"}, headers=bearer(BOOTSTRAP_KEY)
    )
    assert response.status_code == 201
    assert (await gate.client.get("/operators", headers=bearer(BOOTSTRAP_KEY))).status_code == 200
    key = await gate.create_key("backend", None)
    assert (
        await gate.client.delete(f"/api-keys/{key['id']}", headers=bearer(BOOTSTRAP_KEY))
    ).status_code == 204
    policy = await gate.client.get("/operators/boot/policy", headers=bearer(BOOTSTRAP_KEY))
    assert policy.json()["updated_by"] == "bootstrap"


async def test_without_a_bootstrap_setting_its_value_is_unknown(make_settings: Any) -> None:
    from app.main import create_app
    from tests.conftest import running

    async with running(create_app(make_settings(bootstrap_admin_key=None))) as client:
        assert_problem(await client.get("/operators", headers=bearer(BOOTSTRAP_KEY)), 401)


async def test_a_near_miss_of_the_bootstrap_key_is_401(gate: Gate) -> None:
    for near in (BOOTSTRAP_KEY + "x", BOOTSTRAP_KEY[:-1], BOOTSTRAP_KEY.upper()):
        assert_problem(await gate.client.get("/operators", headers=bearer(near)), 401)


async def test_create_admin_key_cli_prints_a_working_platform_admin_key(
    gate: Gate,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("CHARGEGATE_DATABASE_URL", database)
    monkeypatch.setenv("CHARGEGATE_ENCRYPTION_KEYS", ENCRYPTION_KEYS)
    monkeypatch.setenv("CHARGEGATE_VAR_DIR", str(tmp_path / "cli-var"))
    monkeypatch.delenv("CHARGEGATE_BOOTSTRAP_ADMIN_KEY", raising=False)

    # main() runs its own event loop, so it gets a thread of its own.
    assert await asyncio.to_thread(cli_main, ["create-admin-key"]) == 0
    printed = capsys.readouterr().out.strip()
    assert KEY_SHAPE.match(printed), printed

    response = await gate.client.post(
        "/operators", json={"operator_id": "cli-made", "name": "CLI"}, headers=bearer(printed)
    )
    assert response.status_code == 201, response.text
    key = await gate.client.post(
        "/api-keys",
        json={"name": "from cli admin", "role": "backend", "operator_ids": None},
        headers=bearer(printed),
    )
    assert key.status_code == 201

    rows = await api_key_rows(database)
    [cli_row] = [r for r in rows if r["role"] == "platform_admin"]
    assert cli_row["operator_ids"] in (None, "null")  # SQL NULL or JSON null: every operator
    assert cli_row["expires_at"] is None
    assert printed not in cli_row["text"]


# ---------------------------------------------------------------------------
# Malformed Authorization headers are 401, never 500.


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token cg_abc",
        "cg_" + "A" * 43,
        "Bearer cg_" + "A" * 43,
        "Bearer " + "x" * 5000,
        "Bearer cg_" + "é" * 10,
    ],
)
async def test_malformed_or_unknown_authorization_is_401(acme: Gate, authorization: str) -> None:
    response = await acme.client.get(
        "/operators", headers=[(b"Authorization", authorization.encode("latin-1"))]
    )
    assert_problem(response, 401)


async def test_the_bearer_scheme_is_case_insensitive(acme: Gate) -> None:
    key = await acme.create_key("platform_admin", None)
    response = await acme.client.get(
        "/operators", headers={"Authorization": f"bearer {key['key']}"}
    )
    assert response.status_code == 200
