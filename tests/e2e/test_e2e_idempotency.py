"""Idempotency-Key over real HTTP: a retry gets the first answer without a second assessment,
another body gets 409, and concurrent duplicates share one assessment."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx

from app.recaptcha.emulator import FaultKind
from tests.conftest import ADMIN, bearer
from tests.e2e.conftest import Tenant


def key() -> str:
    return "idem-" + secrets.token_hex(8)


async def post_raw(tenant: Tenant, content: str, idempotency_key: str) -> httpx.Response:
    return await tenant.http.post(
        "/sessions/authorize",
        content=content.encode(),
        headers={
            **tenant.backend,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        },
    )


async def test_retry_gets_the_first_answer_without_a_second_assessment(tenant: Tenant) -> None:
    body: dict[str, Any] = {
        "operator_id": tenant.operator_id,
        "token": tenant.token(),
        "session_ref": "s-1",
        "user_ip": "203.0.113.7",
    }
    idem = key()

    first = await post_raw(tenant, json.dumps(body), idem)
    # The same parsed JSON: other key order, other whitespace.
    reordered = json.dumps(dict(reversed(body.items())), indent=4)
    second = await post_raw(tenant, reordered, idem)

    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["reason"] == "score_ok"
    assert second.json() == first.json()
    assert len(tenant.assessment_requests()) == 1
    # One decision recorded, not two (and the replay is not a token reuse).
    listed = await tenant.http.get(f"/operators/{tenant.operator_id}/decisions", headers=ADMIN)
    assert [item["decision_id"] for item in listed.json()["items"]] == [first.json()["decision_id"]]


async def test_same_key_other_body_is_409(tenant: Tenant) -> None:
    token, idem = tenant.token(), key()
    first = await tenant.authorize(token, headers={"Idempotency-Key": idem})
    other = await tenant.authorize(
        token, headers={"Idempotency-Key": idem}, session_ref="another-session"
    )

    assert first.status_code == 200
    assert other.status_code == 409, other.text
    assert other.headers["content-type"].startswith("application/problem+json")
    problem = other.json()
    assert problem["status"] == 409
    assert token not in other.text
    assert len(tenant.assessment_requests()) == 1


async def test_a_new_key_with_the_same_token_is_a_reuse(tenant: Tenant) -> None:
    token = tenant.token()
    first = await tenant.decide(token, headers={"Idempotency-Key": key()})
    second = await tenant.decide(token, headers={"Idempotency-Key": key()})

    assert (first["reason"], second["reason"]) == ("score_ok", "token_reused")
    assert len(tenant.assessment_requests()) == 1


async def test_keys_are_scoped_to_the_api_key(tenant: Tenant) -> None:
    response = await tenant.http.post(
        "/api-keys",
        json={"name": "second backend", "role": "backend", "operator_ids": [tenant.operator_id]},
        headers=ADMIN,
    )
    assert response.status_code == 201
    other_backend = bearer(response.json()["key"])
    idem = key()

    first = await tenant.decide(tenant.token(), headers={"Idempotency-Key": idem})
    other = await tenant.authorize(
        tenant.token(), headers={**other_backend, "Idempotency-Key": idem}
    )

    assert other.status_code == 200, other.text
    assert other.json()["decision_id"] != first["decision_id"]
    assert len(tenant.assessment_requests()) == 2


async def test_concurrent_duplicates_share_one_assessment(tenant: Tenant) -> None:
    # Google answers slowly, so every duplicate arrives while the first is still in flight.
    tenant.fault(FaultKind.DELAY, delay_ms=400)
    token, idem = tenant.token(), key()

    responses = await asyncio.gather(
        *(tenant.authorize(token, headers={"Idempotency-Key": idem}) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    answers = [r.json() for r in responses]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0]["reason"] == "score_ok"
    assert len(tenant.assessment_requests()) == 1
    assert tenant.faults_left() == 0


async def test_concurrent_duplicates_with_different_bodies(tenant: Tenant) -> None:
    tenant.fault(FaultKind.DELAY, delay_ms=300)
    token, idem = tenant.token(), key()

    first = asyncio.ensure_future(tenant.authorize(token, headers={"Idempotency-Key": idem}))
    await asyncio.sleep(0.1)
    other = await tenant.authorize(token, headers={"Idempotency-Key": idem}, evse_id="E2")

    assert other.status_code == 409, other.text
    assert (await first).status_code == 200
    assert len(tenant.assessment_requests()) == 1


async def test_invalid_keys_are_422_before_anything_happens(tenant: Tenant) -> None:
    token = tenant.token()
    for bad in ("", "x" * 256, "tab\there"):
        response = await tenant.authorize(token, headers={"Idempotency-Key": bad})
        assert response.status_code == 422, (bad, response.text)
    assert tenant.assessment_requests() == []
    # The token was not used up by the refused calls.
    assert (await tenant.decide(token))["reason"] == "score_ok"
