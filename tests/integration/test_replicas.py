"""Two app instances on one database behave as one service within 2 seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from app.main import create_app
from tests.conftest import (
    ADMIN,
    GOOGLE,
    PROJECT,
    Gate,
    assessment_json,
    bearer,
    eventually,
    running,
)

PROPAGATION_SECONDS = 2.0


@pytest.fixture
async def second(make_settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(make_settings())) as client:
        yield client


async def test_policy_change_reaches_the_other_replica(
    gate: Gate, second: httpx.AsyncClient, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
    google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(
        side_effect=lambda request: httpx.Response(200, json=assessment_json(score=0.7))
    )
    tokens = iter(f"tok-{n}" for n in range(1000))

    async def decision_on_second() -> str:
        answer = await second.post(
            "/sessions/authorize",
            json={"operator_id": "acme", "token": next(tokens)},
            headers=backend,
        )
        assert answer.status_code == 200, answer.text
        reason: str = answer.json()["reason"]
        return reason

    assert await decision_on_second() == "score_ok"
    await gate.set_policy("acme", score_threshold=0.8)

    async def denied() -> bool:
        return await decision_on_second() == "score_below_threshold"

    await eventually(denied, PROPAGATION_SECONDS)


async def test_revocation_reaches_the_other_replica(gate: Gate, second: httpx.AsyncClient) -> None:
    await gate.create_operator()
    key = await gate.create_key("operator_admin", ["acme"])
    assert (
        await second.get("/operators/acme/policy", headers=bearer(key["key"]))
    ).status_code == 200
    assert (await gate.client.delete(f"/api-keys/{key['id']}", headers=ADMIN)).status_code == 204

    async def refused() -> bool:
        response = await second.get("/operators/acme/policy", headers=bearer(key["key"]))
        return response.status_code == 401

    await eventually(refused, PROPAGATION_SECONDS)


async def test_a_token_is_single_use_across_replicas(
    gate: Gate, second: httpx.AsyncClient, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    backend = bearer((await gate.create_key("backend", None))["key"])
    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )
    body = {"operator_id": "acme", "token": "shared-token"}
    first, other = await asyncio.gather(
        gate.client.post("/sessions/authorize", json=body, headers=backend),
        second.post("/sessions/authorize", json=body, headers=backend),
    )
    reasons = sorted([first.json()["reason"], other.json()["reason"]])
    assert reasons == ["score_ok", "token_reused"]
    assert route.call_count == 1


async def test_idempotent_retry_on_the_other_replica_gets_the_first_answer(
    gate: Gate, second: httpx.AsyncClient, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    backend = bearer((await gate.create_key("backend", ["acme"]))["key"])

    async def slow_google(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return httpx.Response(200, json=assessment_json())

    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(side_effect=slow_google)
    headers = {**backend, "Idempotency-Key": "retry-42"}
    body = {"operator_id": "acme", "token": "tok-idem"}
    answers = await asyncio.gather(
        gate.client.post("/sessions/authorize", json=body, headers=headers),
        second.post("/sessions/authorize", json=body, headers=headers),
    )
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert route.call_count == 1
