"""Operators: creation, conflicts, id rules and the paged listing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ADMIN, Gate, assert_problem, count_rows


async def test_create_operator_answers_201_with_the_operator(gate: Gate) -> None:
    response = await gate.client.post(
        "/operators", json={"operator_id": "acme", "name": "ACME Charging"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"operator_id", "name", "created_at"}
    assert body["operator_id"] == "acme"
    assert body["name"] == "ACME Charging"
    assert body["created_at"].endswith("Z")
    assert abs(datetime.now(UTC) - datetime.fromisoformat(body["created_at"])) < timedelta(
        seconds=30
    )


async def test_a_new_operator_has_a_default_policy_and_no_credentials(gate: Gate) -> None:
    await gate.create_operator("acme")
    policy = await gate.client.get("/operators/acme/policy", headers=ADMIN)
    assert policy.status_code == 200
    assert policy.json()["version"] == 1
    assert policy.json()["enabled"] is False
    assert (await gate.client.get("/operators/acme/credentials", headers=ADMIN)).status_code == 404


async def test_creating_an_existing_operator_is_409_and_changes_nothing(
    gate: Gate, database: str
) -> None:
    await gate.create_operator("acme", "ACME Charging")
    await gate.set_policy("acme", mode="monitor")
    response = await gate.client.post(
        "/operators", json={"operator_id": "acme", "name": "Impostor"}, headers=ADMIN
    )
    assert_problem(response, 409)
    listing = (await gate.client.get("/operators", headers=ADMIN)).json()
    assert [(o["operator_id"], o["name"]) for o in listing["items"]] == [("acme", "ACME Charging")]
    policy = (await gate.client.get("/operators/acme/policy", headers=ADMIN)).json()
    assert policy["mode"] == "monitor"
    assert policy["version"] == 2
    assert await count_rows(database, "operators") == 1


@pytest.mark.parametrize(
    "operator_id",
    ["a", "0", "a-b", "acme-charging-2", "9lives", "a" * 64, "a" + "-" * 62 + "b"],
)
async def test_valid_operator_ids_are_accepted(gate: Gate, operator_id: str) -> None:
    response = await gate.client.post(
        "/operators", json={"operator_id": operator_id, "name": "x"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    assert response.json()["operator_id"] == operator_id


@pytest.mark.parametrize(
    "operator_id",
    [
        "",
        "Acme",
        "ACME",
        "-acme",
        "acme-",
        "ac_me",
        "ac.me",
        "ac me",
        "ácme",
        "a" * 65,
        "acme\u0000",
        "acme/other",
    ],
)
async def test_invalid_operator_ids_are_422(gate: Gate, database: str, operator_id: str) -> None:
    response = await gate.client.post(
        "/operators", json={"operator_id": operator_id, "name": "x"}, headers=ADMIN
    )
    body = assert_problem(response, 422)
    assert ["body", "operator_id"] in [e["loc"] for e in body["errors"]]
    assert await count_rows(database, "operators") == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"operator_id": "acme"}, id="no-name"),
        pytest.param({"name": "ACME"}, id="no-operator-id"),
        pytest.param({"operator_id": "acme", "name": ""}, id="empty-name"),
        pytest.param({"operator_id": "acme", "name": "x" * 201}, id="long-name"),
        pytest.param({"operator_id": "acme", "name": "a\u0000b"}, id="nul-in-name"),
        pytest.param({"operator_id": "acme", "name": 5}, id="name-number"),
        pytest.param({"operator_id": 5, "name": "x"}, id="id-number"),
        pytest.param({"operator_id": "acme", "name": "x", "country": "DE"}, id="unknown-field"),
        pytest.param(["acme"], id="array"),
    ],
)
async def test_invalid_operator_bodies_are_422(gate: Gate, database: str, body: Any) -> None:
    assert_problem(await gate.client.post("/operators", json=body, headers=ADMIN), 422)
    assert await count_rows(database, "operators") == 0


async def test_a_name_may_hold_any_printable_unicode(gate: Gate) -> None:
    response = await gate.client.post(
        "/operators",
        json={"operator_id": "muenchen", "name": "Stadtwerke München ⚡"},
        headers=ADMIN,
    )
    assert response.status_code == 201
    listing = (await gate.client.get("/operators", headers=ADMIN)).json()
    assert listing["items"][0]["name"] == "Stadtwerke München ⚡"


# ---------------------------------------------------------------------------
# The listing.


async def test_listing_is_empty_without_operators(gate: Gate) -> None:
    response = await gate.client.get("/operators", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


async def test_listing_is_ordered_by_operator_id_not_creation(gate: Gate) -> None:
    for operator_id in ("zeta", "alpha", "mid", "beta-2", "beta"):
        await gate.create_operator(operator_id, f"Name of {operator_id}")
    response = await gate.client.get("/operators", headers=ADMIN)
    items = response.json()["items"]
    assert [i["operator_id"] for i in items] == ["alpha", "beta", "beta-2", "mid", "zeta"]
    assert all(i["name"] == f"Name of {i['operator_id']}" for i in items)
    assert all(set(i) == {"operator_id", "name", "created_at"} for i in items)
    assert response.json()["next_cursor"] is None


async def test_listing_pages_with_limit_and_cursor(gate: Gate) -> None:
    ids = [f"op-{n:02d}" for n in range(7)]
    for operator_id in reversed(ids):
        await gate.create_operator(operator_id)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        response = await gate.client.get("/operators", params=params, headers=ADMIN)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([i["operator_id"] for i in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert cursor
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]


async def test_a_page_that_ends_exactly_at_the_last_operator_has_no_cursor(gate: Gate) -> None:
    for operator_id in ("a1", "a2"):
        await gate.create_operator(operator_id)
    body = (await gate.client.get("/operators", params={"limit": 2}, headers=ADMIN)).json()
    assert [i["operator_id"] for i in body["items"]] == ["a1", "a2"]
    assert body["next_cursor"] is None


async def test_a_cursor_keeps_working_when_operators_are_added(gate: Gate) -> None:
    for operator_id in ("b", "d", "f"):
        await gate.create_operator(operator_id)
    first = (await gate.client.get("/operators", params={"limit": 2}, headers=ADMIN)).json()
    assert [i["operator_id"] for i in first["items"]] == ["b", "d"]
    await gate.create_operator("a")
    await gate.create_operator("e")
    rest = await gate.client.get(
        "/operators", params={"limit": 2, "cursor": first["next_cursor"]}, headers=ADMIN
    )
    assert [i["operator_id"] for i in rest.json()["items"]] == ["e", "f"]


async def test_the_default_limit_is_50(gate: Gate) -> None:
    for n in range(51):
        await gate.create_operator(f"op-{n:02d}")
    body = (await gate.client.get("/operators", headers=ADMIN)).json()
    assert len(body["items"]) == 50
    assert body["next_cursor"] is not None
    rest = (
        await gate.client.get("/operators", params={"cursor": body["next_cursor"]}, headers=ADMIN)
    ).json()
    assert [i["operator_id"] for i in rest["items"]] == ["op-50"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": -1},
        {"limit": "many"},
        {"cursor": "%%%"},
        {"cursor": "bm90LWpzb24"},
        {"cursor": "WzFd"},
        {"cursor": "x" * 600},
    ],
    ids=[
        "limit-0",
        "limit-501",
        "limit-negative",
        "limit-text",
        "cursor-garbage",
        "cursor-not-json",
        "cursor-wrong-type",
        "cursor-too-long",
    ],
)
async def test_bad_paging_parameters_are_422(gate: Gate, params: dict[str, Any]) -> None:
    assert_problem(await gate.client.get("/operators", params=params, headers=ADMIN), 422)


async def test_limit_500_is_allowed(gate: Gate) -> None:
    await gate.create_operator("acme")
    response = await gate.client.get("/operators", params={"limit": 500}, headers=ADMIN)
    assert response.status_code == 200
    assert len(response.json()["items"]) == 1


async def test_concurrent_creation_of_one_operator_creates_it_once(
    gate: Gate, database: str
) -> None:
    responses = await asyncio.gather(
        *(
            gate.client.post(
                "/operators", json={"operator_id": "race", "name": f"Racer {n}"}, headers=ADMIN
            )
            for n in range(5)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.headers["content-type"] == "application/problem+json"
    assert await count_rows(database, "operators") == 1
    assert await count_rows(database, "policies") == 1
