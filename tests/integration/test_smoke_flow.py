from __future__ import annotations

import respx

from tests.conftest import ADMIN, GOOGLE, PROJECT, Gate, assessment_json, bearer


async def test_authorize_allows_a_good_token(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    backend = await gate.create_key("backend", ["acme"])
    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json()
    )
    response = await gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "acme", "token": "tok-1"},
        headers=bearer(backend["key"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "allow"
    assert body["reason"] == "score_ok"
    assert body["score"] == 0.9
    assert route.call_count == 1
    listing = await gate.client.get("/operators/acme/decisions", headers=ADMIN)
    assert listing.json()["items"][0]["decision_id"] == body["decision_id"]
