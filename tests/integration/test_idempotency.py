"""Idempotency-Key on POST /sessions/authorize: one assessment per key and body."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import GOOGLE, PROJECT, Gate, assessment_json, bearer, count_rows

AUTHORIZE = "/sessions/authorize"


def new_token() -> str:
    return "03AFcWeA-" + secrets.token_urlsafe(48)


def google_calls(google: respx.MockRouter) -> list[Any]:
    return [call for call in google.calls if not call.request.url.host.startswith("chargegate")]


async def post(
    gate: Gate, headers: dict[str, str], idempotency_key: str | bytes | None, content: str
) -> httpx.Response:
    """A raw JSON body, so the test decides its key order and whitespace."""
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    raw.append((b"content-type", b"application/json"))
    if idempotency_key is not None:
        key = idempotency_key.encode() if isinstance(idempotency_key, str) else idempotency_key
        raw.append((b"idempotency-key", key))
    return await gate.client.post(AUTHORIZE, content=content, headers=raw)


async def test_same_key_and_same_body_returns_the_first_answer(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    token = new_token()
    first = await post(
        gate,
        backend,
        "retry-1",
        json.dumps({"operator_id": "acme", "token": token, "session_ref": "s-1"}),
    )
    # The same parsed JSON: other key order, other whitespace.
    again = await post(
        gate,
        backend,
        "retry-1",
        '{ "session_ref" : "s-1",\n  "token":"' + token + '",   "operator_id":"acme" }',
    )
    assert first.status_code == again.status_code == 200
    assert first.json()["reason"] == "score_ok"
    assert again.json() == first.json()
    assert assessments.call_count == 1
    assert await count_rows(database, "decisions") == 1


async def test_an_idempotent_replay_is_not_token_reused(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    body = json.dumps({"operator_id": "acme", "token": new_token()})
    answers = [(await post(gate, backend, "k", body)).json() for _ in range(3)]
    assert {a["reason"] for a in answers} == {"score_ok"}
    assert len({a["decision_id"] for a in answers}) == 1
    assert assessments.call_count == 1


async def test_same_key_with_a_different_body_is_409(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    first = await post(gate, backend, "k-1", json.dumps({"operator_id": "acme", "token": "t-1"}))
    assert first.status_code == 200
    for other in (
        {"operator_id": "acme", "token": "t-2"},
        {"operator_id": "acme", "token": "t-1", "session_ref": "s"},
        {"operator_id": "acme", "token": "t-1", "evse_id": None},
    ):
        conflict = await post(gate, backend, "k-1", json.dumps(other))
        assert conflict.status_code == 409, other
        assert conflict.headers["content-type"] == "application/problem+json"
        assert conflict.json()["status"] == 409
    assert assessments.call_count == 1
    assert await count_rows(database, "decisions") == 1


async def test_key_is_scoped_to_the_api_key(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    other = bearer((await gate.create_key("backend", ["acme"]))["key"])
    body = json.dumps({"operator_id": "acme", "token": new_token()})
    mine = await post(gate, backend, "shared-key", body)
    theirs = await post(gate, other, "shared-key", body)
    assert mine.status_code == theirs.status_code == 200
    assert theirs.json()["decision_id"] != mine.json()["decision_id"]
    # A new decision for the other key: its token was already presented.
    assert theirs.json()["reason"] == "token_reused"
    assert assessments.call_count == 1
    assert await count_rows(database, "decisions") == 2

    different_body = json.dumps({"operator_id": "acme", "token": new_token()})
    third = bearer((await gate.create_key("backend", ["acme"]))["key"])
    fresh = await post(gate, third, "shared-key", different_body)
    assert fresh.status_code == 200
    assert fresh.json()["reason"] == "score_ok"
    assert assessments.call_count == 2


async def test_different_keys_make_different_decisions(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    first = await post(gate, backend, "a", json.dumps({"operator_id": "acme", "token": "t-1"}))
    second = await post(gate, backend, "b", json.dumps({"operator_id": "acme", "token": "t-2"}))
    assert first.json()["decision_id"] != second.json()["decision_id"]
    assert assessments.call_count == 2


async def test_concurrent_duplicates_share_one_assessment(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter, database: str
) -> None:
    async def slow_google(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return httpx.Response(200, json=assessment_json())

    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments")
    route.side_effect = slow_google
    body = json.dumps({"operator_id": "acme", "token": new_token()})
    responses = await asyncio.gather(*(post(gate, backend, "dup", body) for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    answers = [r.json() for r in responses]
    assert len({a["decision_id"] for a in answers}) == 1
    assert {a["reason"] for a in answers} == {"score_ok"}
    assert route.call_count == 1
    assert await count_rows(database, "decisions") == 1


async def test_a_failed_first_request_lets_the_retry_run(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    unknown = json.dumps({"operator_id": "nobody", "token": new_token()})
    everywhere = bearer((await gate.create_key("backend", None))["key"])
    assert (await post(gate, everywhere, "k", unknown)).status_code == 404
    assert (await post(gate, everywhere, "k", unknown)).status_code == 404
    # The key was let go: the same key with another body is not a conflict.
    body = json.dumps({"operator_id": "acme", "token": new_token()})
    answer = await post(gate, everywhere, "k", body)
    assert answer.status_code == 200
    assert answer.json()["reason"] == "score_ok"
    assert await count_rows(database, "decisions") == 1


@pytest.mark.parametrize(
    "idempotency_key",
    [
        "",
        "k" * 256,
        "bad\x01key",
        "tab\tkey",
        "del\x7fkey",
        "caf\u00e9".encode(),
        "\u20ac".encode(),
    ],
    ids=["empty", "256 chars", "control char", "tab", "DEL", "latin-1", "utf-8"],
)
async def test_invalid_key_is_422_before_anything_happens(
    gate: Gate,
    backend: dict[str, str],
    google: respx.MockRouter,
    assessments: respx.Route,
    database: str,
    idempotency_key: str | bytes,
) -> None:
    token = new_token()
    body = json.dumps({"operator_id": "acme", "token": token})
    response = await post(gate, backend, idempotency_key, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 422
    assert google_calls(google) == []
    for table in ("decisions", "token_claims", "idempotency_records"):
        assert await count_rows(database, table) == 0, table
    # The token was not claimed: it still gets its one assessment.
    fresh = await post(gate, backend, None, body)
    assert fresh.json()["reason"] == "score_ok"
    assert assessments.call_count == 1


@pytest.mark.parametrize(
    "idempotency_key", ["k", "k" * 255, "!~printable ASCII, with spaces~!", "a:b/c=d"]
)
async def test_valid_keys_are_accepted(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, idempotency_key: str
) -> None:
    body = json.dumps({"operator_id": "acme", "token": new_token()})
    first = await post(gate, backend, idempotency_key, body)
    again = await post(gate, backend, idempotency_key, body)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json()["decision_id"] == first.json()["decision_id"]
    assert assessments.call_count == 1
