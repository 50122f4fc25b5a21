"""Operator credentials: upload, metadata, encryption at rest, deletion, audit and verify."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.credentials.crypto import KeyRing, KeyRingError
from app.main import create_app
from tests.conftest import (
    ADMIN,
    ENCRYPTION_KEYS,
    GOOGLE,
    PROJECT,
    SITE_KEY,
    Gate,
    assert_problem,
    assessment_json,
    bearer,
    bearer_jwt_claims,
    count_rows,
    running,
)

CREDENTIALS = "/operators/acme/credentials"
VERIFY = "/operators/acme/credentials/verify"
KEY_URL = f"{GOOGLE}/v1/projects/{PROJECT}/keys/{SITE_KEY}"
TOKEN_URI = "https://oauth2.googleapis.com/token"
API_KEY = "AIzaSyD-test-api-key-0123456789abcdefghij"
SCORE_KEY = {
    "name": f"projects/{PROJECT}/keys/{SITE_KEY}",
    "displayName": "ACME driver portal",
    "webSettings": {"integrationType": "SCORE", "allowedDomains": ["portal.acme.example"]},
    "labels": {},
    "createTime": "2026-01-01T00:00:00Z",
}


def pem_body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM: any of them appearing somewhere means the key leaked."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def assert_no_key_material(text: str, pem: str) -> None:
    for line in pem_body_lines(pem):
        assert line not in text
    assert "PRIVATE KEY" not in text


def spki_fingerprint(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.fixture
async def acme(gate: Gate) -> Gate:
    await gate.create_operator("acme")
    return gate


@pytest.fixture
def no_google(google: respx.MockRouter) -> Iterator[respx.MockRouter]:
    """Google routes that must stay uncalled."""
    yield google
    assert not [call for call in google.calls if "chargegate" not in call.request.url.host]


# ---------------------------------------------------------------------------
# Uploading.


async def test_put_service_account_answers_metadata_only(
    acme: Gate, service_account: dict[str, str], no_google: respx.MockRouter
) -> None:
    response = await acme.client.put(CREDENTIALS, json=service_account, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"type", "client_email", "private_key_id", "fingerprint", "updated_at"}
    assert body["type"] == "service_account"
    assert body["client_email"] == service_account["client_email"]
    assert body["private_key_id"] == service_account["private_key_id"]
    assert body["fingerprint"] == spki_fingerprint(service_account["private_key"])
    assert body["updated_at"].endswith("Z")
    datetime.fromisoformat(body["updated_at"])
    assert_no_key_material(response.text, service_account["private_key"])


async def test_fingerprint_is_of_the_public_key_whatever_the_private_key_encoding(
    acme: Gate, service_account: dict[str, str]
) -> None:
    key = serialization.load_pem_private_key(service_account["private_key"].encode(), password=None)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert "BEGIN RSA PRIVATE KEY" in traditional
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "private_key": traditional}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    assert response.json()["fingerprint"] == spki_fingerprint(service_account["private_key"])


async def test_put_api_key_answers_the_fingerprint_of_the_string(acme: Gate) -> None:
    response = await acme.client.put(
        CREDENTIALS, json={"type": "api_key", "api_key": API_KEY}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "api_key"
    assert body["client_email"] is None
    assert body["private_key_id"] is None
    assert body["fingerprint"] == "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
    assert API_KEY not in response.text


async def test_put_replaces_earlier_credentials(
    acme: Gate, service_account: dict[str, str], database: str
) -> None:
    await acme.put_credentials("acme", service_account)
    await acme.put_credentials("acme", {"type": "api_key", "api_key": API_KEY})
    response = await acme.client.get(CREDENTIALS, headers=ADMIN)
    assert response.json()["type"] == "api_key"
    assert await count_rows(database, "credentials") == 1


async def test_put_for_an_unknown_operator_is_404(
    gate: Gate, service_account: dict[str, str]
) -> None:
    response = await gate.client.put(
        "/operators/nope/credentials", json=service_account, headers=ADMIN
    )
    assert_problem(response, 404)
    assert_no_key_material(response.text, service_account["private_key"])


def _ec_private_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _encrypted_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()


def _garbled(pem: str) -> str:
    lines = pem.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][::-1]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "private_key",
    [
        pytest.param(lambda pem: _garbled(pem), id="garbled-body"),
        pytest.param(lambda pem: pem[: len(pem) // 2], id="truncated"),
        pytest.param(lambda pem: "not a pem at all " + pem_body_lines(pem)[3], id="no-pem-armour"),
        pytest.param(lambda pem: pem.replace("PRIVATE KEY", "CERTIFICATE"), id="wrong-armour"),
        pytest.param(lambda _pem: _ec_private_key_pem(), id="ec-key"),
        pytest.param(lambda _pem: _encrypted_rsa_pem(), id="passphrase-protected"),
    ],
)
async def test_unusable_private_key_is_422_without_echoing_it(
    acme: Gate, service_account: dict[str, str], database: str, private_key: Any
) -> None:
    submitted: str = private_key(service_account["private_key"])
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "private_key": submitted}, headers=ADMIN
    )
    body = assert_problem(response, 422)
    assert ["body", "private_key"] in [e["loc"] for e in body["errors"]]
    assert_no_key_material(response.text, submitted)
    assert_no_key_material(response.text, service_account["private_key"])
    assert await count_rows(database, "credentials") == 0
    assert await count_rows(database, "audit_log") == 0


async def test_ec_key_is_named_as_not_rsa(acme: Gate, service_account: dict[str, str]) -> None:
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "private_key": _ec_private_key_pem()}, headers=ADMIN
    )
    assert "RSA" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize(
    "field", ["type", "project_id", "private_key_id", "private_key", "client_email", "token_uri"]
)
async def test_service_account_missing_a_field_is_422(
    acme: Gate, service_account: dict[str, str], database: str, field: str
) -> None:
    incomplete = {k: v for k, v in service_account.items() if k != field}
    response = await acme.client.put(CREDENTIALS, json=incomplete, headers=ADMIN)
    assert_problem(response, 422)
    assert_no_key_material(response.text, service_account["private_key"])
    assert await count_rows(database, "credentials") == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"type": "authorized_user", "client_secret": "s3cr3t-value"}, id="authorized-user"
        ),
        pytest.param({"type": "external_account"}, id="external-account"),
        pytest.param({"api_key": API_KEY}, id="no-type"),
        pytest.param({"type": "API_KEY", "api_key": API_KEY}, id="type-wrong-case"),
        pytest.param({"type": "api_key"}, id="api-key-missing"),
        pytest.param({"type": "api_key", "api_key": ""}, id="api-key-empty"),
        pytest.param({"type": "api_key", "api_key": API_KEY + " x"}, id="api-key-with-space"),
        pytest.param({"type": "api_key", "api_key": API_KEY * 20}, id="api-key-too-long"),
        pytest.param({"type": "api_key", "api_key": 12345}, id="api-key-number"),
        pytest.param({"type": "api_key", "api_key": API_KEY, "extra": 1}, id="unknown-field"),
        pytest.param([{"type": "api_key", "api_key": API_KEY}], id="array"),
    ],
)
async def test_bad_credentials_bodies_are_422_without_echoing_secrets(
    acme: Gate, database: str, body: Any
) -> None:
    response = await acme.client.put(CREDENTIALS, json=body, headers=ADMIN)
    assert_problem(response, 422)
    assert API_KEY not in response.text
    assert "s3cr3t-value" not in response.text
    assert await count_rows(database, "credentials") == 0


async def test_service_account_with_an_unknown_type_is_422_without_echoing_the_key(
    acme: Gate, service_account: dict[str, str]
) -> None:
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "type": "service-account"}, headers=ADMIN
    )
    assert_problem(response, 422)
    assert_no_key_material(response.text, service_account["private_key"])


async def test_service_account_with_an_unknown_field_is_422_without_echoing_the_key(
    acme: Gate, service_account: dict[str, str]
) -> None:
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "private_key_passphrase": "x"}, headers=ADMIN
    )
    assert_problem(response, 422)
    assert_no_key_material(response.text, service_account["private_key"])


@pytest.mark.parametrize(
    "token_uri",
    [
        "http://oauth2.googleapis.com/token",
        "ftp://oauth2.googleapis.com/token",
        "https:///token",
        "token",
    ],
)
async def test_token_uri_must_be_https(
    acme: Gate, service_account: dict[str, str], token_uri: str
) -> None:
    response = await acme.client.put(
        CREDENTIALS, json={**service_account, "token_uri": token_uri}, headers=ADMIN
    )
    body = assert_problem(response, 422)
    assert ["body", "token_uri"] in [e["loc"] for e in body["errors"]]


async def test_token_uri_may_be_plain_http_on_localhost(
    acme: Gate, service_account: dict[str, str]
) -> None:
    response = await acme.client.put(
        CREDENTIALS,
        json={**service_account, "token_uri": "http://127.0.0.1:8090/token"},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------
# Reading and deleting.


async def test_get_answers_the_same_metadata_as_put(
    acme: Gate, service_account: dict[str, str]
) -> None:
    put = await acme.client.put(CREDENTIALS, json=service_account, headers=ADMIN)
    response = await acme.client.get(CREDENTIALS, headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == put.json()
    assert_no_key_material(response.text, service_account["private_key"])


async def test_get_without_credentials_is_404(acme: Gate) -> None:
    assert_problem(await acme.client.get(CREDENTIALS, headers=ADMIN), 404)


async def test_get_for_an_unknown_operator_is_404(gate: Gate) -> None:
    assert_problem(await gate.client.get("/operators/nope/credentials", headers=ADMIN), 404)


async def test_delete_removes_the_credentials(
    acme: Gate, service_account: dict[str, str], database: str
) -> None:
    await acme.put_credentials("acme", service_account)
    response = await acme.client.delete(CREDENTIALS, headers=ADMIN)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await acme.client.get(CREDENTIALS, headers=ADMIN), 404)
    assert await count_rows(database, "credentials") == 0
    policy = (await acme.client.get("/operators/acme/policy", headers=ADMIN)).json()
    assert policy["credentials_configured"] is False


async def test_delete_without_credentials_is_404(acme: Gate, database: str) -> None:
    assert_problem(await acme.client.delete(CREDENTIALS, headers=ADMIN), 404)
    assert await count_rows(database, "audit_log") == 0


async def test_delete_for_an_unknown_operator_is_404(gate: Gate) -> None:
    assert_problem(await gate.client.delete("/operators/nope/credentials", headers=ADMIN), 404)


async def test_delete_while_the_policy_is_enabled_is_409_and_keeps_them(
    gate: Gate, service_account: dict[str, str], database: str
) -> None:
    await gate.protected_operator(service_account)
    audited = await count_rows(database, "audit_log")
    response = await gate.client.delete(CREDENTIALS, headers=ADMIN)
    assert_problem(response, 409)
    assert (await gate.client.get(CREDENTIALS, headers=ADMIN)).status_code == 200
    assert await count_rows(database, "audit_log") == audited


async def test_delete_after_disabling_the_policy_works(
    gate: Gate, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    await gate.set_policy("acme", enabled=False)
    assert (await gate.client.delete(CREDENTIALS, headers=ADMIN)).status_code == 204


# ---------------------------------------------------------------------------
# At rest: sealed, bound to the operator.


async def _credential_row(database: str, operator_id: str = "acme") -> asyncpg.Record:
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow("SELECT * FROM credentials WHERE operator_id = $1", operator_id)
        text = await conn.fetchval(
            "SELECT row_to_json(c)::text FROM credentials c WHERE operator_id = $1", operator_id
        )
    finally:
        await conn.close()
    assert row is not None
    assert text is not None
    return row, text


async def test_service_account_row_holds_no_plaintext_and_opens_only_for_its_operator(
    acme: Gate, service_account: dict[str, str], database: str
) -> None:
    await acme.put_credentials("acme", service_account)
    row, text = await _credential_row(database)
    sealed = bytes(row["sealed"])
    for line in pem_body_lines(service_account["private_key"]):
        assert line.encode() not in sealed
        assert line not in text
    assert b"PRIVATE KEY" not in sealed

    ring = KeyRing.parse(ENCRYPTION_KEYS)
    assert row["key_id"] == ring.primary_id
    payload = json.loads(ring.open(row["key_id"], sealed, b"acme"))
    assert payload["private_key"] == service_account["private_key"]
    assert payload["client_email"] == service_account["client_email"]
    with pytest.raises(KeyRingError):
        ring.open(row["key_id"], sealed, b"other")
    other_ring = KeyRing.parse(f"{row['key_id']}:" + base64.b64encode(b"\x01" * 32).decode())
    with pytest.raises(KeyRingError):
        other_ring.open(row["key_id"], sealed, b"acme")


async def test_api_key_row_holds_no_plaintext(acme: Gate, database: str) -> None:
    await acme.put_credentials("acme", {"type": "api_key", "api_key": API_KEY})
    row, text = await _credential_row(database)
    assert API_KEY.encode() not in bytes(row["sealed"])
    assert API_KEY not in text
    assert API_KEY[8:30] not in text
    payload = json.loads(
        KeyRing.parse(ENCRYPTION_KEYS).open(row["key_id"], bytes(row["sealed"]), b"acme")
    )
    assert payload == {"type": "api_key", "api_key": API_KEY}


async def test_a_sealed_row_moved_to_another_operator_is_not_used(
    gate: Gate, google: respx.MockRouter, database: str
) -> None:
    await gate.create_operator("acme")
    await gate.create_operator("other")
    await gate.put_credentials("acme", {"type": "api_key", "api_key": API_KEY})
    await gate.put_credentials("other", {"type": "api_key", "api_key": "AIza-other-operator-key"})
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "UPDATE credentials SET sealed ="
            " (SELECT sealed FROM credentials WHERE operator_id = 'acme')"
            " WHERE operator_id = 'other'"
        )
    finally:
        await conn.close()
    await gate.set_policy("other", site_key=SITE_KEY, gcp_project_id=PROJECT)
    route = google.get(KEY_URL).respond(json=SCORE_KEY)
    response = await gate.client.post("/operators/other/credentials/verify", headers=ADMIN)
    # acme's key is never used on behalf of another operator, and nothing crashes.
    checks = checks_of(response)
    assert checks["credentials"]["ok"] is False
    assert "decrypted" in checks["credentials"]["detail"]
    assert not route.called
    assert API_KEY not in response.text
    # The public site key does not depend on the secret.
    assert (await gate.client.get("/operators/other/site-key")).status_code == 200


async def test_authorize_with_undecryptable_credentials_follows_fail_mode(
    gate: Gate, google: respx.MockRouter, database: str
) -> None:
    await gate.protected_operator({"type": "api_key", "api_key": API_KEY})
    backend = await gate.create_key("backend", ["acme"])
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("UPDATE credentials SET key_id = 'gone'")
    finally:
        await conn.close()
    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )
    response = await gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "acme", "token": "tok"},
        headers=bearer(backend["key"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "deny"
    assert body["reason"] == "upstream_unavailable"
    assert body["upstream_error"] == "credentials_rejected"
    assert not route.called


# ---------------------------------------------------------------------------
# The audit log.


async def test_audit_log_records_replacements_and_deletion_with_metadata_only(
    acme: Gate, service_account: dict[str, str]
) -> None:
    admin = await acme.create_key("operator_admin", ["acme"])
    first = await acme.client.put(CREDENTIALS, json=service_account, headers=bearer(admin["key"]))
    second = await acme.client.put(
        CREDENTIALS, json={"type": "api_key", "api_key": API_KEY}, headers=ADMIN
    )
    await acme.set_policy("acme", mode="monitor")
    assert (await acme.client.delete(CREDENTIALS, headers=ADMIN)).status_code == 204

    response = await acme.client.get("/operators/acme/audit-log", headers=ADMIN)
    assert response.status_code == 200
    assert_no_key_material(response.text, service_account["private_key"])
    assert API_KEY not in response.text
    deleted, policy, replaced_again, replaced = response.json()["items"]

    assert replaced["action"] == "credentials.replaced"
    assert replaced["actor"] == admin["id"]
    assert replaced["changes"] == {"credentials": {"old": None, "new": first.json()}}

    assert replaced_again["action"] == "credentials.replaced"
    assert replaced_again["actor"] == "bootstrap"
    assert replaced_again["changes"] == {"credentials": {"old": first.json(), "new": second.json()}}

    assert policy["action"] == "policy.updated"

    assert deleted["action"] == "credentials.deleted"
    assert deleted["changes"] == {"credentials": {"old": second.json(), "new": None}}


# ---------------------------------------------------------------------------
# Replaced credentials are in force on every replica within 2 seconds.


async def test_replaced_credentials_reach_another_replica_within_two_seconds(
    gate: Gate, google: respx.MockRouter, settings: Any
) -> None:
    await gate.protected_operator({"type": "api_key", "api_key": API_KEY})
    backend = await gate.create_key("backend", ["acme"])
    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )
    async with running(create_app(settings)) as replica:

        async def authorize(n: int) -> str:
            response = await replica.post(
                "/sessions/authorize",
                json={"operator_id": "acme", "token": f"tok-{n}"},
                headers=bearer(backend["key"]),
            )
            assert response.status_code == 200, response.text
            return str(route.calls.last.request.headers["x-goog-api-key"])

        assert await authorize(0) == API_KEY
        await gate.put_credentials("acme", {"type": "api_key", "api_key": "AIza-rotated-key"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        n = 1
        while (seen := await authorize(n)) != "AIza-rotated-key" and loop.time() < deadline:
            n += 1
            await asyncio.sleep(0.05)
        assert seen == "AIza-rotated-key"


# ---------------------------------------------------------------------------
# verify: a live check against Google.


def checks_of(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"ok", "checks"}
    assert [c["name"] for c in body["checks"]] == ["credentials", "site_key", "score_based"]
    for check in body["checks"]:
        assert isinstance(check["ok"], bool)
        assert isinstance(check["detail"], str)
        assert check["detail"]
    assert body["ok"] is all(c["ok"] for c in body["checks"])
    return {c["name"]: c for c in body["checks"]}


async def _configured(gate: Gate, credentials: dict[str, Any]) -> None:
    await gate.create_operator("acme")
    await gate.put_credentials("acme", credentials)
    await gate.set_policy("acme", site_key=SITE_KEY, gcp_project_id=PROJECT)


async def test_verify_all_ok_for_a_score_web_key(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await _configured(gate, service_account)
    route = google.get(KEY_URL).respond(json=SCORE_KEY)
    response = await gate.client.post(VERIFY, headers=ADMIN)
    checks = checks_of(response)
    assert response.json()["ok"] is True
    assert all(c["ok"] for c in checks.values())
    assert route.call_count == 1
    claims = bearer_jwt_claims(
        route.calls.last.request.headers["authorization"], service_account["private_key"]
    )
    assert claims["iss"] == service_account["client_email"]
    assert_no_key_material(response.text, service_account["private_key"])


async def test_verify_with_an_api_key_sends_it_as_x_goog_api_key(
    gate: Gate, google: respx.MockRouter
) -> None:
    await _configured(gate, {"type": "api_key", "api_key": API_KEY})
    route = google.get(KEY_URL).respond(json=SCORE_KEY)
    response = await gate.client.post(VERIFY, headers=ADMIN)
    assert response.json()["ok"] is True
    request = route.calls.last.request
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in request.headers
    assert API_KEY not in response.text


async def test_verify_score_based_not_ok_for_a_checkbox_key(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await _configured(gate, service_account)
    checkbox = {**SCORE_KEY, "webSettings": {"integrationType": "CHECKBOX", "allowedDomains": []}}
    google.get(KEY_URL).respond(json=checkbox)
    checks = checks_of(await gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is True
    assert checks["site_key"]["ok"] is True
    assert checks["score_based"]["ok"] is False
    assert "CHECKBOX" in checks["score_based"]["detail"]


async def test_verify_site_key_not_ok_when_google_does_not_know_it(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await _configured(gate, service_account)
    google.get(KEY_URL).respond(
        404, json={"error": {"code": 404, "message": "Key not found.", "status": "NOT_FOUND"}}
    )
    checks = checks_of(await gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is True
    assert checks["site_key"]["ok"] is False
    assert PROJECT in checks["site_key"]["detail"]
    assert checks["score_based"]["ok"] is False


@pytest.mark.parametrize("status", [401, 403])
async def test_verify_credentials_not_ok_when_google_refuses_them(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str], status: int
) -> None:
    await _configured(gate, service_account)
    google.get(KEY_URL).respond(
        status, json={"error": {"code": status, "status": "PERMISSION_DENIED"}}
    )
    checks = checks_of(await gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is False
    assert checks["site_key"]["ok"] is False
    assert checks["score_based"]["ok"] is False


async def test_verify_without_credentials_reports_every_check_not_ok(
    acme: Gate, no_google: respx.MockRouter
) -> None:
    await acme.set_policy("acme", site_key=SITE_KEY, gcp_project_id=PROJECT)
    checks = checks_of(await acme.client.post(VERIFY, headers=ADMIN))
    assert not any(c["ok"] for c in checks.values())
    assert "credentials" in checks["credentials"]["detail"]


async def test_verify_without_a_site_key_reports_the_key_checks_not_ok(
    acme: Gate, no_google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await acme.put_credentials("acme", service_account)
    await acme.set_policy("acme", gcp_project_id=PROJECT)
    checks = checks_of(await acme.client.post(VERIFY, headers=ADMIN))
    assert checks["site_key"]["ok"] is False
    assert "site_key" in checks["site_key"]["detail"]
    assert checks["score_based"]["ok"] is False
    # A self-signed JWT is only judged by Google: without a key to ask about, nothing was checked.
    assert checks["credentials"]["ok"] is False


@pytest.mark.parametrize("status", [500, 503])
async def test_verify_reports_checks_it_could_not_run_when_google_fails(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str], status: int
) -> None:
    await _configured(gate, service_account)
    google.get(KEY_URL).respond(status)
    checks = checks_of(await gate.client.post(VERIFY, headers=ADMIN))
    assert not any(c["ok"] for c in checks.values())


async def test_verify_for_an_unknown_operator_is_404(
    gate: Gate, no_google: respx.MockRouter
) -> None:
    assert_problem(await gate.client.post("/operators/nope/credentials/verify", headers=ADMIN), 404)


async def test_verify_sees_credentials_replaced_a_moment_ago(
    gate: Gate, google: respx.MockRouter
) -> None:
    await _configured(gate, {"type": "api_key", "api_key": API_KEY})
    route = google.get(KEY_URL).respond(json=SCORE_KEY)
    await gate.client.post(VERIFY, headers=ADMIN)
    await gate.put_credentials("acme", {"type": "api_key", "api_key": "AIza-the-new-one"})
    await gate.client.post(VERIFY, headers=ADMIN)
    assert [c.request.headers["x-goog-api-key"] for c in route.calls] == [
        API_KEY,
        "AIza-the-new-one",
    ]


# With token exchange the gate trades a signed assertion for an access token at token_uri.


@pytest.fixture
async def exchange_gate(make_settings: Any) -> Any:
    async with running(create_app(make_settings(google_auth="token_exchange"))) as client:
        yield Gate(client)


async def test_verify_with_token_exchange_uses_the_minted_token(
    exchange_gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await _configured(exchange_gate, service_account)
    token = google.post(TOKEN_URI).respond(
        json={"access_token": "ya29.minted", "expires_in": 3599, "token_type": "Bearer"}
    )
    key = google.get(KEY_URL).respond(json=SCORE_KEY)
    response = await exchange_gate.client.post(VERIFY, headers=ADMIN)
    assert response.json()["ok"] is True
    assert token.call_count == 1
    form = dict(pair.split("=", 1) for pair in token.calls.last.request.content.decode().split("&"))
    assert form["grant_type"] == "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    assert key.calls.last.request.headers["authorization"] == "Bearer ya29.minted"
    assert "ya29.minted" not in response.text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        (401, {"error": "invalid_client"}),
    ],
)
async def test_verify_with_a_refused_token_exchange_runs_nothing_else(
    exchange_gate: Gate,
    google: respx.MockRouter,
    service_account: dict[str, str],
    status: int,
    body: dict[str, str],
) -> None:
    await _configured(exchange_gate, service_account)
    google.post(TOKEN_URI).respond(status, json=body)
    key = google.get(KEY_URL).respond(json=SCORE_KEY)
    checks = checks_of(await exchange_gate.client.post(VERIFY, headers=ADMIN))
    assert not any(c["ok"] for c in checks.values())
    assert "not run" in checks["site_key"]["detail"]
    assert not key.called


async def test_verify_with_token_exchange_and_no_site_key_confirms_the_credentials(
    exchange_gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await exchange_gate.create_operator("acme")
    await exchange_gate.put_credentials("acme", service_account)
    google.post(TOKEN_URI).respond(json={"access_token": "ya29.minted", "expires_in": 3599})
    checks = checks_of(await exchange_gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is True
    assert checks["site_key"]["ok"] is False
    assert checks["score_based"]["ok"] is False


# ---------------------------------------------------------------------------
# Concurrent writers.


async def test_concurrent_uploads_all_succeed_and_the_audit_chain_is_consistent(
    acme: Gate, database: str
) -> None:
    keys = [f"AIza-concurrent-{n}" for n in range(6)]
    responses = await asyncio.gather(
        *(
            acme.client.put(CREDENTIALS, json={"type": "api_key", "api_key": k}, headers=ADMIN)
            for k in keys
        )
    )
    assert [r.status_code for r in responses] == [200] * len(keys)
    assert await count_rows(database, "credentials") == 1
    entries = (await acme.client.get("/operators/acme/audit-log", headers=ADMIN)).json()["items"]
    assert len(entries) == len(keys)
    chain = [e["changes"]["credentials"] for e in reversed(entries)]
    assert chain[0]["old"] is None
    for earlier, later in itertools.pairwise(chain):
        assert later["old"] == earlier["new"]
    current = (await acme.client.get(CREDENTIALS, headers=ADMIN)).json()
    assert current == chain[-1]["new"]


async def test_verify_with_token_exchange_and_google_failing_keeps_the_credentials_check(
    exchange_gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await _configured(exchange_gate, service_account)
    google.post(TOKEN_URI).respond(json={"access_token": "ya29.minted", "expires_in": 3599})
    google.get(KEY_URL).respond(503)
    checks = checks_of(await exchange_gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is True
    assert checks["site_key"]["ok"] is False
    assert checks["score_based"]["ok"] is False


async def test_verify_with_an_api_key_google_answering_404_accepted_the_key(
    gate: Gate, google: respx.MockRouter
) -> None:
    await _configured(gate, {"type": "api_key", "api_key": API_KEY})
    google.get(KEY_URL).respond(404, json={"error": {"code": 404, "status": "NOT_FOUND"}})
    checks = checks_of(await gate.client.post(VERIFY, headers=ADMIN))
    assert checks["credentials"]["ok"] is True
    assert checks["site_key"]["ok"] is False
