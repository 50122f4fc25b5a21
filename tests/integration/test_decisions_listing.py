"""GET /operators/{operator_id}/decisions: order, paging, filters and what an item holds."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from tests.conftest import ADMIN, AUTHORIZE_RESPONSE_FIELDS, Gate, bearer

LISTING = "/operators/acme/decisions"
AUTHORIZE_FIELDS = AUTHORIZE_RESPONSE_FIELDS
ITEM_FIELDS = AUTHORIZE_FIELDS | {"session_ref", "evse_id", "outcome"}


def new_token() -> str:
    return "03AFcWeA-" + secrets.token_urlsafe(48)


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def decide(gate: Gate, headers: dict[str, str], allow: bool, **body: Any) -> dict[str, Any]:
    """An allow (a good token) or a deny (no token)."""
    if allow:
        body["token"] = new_token()
    response = await gate.client.post(
        "/sessions/authorize", json={"operator_id": "acme", **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["decision"] == ("allow" if allow else "deny")
    return answer


async def listing(gate: Gate, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
    return await gate.client.get(LISTING, params=params, headers=headers)


async def page(gate: Gate, **params: Any) -> dict[str, Any]:
    response = await listing(gate, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.keys() == {"items", "next_cursor"}
    return body


async def all_pages(gate: Gate, **params: Any) -> tuple[list[str], int]:
    """Every decision id, following next_cursor; and the number of pages."""
    ids: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        body = await page(gate, **params, **({"cursor": cursor} if cursor else {}))
        pages += 1
        ids += [item["decision_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        assert body["items"], "a page with a next_cursor must not be empty"


async def insert_decisions(database: str, rows: list[tuple[str, datetime, str]]) -> None:
    """Decisions straight into the table: (decision_id, evaluated_at, decision)."""
    conn = await asyncpg.connect(database)
    try:
        await conn.executemany(
            """
            INSERT INTO decisions (
                decision_id, operator_id, api_key_id, decision, verdict, reason, score,
                threshold, mode, policy_version, risk_reasons, evaluated_at
            ) VALUES ($1, 'acme', 'key_test', $3, NULL, 'protection_disabled', NULL,
                      0.5, 'disabled', 1, '[]', $2)
            """,
            rows,
        )
    finally:
        await conn.close()


# --- order and paging ---------------------------------------------------------------------


async def test_newest_first(gate: Gate, backend: dict[str, str], assessments: respx.Route) -> None:
    made = [(await decide(gate, backend, allow=i % 2 == 0))["decision_id"] for i in range(5)]
    body = await page(gate)
    assert [item["decision_id"] for item in body["items"]] == made[::-1]
    assert body["next_cursor"] is None
    assert assessments.call_count == 3


async def test_paging_visits_every_decision_once(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    made = [(await decide(gate, backend, allow=False))["decision_id"] for _ in range(7)]
    ids, pages = await all_pages(gate, limit=2)
    assert ids == made[::-1]
    assert pages == 4


async def test_paging_with_equal_timestamps_orders_by_decision_id(
    gate: Gate, database: str
) -> None:
    await gate.create_operator("acme")
    at = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)
    rows = [(f"dec_{i:03d}", at, "allow") for i in range(9)]
    rows += [("dec_older", at - timedelta(microseconds=1), "deny")]
    rows += [("dec_newer", at + timedelta(microseconds=1), "deny")]
    await insert_decisions(database, rows)
    expected = ["dec_newer"] + [f"dec_{i:03d}" for i in reversed(range(9))] + ["dec_older"]
    for limit in (1, 2, 3, 4, 50):
        ids, _ = await all_pages(gate, limit=limit)
        assert ids == expected, limit


async def test_limit_bounds_and_default(gate: Gate, database: str) -> None:
    await gate.create_operator("acme")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    await insert_decisions(
        database, [(f"dec_{i:04d}", start + timedelta(seconds=i), "allow") for i in range(501)]
    )
    default = await page(gate)
    assert len(default["items"]) == 50
    assert default["next_cursor"] is not None
    biggest = await page(gate, limit=500)
    assert len(biggest["items"]) == 500
    assert biggest["items"][0]["decision_id"] == "dec_0500"
    rest = await page(gate, limit=500, cursor=biggest["next_cursor"])
    assert [item["decision_id"] for item in rest["items"]] == ["dec_0000"]
    assert rest["next_cursor"] is None


async def test_an_exactly_full_last_page_has_no_next_cursor(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    for _ in range(4):
        await decide(gate, backend, allow=False)
    first = await page(gate, limit=2)
    second = await page(gate, limit=2, cursor=first["next_cursor"])
    assert len(second["items"]) == 2
    assert second["next_cursor"] is None


async def test_new_decisions_do_not_disturb_a_paging_client(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    made = [(await decide(gate, backend, allow=False))["decision_id"] for _ in range(4)]
    first = await page(gate, limit=2)
    await decide(gate, backend, allow=False)
    second = await page(gate, limit=2, cursor=first["next_cursor"])
    ids = [item["decision_id"] for item in first["items"] + second["items"]]
    assert ids == made[::-1]


# --- filters ------------------------------------------------------------------------------


async def test_decision_filter(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    made = [await decide(gate, backend, allow=i in (0, 2, 3)) for i in range(6)]
    allowed = [d["decision_id"] for d in made if d["decision"] == "allow"][::-1]
    denied = [d["decision_id"] for d in made if d["decision"] == "deny"][::-1]
    assert (await all_pages(gate, decision="allow", limit=2))[0] == allowed
    assert (await all_pages(gate, decision="deny", limit=2))[0] == denied
    assert {item["decision"] for item in (await page(gate, decision="deny"))["items"]} == {"deny"}


async def test_since_is_inclusive(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    made = [await decide(gate, backend, allow=False) for _ in range(5)]
    since = made[2]["evaluated_at"]
    body = await page(gate, since=since)
    assert [item["decision_id"] for item in body["items"]] == [d["decision_id"] for d in made[2:]][
        ::-1
    ]
    paged, _ = await all_pages(gate, since=since, limit=1)
    assert paged == [d["decision_id"] for d in made[2:]][::-1]


async def test_since_accepts_any_offset(gate: Gate, database: str) -> None:
    await gate.create_operator("acme")
    at = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    await insert_decisions(
        database, [("dec_a", at - timedelta(seconds=1), "allow"), ("dec_b", at, "deny")]
    )
    for since in ("2026-11-24T12:00:00Z", "2026-11-24T13:00:00+01:00", "2026-11-24T12:00:00.000Z"):
        body = await page(gate, since=since)
        assert [item["decision_id"] for item in body["items"]] == ["dec_b"], since
    filtered = await page(gate, since="2026-11-24T11:00:00Z", decision="allow")
    assert [item["decision_id"] for item in filtered["items"]] == ["dec_a"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": -1},
        {"limit": "ten"},
        {"decision": "maybe"},
        {"decision": "ALLOW"},
        {"since": "yesterday"},
        {"since": "2026-11-24T12:00:00"},
        {"since": "2026-13-01T00:00:00Z"},
        {"cursor": "not a cursor!"},
        {"cursor": cursor_of([1, 2])},
        {"cursor": cursor_of(["2026-11-24T12:00:00+00:00"])},
        {"cursor": cursor_of(["not a time", "dec_x"])},
        {"cursor": cursor_of(["2026-11-24T12:00:00", "dec_x"])},
        {"cursor": cursor_of({"at": "2026-11-24T12:00:00+00:00"})},
        {"cursor": "x" * 600},
    ],
)
async def test_invalid_parameters_are_422(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter, params: dict[str, Any]
) -> None:
    await decide(gate, backend, allow=False)
    response = await listing(gate, **params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 422


# --- what an item holds -------------------------------------------------------------------


async def test_items_carry_the_answer_and_the_session_fields_never_the_token(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    token = new_token()
    response = await gate.client.post(
        "/sessions/authorize",
        json={
            "operator_id": "acme",
            "token": token,
            "session_ref": "backend-session-123",
            "evse_id": "DE*ACM*E1234*1",
            "user_ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
        },
        headers=backend,
    )
    answer = response.json()
    denied = await decide(gate, backend, allow=False)
    reply = await listing(gate)
    assert token not in reply.text
    assert "203.0.113.7" not in reply.text
    newest, oldest = reply.json()["items"]
    assert oldest.keys() == ITEM_FIELDS
    assert newest.keys() == ITEM_FIELDS
    assert (oldest["session_ref"], oldest["evse_id"], oldest["outcome"]) == (
        "backend-session-123",
        "DE*ACM*E1234*1",
        None,
    )
    assert (newest["session_ref"], newest["evse_id"]) == (None, None)
    for item, given in ((oldest, answer), (newest, denied)):
        item_time = datetime.fromisoformat(item.pop("evaluated_at"))
        assert item_time == datetime.fromisoformat(given.pop("evaluated_at"))
        assert item_time.utcoffset() == timedelta(0)
        assert {k: v for k, v in item.items() if k in AUTHORIZE_FIELDS} == given
    assert oldest["score"] == 0.9
    assert oldest["assessment_name"] == "projects/123456789/assessments/abc123"


async def test_evaluated_at_is_rfc3339_utc(gate: Gate, database: str) -> None:
    await gate.create_operator("acme")
    await insert_decisions(
        database, [("dec_a", datetime(2026, 11, 24, 12, 0, 0, 250000, tzinfo=UTC), "allow")]
    )
    (item,) = (await page(gate))["items"]
    assert item["evaluated_at"] in ("2026-11-24T12:00:00.250000Z", "2026-11-24T12:00:00.25Z")


async def test_listing_shows_only_the_operators_own_decisions(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    await decide(gate, backend, allow=False)
    await gate.create_operator("bravo")
    response = await gate.client.get("/operators/bravo/decisions", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}


# --- who may read -------------------------------------------------------------------------


async def test_operator_admin_reads_its_own_operator_only(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    await decide(gate, backend, allow=False)
    await gate.create_operator("bravo")
    acme_admin = bearer((await gate.create_key("operator_admin", ["acme"]))["key"])
    bravo_admin = bearer((await gate.create_key("operator_admin", ["bravo"]))["key"])
    assert len((await listing(gate, acme_admin)).json()["items"]) == 1
    forbidden = await listing(gate, bravo_admin)
    assert forbidden.status_code == 403
    assert "items" not in forbidden.json()


async def test_backend_key_may_not_list(gate: Gate, backend: dict[str, str]) -> None:
    assert (await listing(gate, backend)).status_code == 403


async def test_missing_key_is_401(gate: Gate) -> None:
    response = await listing(gate, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_unknown_operator_is_404(gate: Gate) -> None:
    response = await gate.client.get("/operators/nobody/decisions", headers=ADMIN)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
