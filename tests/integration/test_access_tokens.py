"""Access tokens are minted once per credential and reused across authorize calls."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx

from app.main import create_app
from app.metrics import ACCESS_TOKEN_MINTS
from tests.conftest import GOOGLE, PROJECT, Gate, assessment_json, bearer, running

CONCURRENT_FIRST_CALLS = 50


def mints() -> float:
    value: float = ACCESS_TOKEN_MINTS._value.get()
    return value


@pytest.mark.parametrize("mode", ["self_signed_jwt", "token_exchange"])
async def test_fifty_concurrent_first_calls_mint_one_token(
    mode: str,
    make_settings: Any,
    google: respx.MockRouter,
    service_account: dict[str, str],
) -> None:
    token_endpoint = google.post(service_account["token_uri"]).respond(
        json={"access_token": "ya29.exchanged-token", "expires_in": 3599, "token_type": "Bearer"}
    )
    seen_auth: set[str] = set()

    async def assess(request: httpx.Request) -> httpx.Response:
        seen_auth.add(request.headers["authorization"])
        await asyncio.sleep(0.01)
        return httpx.Response(200, json=assessment_json())

    assessments = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(
        side_effect=assess
    )
    async with running(create_app(make_settings(google_auth=mode))) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        before = mints()
        answers = await asyncio.gather(
            *(
                client.post(
                    "/sessions/authorize",
                    json={"operator_id": "acme", "token": f"tok-{n}"},
                    headers=backend,
                )
                for n in range(CONCURRENT_FIRST_CALLS)
            )
        )
        assert {a.json()["reason"] for a in answers} == {"score_ok"}
        assert assessments.call_count == CONCURRENT_FIRST_CALLS
        assert mints() - before == 1
        assert len(seen_auth) == 1
        if mode == "token_exchange":
            assert token_endpoint.call_count == 1
            assert seen_auth == {"Bearer ya29.exchanged-token"}
        else:
            assert not token_endpoint.called
