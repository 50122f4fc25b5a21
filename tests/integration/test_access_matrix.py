"""Who may call what: every endpoint of the contract against every kind of caller.

acme and other are two operators; the keys are scoped to one of them (or to all).
Every call targets acme, so a key of `other` must get 403/404 and never acme's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from tests.conftest import ADMIN, GOOGLE, PROJECT, SITE_KEY, Gate, assessment_json, bearer

ASSESSMENT_NAME = "projects/123456789/assessments/matrix0001"
CLIENT_EMAIL_MARKER = "matrix-secret-sa"


@dataclass
class World:
    gate: Gate
    keys: dict[str, dict[str, str]]
    decision_id: str
    victim_key_id: str
    service_account: dict[str, str]


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    # public | backend | operator | platform
    scope: str
    success: int
    body: Callable[[World], Any] | None = None

    def url(self, world: World) -> str:
        return self.path.format(decision_id=world.decision_id, key_id=world.victim_key_id)


ENDPOINTS = [
    Endpoint("site-key", "GET", "/operators/acme/site-key", "public", 200),
    Endpoint("healthz", "GET", "/healthz", "public", 200),
    Endpoint("readyz", "GET", "/readyz", "public", 200),
    Endpoint("metrics", "GET", "/metrics", "public", 200),
    Endpoint(
        "authorize",
        "POST",
        "/sessions/authorize",
        "backend",
        200,
        lambda w: {"operator_id": "acme", "session_ref": "matrix"},
    ),
    Endpoint(
        "outcome",
        "POST",
        "/sessions/{decision_id}/outcome",
        "backend",
        202,
        lambda w: {"outcome": "fraudulent", "reasons": ["chargeback"]},
    ),
    Endpoint("get-policy", "GET", "/operators/acme/policy", "operator", 200),
    Endpoint(
        "put-policy",
        "PUT",
        "/operators/acme/policy",
        "operator",
        200,
        lambda w: {"mode": "monitor"},
    ),
    Endpoint(
        "patch-policy",
        "PATCH",
        "/operators/acme/policy",
        "operator",
        200,
        lambda w: {"mode": "monitor"},
    ),
    Endpoint(
        "put-credentials",
        "PUT",
        "/operators/acme/credentials",
        "operator",
        200,
        lambda w: w.service_account,
    ),
    Endpoint("get-credentials", "GET", "/operators/acme/credentials", "operator", 200),
    Endpoint("delete-credentials", "DELETE", "/operators/acme/credentials", "operator", 204),
    Endpoint("verify-credentials", "POST", "/operators/acme/credentials/verify", "operator", 200),
    Endpoint("decisions", "GET", "/operators/acme/decisions", "operator", 200),
    Endpoint("audit-log", "GET", "/operators/acme/audit-log", "operator", 200),
    Endpoint(
        "create-operator",
        "POST",
        "/operators",
        "platform",
        201,
        lambda w: {"operator_id": "newcomer", "name": "Newcomer"},
    ),
    Endpoint("list-operators", "GET", "/operators", "platform", 200),
    Endpoint(
        "create-api-key",
        "POST",
        "/api-keys",
        "platform",
        201,
        lambda w: {"name": "made in matrix", "role": "backend", "operator_ids": ["acme"]},
    ),
    Endpoint("revoke-api-key", "DELETE", "/api-keys/{key_id}", "platform", 204),
]

CALLERS = [
    "no key",
    "unknown key",
    "revoked key",
    "platform_admin",
    "operator_admin of acme",
    "operator_admin of other",
    "backend of acme",
    "backend of other",
    "backend of all",
]
UNAUTHENTICATED = {"no key", "unknown key", "revoked key"}
# Keys that may act for acme in their role; the "of other" ones may not.
FOREIGN = {"operator_admin of other", "backend of other"}


def expected_status(endpoint: Endpoint, caller: str) -> int | tuple[int, ...]:
    if endpoint.scope == "public":
        return endpoint.success
    if caller in UNAUTHENTICATED:
        return 401
    if caller == "platform_admin":
        return endpoint.success
    if endpoint.scope == "platform":
        return 403
    if endpoint.scope == "operator":
        if caller == "operator_admin of acme":
            return endpoint.success
        return (403, 404) if caller in FOREIGN else 403
    # backend scope
    if caller in {"backend of acme", "backend of all"}:
        return endpoint.success
    if caller == "backend of other":
        return (403, 404)
    return 403


def headers_for(world: World, caller: str) -> dict[str, str]:
    if caller == "no key":
        return {}
    if caller == "unknown key":
        return bearer("cg_" + "Z" * 43)
    return bearer(world.keys[caller]["key"])


@pytest.fixture
async def world(gate: Gate, google: respx.MockRouter, service_account: dict[str, str]) -> World:
    service_account = {
        **service_account,
        "client_email": f"{CLIENT_EMAIL_MARKER}@{PROJECT}.iam.gserviceaccount.com",
    }
    # acme: credentials, site key and project, one decision with an assessment; then
    # protection off again, so credentials may be deleted and authorize needs no Google.
    await gate.protected_operator(service_account)
    await gate.create_operator("other")
    keys = {
        "platform_admin": await gate.create_key("platform_admin", None),
        "operator_admin of acme": await gate.create_key("operator_admin", ["acme"]),
        "operator_admin of other": await gate.create_key("operator_admin", ["other"]),
        "backend of acme": await gate.create_key("backend", ["acme"]),
        "backend of other": await gate.create_key("backend", ["other"]),
        "backend of all": await gate.create_key("backend", None),
        "revoked key": await gate.create_key("platform_admin", None),
    }
    revoked = await gate.client.delete(f"/api-keys/{keys['revoked key']['id']}", headers=ADMIN)
    assert revoked.status_code == 204
    victim = await gate.create_key("backend", ["acme"])

    google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json(name=ASSESSMENT_NAME)
    )
    google.post(f"{GOOGLE}/v1/{ASSESSMENT_NAME}:annotate").respond(json={})
    google.get(f"{GOOGLE}/v1/projects/{PROJECT}/keys/{SITE_KEY}").respond(
        json={
            "name": f"projects/{PROJECT}/keys/{SITE_KEY}",
            "webSettings": {"integrationType": "SCORE"},
        }
    )
    decision = await gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "acme", "token": "matrix-token"},
        headers=bearer(keys["backend of acme"]["key"]),
    )
    assert decision.status_code == 200, decision.text
    assert decision.json()["assessment_name"] == ASSESSMENT_NAME
    await gate.set_policy("acme", enabled=False)
    return World(gate, keys, decision.json()["decision_id"], victim["id"], service_account)


async def snapshot(database: str) -> dict[str, Any]:
    """Everything a refused call must leave as it was."""
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM operators) AS operators,
                   (SELECT count(*) FROM api_keys WHERE revoked_at IS NULL) AS active_keys,
                   (SELECT count(*) FROM audit_log) AS audit,
                   (SELECT count(*) FROM decisions) AS decisions,
                   (SELECT count(*) FROM credentials) AS credentials,
                   (SELECT version FROM policies WHERE operator_id = 'acme') AS acme_version,
                   (SELECT outcome FROM decisions LIMIT 1) AS outcome
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body = response.json()
    assert body["status"] == status
    for field in ("type", "title", "detail"):
        assert isinstance(body[field], str)
        assert body[field]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
async def test_access(world: World, database: str, endpoint: Endpoint, caller: str) -> None:
    before = await snapshot(database)
    kwargs: dict[str, Any] = {"headers": headers_for(world, caller)}
    if endpoint.body is not None:
        kwargs["json"] = endpoint.body(world)
    response = await world.gate.client.request(endpoint.method, endpoint.url(world), **kwargs)

    expected = expected_status(endpoint, caller)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert response.status_code in allowed, (response.status_code, response.text)

    if response.status_code >= 400:
        assert_problem(response, response.status_code)
        assert await snapshot(database) == before
        # Nothing of acme's leaks into a refusal.
        for secret in (SITE_KEY, CLIENT_EMAIL_MARKER, world.decision_id, PROJECT):
            assert secret not in response.text
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        assert "www-authenticate" not in response.headers


# ---------------------------------------------------------------------------
# Beyond the matrix: scope edges.


async def test_an_operator_scoped_key_naming_an_unknown_operator_is_refused(world: World) -> None:
    for caller, path in (
        ("operator_admin of acme", "/operators/ghost/policy"),
        ("operator_admin of acme", "/operators/ghost/audit-log"),
        ("operator_admin of acme", "/operators/ghost/decisions"),
    ):
        response = await world.gate.client.get(path, headers=headers_for(world, caller))
        assert response.status_code in (403, 404)
        assert_problem(response, response.status_code)


async def test_backend_of_all_operators_may_authorize_for_a_new_operator(world: World) -> None:
    await world.gate.create_operator("late")
    response = await world.gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "late"},
        headers=headers_for(world, "backend of all"),
    )
    assert response.status_code == 200
    assert response.json()["reason"] == "protection_disabled"


async def test_backend_of_acme_may_not_authorize_for_other(world: World) -> None:
    response = await world.gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "other"},
        headers=headers_for(world, "backend of acme"),
    )
    assert response.status_code == 403
    assert_problem(response, 403)


async def test_a_foreign_backend_cannot_tell_a_decision_exists(world: World) -> None:
    foreign = await world.gate.client.post(
        f"/sessions/{world.decision_id}/outcome",
        json={"outcome": "legitimate", "reasons": []},
        headers=headers_for(world, "backend of other"),
    )
    missing = await world.gate.client.post(
        "/sessions/dec_doesnotexist/outcome",
        json={"outcome": "legitimate", "reasons": []},
        headers=headers_for(world, "backend of other"),
    )
    assert foreign.status_code == missing.status_code
    assert foreign.json()["detail"] == missing.json()["detail"]


async def test_an_operator_admin_of_both_operators_sees_both(world: World) -> None:
    both = await world.gate.create_key("operator_admin", ["acme", "other"])
    for operator_id in ("acme", "other"):
        response = await world.gate.client.get(
            f"/operators/{operator_id}/policy", headers=bearer(both["key"])
        )
        assert response.status_code == 200


async def test_an_operator_admin_cannot_create_a_key_for_itself(world: World) -> None:
    response = await world.gate.client.post(
        "/api-keys",
        json={"name": "escalate", "role": "platform_admin", "operator_ids": None},
        headers=headers_for(world, "operator_admin of acme"),
    )
    assert response.status_code == 403
    assert "key" not in response.json()
