"""POST /sessions/{decision_id}/outcome and the annotation outbox that delivers it to Google."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN, GOOGLE, PROJECT, Gate, assessment_json, bearer, running

ASSESSMENT_NAME = "projects/123456789/assessments/abc123"
ANNOTATE = f"{GOOGLE}/v1/{ASSESSMENT_NAME}:annotate"
ASSESSMENTS = f"{GOOGLE}/v1/projects/{PROJECT}/assessments"


def new_token() -> str:
    return "03AFcWeA-" + secrets.token_urlsafe(48)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Polls `check` until it holds; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {check}")
        await asyncio.sleep(0.02)


async def outbox(database: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT * FROM annotation_outbox ORDER BY id")
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def delivered(database: str, count: int = 1) -> bool:
    return [row["status"] for row in await outbox(database)].count("delivered") == count


def sent(route: respx.Route, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[index].request.content)
    return body


async def assessed_decision(gate: Gate, headers: dict[str, str], **body: Any) -> str:
    response = await gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "acme", "token": new_token(), **body},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["assessment_name"] == ASSESSMENT_NAME
    decision_id: str = answer["decision_id"]
    return decision_id


async def report(
    gate: Gate, headers: dict[str, str], decision_id: str, outcome: str, reasons: list[str]
) -> httpx.Response:
    return await gate.client.post(
        f"/sessions/{decision_id}/outcome",
        json={"outcome": outcome, "reasons": reasons},
        headers=headers,
    )


@pytest.fixture
def annotate(google: respx.MockRouter) -> respx.Route:
    return google.post(ANNOTATE).respond(json={})


@pytest.fixture
async def decision_id(gate: Gate, backend: dict[str, str], assessments: respx.Route) -> str:
    return await assessed_decision(gate, backend)


# --- the report ---------------------------------------------------------------------------


async def test_outcome_is_accepted_and_visible_in_the_listing_at_once(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route
) -> None:
    response = await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    assert response.status_code == 202, response.text
    assert response.json() == {
        "decision_id": decision_id,
        "outcome": "fraudulent",
        "reasons": ["chargeback"],
    }
    listing = await gate.client.get("/operators/acme/decisions", headers=ADMIN)
    (item,) = listing.json()["items"]
    assert item["decision_id"] == decision_id
    assert item["outcome"] == "fraudulent"


async def test_reasons_default_to_none(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    response = await gate.client.post(
        f"/sessions/{decision_id}/outcome", json={"outcome": "legitimate"}, headers=backend
    )
    assert response.status_code == 202, response.text
    await eventually(lambda: delivered(database))
    assert sent(annotate) == {"annotation": "LEGITIMATE", "reasons": []}


async def test_unknown_decision_is_404(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    response = await report(gate, backend, "dec_doesnotexist", "fraudulent", [])
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_decision_of_another_operator_is_404(
    gate: Gate, decision_id: str, annotate: respx.Route, database: str
) -> None:
    await gate.create_operator("bravo")
    bravo = bearer((await gate.create_key("backend", ["bravo"]))["key"])
    response = await report(gate, bravo, decision_id, "fraudulent", ["chargeback"])
    assert response.status_code == 404
    assert await outbox(database) == []
    listing = await gate.client.get("/operators/acme/decisions", headers=ADMIN)
    assert listing.json()["items"][0]["outcome"] is None


async def test_operator_admin_key_may_not_report(
    gate: Gate, decision_id: str, annotate: respx.Route
) -> None:
    admin = bearer((await gate.create_key("operator_admin", ["acme"]))["key"])
    assert (await report(gate, admin, decision_id, "fraudulent", [])).status_code == 403
    assert (await report(gate, {}, decision_id, "fraudulent", [])).status_code == 401


async def test_backend_key_for_all_operators_may_report(
    gate: Gate, decision_id: str, annotate: respx.Route
) -> None:
    everywhere = bearer((await gate.create_key("backend", None))["key"])
    assert (await report(gate, everywhere, decision_id, "legitimate", [])).status_code == 202


@pytest.mark.parametrize("situation", ["disabled", "token_missing", "upstream_unavailable"])
async def test_decision_without_an_assessment_is_409(
    gate: Gate,
    backend: dict[str, str],
    google: respx.MockRouter,
    database: str,
    situation: str,
) -> None:
    body: dict[str, Any] = {"operator_id": "acme", "token": new_token()}
    if situation == "disabled":
        await gate.set_policy("acme", enabled=False)
    elif situation == "token_missing":
        del body["token"]
    else:
        google.post(ASSESSMENTS).respond(503)
    answer = (await gate.client.post("/sessions/authorize", json=body, headers=backend)).json()
    assert answer["assessment_name"] is None
    response = await report(gate, backend, answer["decision_id"], "fraudulent", ["chargeback"])
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert await outbox(database) == []


@pytest.mark.parametrize(
    "body",
    [
        {"outcome": "fraudulent", "reasons": ["not_a_reason"]},
        {"outcome": "fraudulent", "reasons": ["CHARGEBACK"]},
        {"outcome": "fraudulent", "reasons": ["Chargeback"]},
        {"outcome": "fraud", "reasons": []},
        {"outcome": "FRAUDULENT", "reasons": []},
        {"reasons": ["chargeback"]},
        {"outcome": "fraudulent", "reasons": "chargeback"},
        {"outcome": "fraudulent", "reasons": [], "note": "unknown field"},
    ],
)
async def test_invalid_report_is_422(
    gate: Gate,
    backend: dict[str, str],
    decision_id: str,
    annotate: respx.Route,
    database: str,
    body: dict[str, Any],
) -> None:
    response = await gate.client.post(
        f"/sessions/{decision_id}/outcome", json=body, headers=backend
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert await outbox(database) == []


async def test_every_contract_reason_is_accepted(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    reasons = [
        "chargeback",
        "chargeback_fraud",
        "chargeback_dispute",
        "refund",
        "refund_fraud",
        "transaction_accepted",
        "transaction_declined",
        "payment_heuristics",
        "initiated_two_factor",
        "passed_two_factor",
        "failed_two_factor",
        "correct_password",
        "incorrect_password",
        "social_spam",
    ]
    response = await report(gate, backend, decision_id, "fraudulent", reasons)
    assert response.status_code == 202, response.text
    await eventually(lambda: delivered(database))
    assert sent(annotate)["reasons"] == [reason.upper() for reason in reasons]


# --- delivery to Google -------------------------------------------------------------------


async def test_annotation_is_delivered_to_google(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    response = await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    assert response.status_code == 202
    await eventually(lambda: delivered(database))
    assert annotate.call_count == 1
    request = annotate.calls.last.request
    assert str(request.url) == ANNOTATE
    assert sent(annotate) == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK"]}
    assert request.headers["authorization"].startswith("Bearer ")


async def test_the_same_report_twice_is_delivered_once(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    first = await report(gate, backend, decision_id, "fraudulent", ["chargeback", "refund"])
    assert first.status_code == 202
    await eventually(lambda: delivered(database))
    again = await report(gate, backend, decision_id, "fraudulent", ["refund", "chargeback"])
    assert again.status_code == 202
    assert len(await outbox(database)) == 1
    await asyncio.sleep(0.3)  # a few outbox rounds
    assert annotate.call_count == 1


async def test_the_same_report_twice_before_delivery_is_delivered_once(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    for _ in range(3):
        response = await report(gate, backend, decision_id, "legitimate", ["transaction_accepted"])
        assert response.status_code == 202
    await eventually(lambda: delivered(database))
    await asyncio.sleep(0.3)
    assert annotate.call_count == 1
    assert len(await outbox(database)) == 1


async def test_a_later_different_report_is_annotated_again(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    first = await report(gate, backend, decision_id, "legitimate", ["transaction_accepted"])
    assert first.status_code == 202
    await eventually(lambda: delivered(database))
    later = await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    assert later.status_code == 202
    listing = await gate.client.get("/operators/acme/decisions", headers=ADMIN)
    assert listing.json()["items"][0]["outcome"] == "fraudulent"
    await eventually(lambda: delivered(database, 2))
    assert annotate.call_count == 2
    assert sent(annotate, 0) == {"annotation": "LEGITIMATE", "reasons": ["TRANSACTION_ACCEPTED"]}
    assert sent(annotate, 1) == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK"]}


async def test_same_outcome_with_other_reasons_is_annotated_again(
    gate: Gate, backend: dict[str, str], decision_id: str, annotate: respx.Route, database: str
) -> None:
    await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    await eventually(lambda: delivered(database))
    await report(gate, backend, decision_id, "fraudulent", ["chargeback", "refund_fraud"])
    await eventually(lambda: delivered(database, 2))
    assert sent(annotate) == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK", "REFUND_FRAUD"]}


@pytest.mark.parametrize("failure", [503, 429, 500, "connect"])
async def test_a_transient_failure_is_retried_until_delivered(
    gate: Gate,
    backend: dict[str, str],
    decision_id: str,
    google: respx.MockRouter,
    database: str,
    failure: int | str,
) -> None:
    first: httpx.Response | Exception = (
        httpx.ConnectError("refused") if failure == "connect" else httpx.Response(int(failure))
    )
    route = google.post(ANNOTATE)
    route.side_effect = [first, httpx.Response(503), httpx.Response(200, json={})]
    response = await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    assert response.status_code == 202
    await eventually(lambda: delivered(database))
    assert route.call_count == 3
    assert sent(route) == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK"]}
    (row,) = await outbox(database)
    # A refused connection is retried at once, within the same attempt.
    assert row["attempts"] == (2 if failure == "connect" else 3)


@pytest.mark.parametrize("status", [400, 404])
async def test_a_4xx_from_google_is_final(
    gate: Gate,
    backend: dict[str, str],
    decision_id: str,
    google: respx.MockRouter,
    database: str,
    status: int,
) -> None:
    route = google.post(ANNOTATE).respond(status, json={"error": {"status": "INVALID_ARGUMENT"}})
    response = await report(gate, backend, decision_id, "fraudulent", ["chargeback"])
    assert response.status_code == 202

    async def given_up() -> bool:
        return [row["status"] for row in await outbox(database)] == ["rejected"]

    await eventually(given_up)
    await asyncio.sleep(0.5)  # several outbox rounds and back-off periods
    assert route.call_count == 1


async def test_delivery_survives_a_restart(
    settings: Settings, google: respx.MockRouter, service_account: dict[str, str], database: str
) -> None:
    google.post(ASSESSMENTS).respond(json=assessment_json())
    route = google.post(ANNOTATE).respond(503)
    async with running(create_app(settings)) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        decision = await assessed_decision(gate, backend)
        response = await report(gate, backend, decision, "fraudulent", ["chargeback"])
        assert response.status_code == 202

        async def tried() -> bool:
            rows = await outbox(database)
            return bool(rows[0]["attempts"] >= 1 and rows[0]["last_error"] == "server_error")

        await eventually(tried)
    # The app is stopped; the annotation is still owed.
    (row,) = await outbox(database)
    assert row["status"] == "pending"
    attempts_before = route.call_count
    assert attempts_before >= 1

    route.respond(200, json={})
    async with running(create_app(settings)):
        await eventually(lambda: delivered(database))
    assert route.call_count == attempts_before + 1
    assert sent(route) == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK"]}


async def test_a_delivery_cut_short_by_a_shutdown_is_made_by_the_next_app(
    settings: Settings, google: respx.MockRouter, service_account: dict[str, str], database: str
) -> None:
    google.post(ASSESSMENTS).respond(json=assessment_json())
    in_flight = asyncio.Event()

    async def hanging_google(_request: httpx.Request) -> httpx.Response:
        in_flight.set()
        await asyncio.sleep(30)
        return httpx.Response(200, json={})

    route = google.post(ANNOTATE)
    route.side_effect = hanging_google
    async with running(create_app(settings)) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        decision = await assessed_decision(gate, backend)
        await report(gate, backend, decision, "legitimate", ["transaction_accepted"])
        await asyncio.wait_for(in_flight.wait(), 5)
    # Stopped mid-call: the next app must not wait for a lease the old one left behind.
    route.side_effect = None
    route.respond(json={})
    async with running(create_app(settings)):
        await eventually(lambda: delivered(database))
    assert sent(route) == {"annotation": "LEGITIMATE", "reasons": ["TRANSACTION_ACCEPTED"]}


async def test_a_report_wakes_the_outbox_without_waiting_for_its_poll(
    make_settings: Any, google: respx.MockRouter, service_account: dict[str, str], database: str
) -> None:
    google.post(ASSESSMENTS).respond(json=assessment_json())
    route = google.post(ANNOTATE).respond(json={})
    async with running(create_app(make_settings(outbox_poll_seconds=60))) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        decision = await assessed_decision(gate, backend)
        for outcome in ("legitimate", "fraudulent"):
            await report(gate, backend, decision, outcome, [])
            await eventually(functools.partial(_sent_outcome, route, outcome.upper()), timeout=2)
    assert route.call_count == 2


async def _sent_outcome(route: respx.Route, annotation: str) -> bool:
    return route.called and sent(route)["annotation"] == annotation
