"""The public site-key endpoint a driver-portal frontend reads."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI

from tests.conftest import PROJECT, SITE_KEY, Gate, bearer

URL = "/operators/acme/site-key"
ORIGIN = "https://portal.acme.example"


def assert_public_headers(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "public, max-age=60"
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.fixture
async def acme(gate: Gate) -> Gate:
    await gate.create_operator("acme")
    return gate


async def test_disabled_operator_answers_enabled_false_and_no_key(acme: Gate) -> None:
    response = await acme.client.get(URL)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert_public_headers(response)
    assert response.json() == {
        "operator_id": "acme",
        "enabled": False,
        "site_key": None,
        "action": "start_session",
        "script_url": None,
    }


async def test_a_configured_but_disabled_policy_does_not_reveal_the_site_key(acme: Gate) -> None:
    await acme.set_policy("acme", site_key=SITE_KEY, gcp_project_id=PROJECT)
    body = (await acme.client.get(URL)).json()
    assert body["enabled"] is False
    assert body["site_key"] is None
    assert body["script_url"] is None


async def test_enabled_operator_answers_site_key_and_script_url(
    gate: Gate, service_account: dict[str, str], google: respx.MockRouter
) -> None:
    await gate.protected_operator(service_account, expected_action="begin_charge")
    response = await gate.client.get(URL)
    assert response.status_code == 200
    assert_public_headers(response)
    assert response.json() == {
        "operator_id": "acme",
        "enabled": True,
        "site_key": SITE_KEY,
        "action": "begin_charge",
        "script_url": f"https://www.google.com/recaptcha/enterprise.js?render={SITE_KEY}",
    }
    # Reading the site key never involves Google.
    assert not [c for c in google.calls if not c.request.url.host.startswith("chargegate")]


async def test_monitor_mode_still_serves_the_site_key(
    gate: Gate, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account, mode="monitor")
    assert (await gate.client.get(URL)).json()["site_key"] == SITE_KEY


async def test_disabling_hides_the_site_key_at_once(
    gate: Gate, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    assert (await gate.client.get(URL)).json()["enabled"] is True
    await gate.set_policy("acme", enabled=False)
    body = (await gate.client.get(URL)).json()
    assert body["enabled"] is False
    assert body["site_key"] is None


async def test_no_authentication_is_needed_and_a_bad_key_is_ignored(acme: Gate) -> None:
    response = await acme.client.get(URL, headers=bearer("cg_not-a-real-key"))
    assert response.status_code == 200
    assert "www-authenticate" not in response.headers


async def test_answer_reveals_nothing_beyond_the_public_fields(
    gate: Gate, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account, allowed_hostnames=["portal.acme.example"])
    response = await gate.client.get(URL)
    assert set(response.json()) == {"operator_id", "enabled", "site_key", "action", "script_url"}
    text = response.text
    assert PROJECT not in text
    assert service_account["client_email"] not in text
    assert "portal.acme.example" not in text


async def test_get_with_an_origin_allows_any_origin(acme: Gate) -> None:
    response = await acme.client.get(URL, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


async def test_cors_preflight_is_answered(acme: Gate) -> None:
    response = await acme.client.options(
        URL,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == "*"
    methods = [m.strip() for m in response.headers["access-control-allow-methods"].split(",")]
    assert "GET" in methods
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed_headers
    assert int(response.headers["access-control-max-age"]) > 0


async def test_preflight_needs_no_authentication_and_reaches_no_data(gate: Gate) -> None:
    response = await gate.client.options(
        "/operators/unknown-op/site-key",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.content == b""


async def test_unknown_operator_is_404_problem_json(gate: Gate) -> None:
    response = await gate.client.get("/operators/nope/site-key", headers={"Origin": ORIGIN})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == 404
    assert {"type", "title", "detail"} <= body.keys()
    # A browser can only read the 404 when CORS allows it.
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("operator_id", ["ACME", "acme_1", "-acme", "a" * 65])
async def test_invalid_operator_id_is_a_4xx_problem(gate: Gate, operator_id: str) -> None:
    response = await gate.client.get(f"/operators/{operator_id}/site-key")
    assert response.status_code in (404, 422)
    assert response.headers["content-type"] == "application/problem+json"


async def test_writes_to_the_site_key_are_not_allowed(acme: Gate) -> None:
    response = await acme.client.put(URL, json={"site_key": "x"})
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_asking_for_many_made_up_operators_does_not_grow_memory_without_bound(
    acme: Gate, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = app.state.services.operators._cache
    monkeypatch.setattr(cache, "_max_entries", 20)
    for n in range(100):
        response = await acme.client.get(f"/operators/made-up-{n}/site-key")
        assert response.status_code == 404
    assert len(cache._entries) <= 20
    assert not cache._loading
    # Known operators still answer correctly after evictions.
    assert (await acme.client.get(URL)).json()["operator_id"] == "acme"
