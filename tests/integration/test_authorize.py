"""POST /sessions/authorize over HTTP, with Google as respx routes."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from google.auth import jwt

from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    ADMIN,
    AUTHORIZE_RESPONSE_FIELDS,
    GOOGLE,
    PROJECT,
    SITE_KEY,
    Gate,
    assessment_json,
    bearer,
    count_rows,
    running,
)

AUTHORIZE = "/sessions/authorize"
ASSESSMENTS = f"{GOOGLE}/v1/projects/{PROJECT}/assessments"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
RESPONSE_FIELDS = AUTHORIZE_RESPONSE_FIELDS


def new_token() -> str:
    return "03AFcWeA-" + secrets.token_urlsafe(48)


def google_calls(google: respx.MockRouter) -> list[Any]:
    """The calls that went to Google (not the test client's calls to the app)."""
    return [call for call in google.calls if not call.request.url.host.startswith("chargegate")]


def google_assessment(create_time: float | None = None, **fields: Any) -> dict[str, Any]:
    """assessment_json made now; `create_time` in seconds from now."""
    if create_time is not None:
        moment = datetime.now(UTC) + timedelta(seconds=create_time)
        fields["create_time"] = moment.isoformat().replace("+00:00", "Z")
    return assessment_json(**fields)


@pytest.fixture
def assessments(google: respx.MockRouter) -> respx.Route:
    return google.post(ASSESSMENTS)


async def authorize(gate: Gate, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await gate.client.post(
        AUTHORIZE, json={"operator_id": "acme", **body}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    assert answer.keys() == RESPONSE_FIELDS
    return answer


def sent_to_google(route: respx.Route) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls.last.request.content)
    return body


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Gate]:
    async with running(create_app(settings)) as client:
        yield Gate(client)


# --- the answer ---------------------------------------------------------------------------


async def test_allow_answer_has_exactly_the_contract_fields(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    policy = await gate.set_policy("acme", score_threshold=0.7)
    assessments.respond(
        json=assessment_json(score=0.8999999761581421, reasons=["LOW_CONFIDENCE_SCORE"])
    )
    before = datetime.now(UTC)
    answer = await authorize(gate, backend, token=new_token())
    after = datetime.now(UTC)

    assert assessments.call_count == 1
    decision_id = answer.pop("decision_id")
    evaluated_at = answer.pop("evaluated_at")
    assert answer == {
        "decision": "allow",
        "verdict": "pass",
        "reason": "score_ok",
        "score": 0.9,
        "threshold": 0.7,
        "mode": "enforce",
        "policy_version": policy["version"],
        "assessment_name": "projects/123456789/assessments/abc123",
        "token_invalid_reason": None,
        "risk_reasons": ["LOW_CONFIDENCE_SCORE"],
        "upstream_error": None,
    }
    assert isinstance(decision_id, str)
    assert decision_id
    assert RFC3339_Z.match(evaluated_at), evaluated_at
    moment = datetime.fromisoformat(evaluated_at)
    assert before - timedelta(seconds=1) <= moment <= after + timedelta(seconds=1)
    assert await count_rows(database, "decisions") == 1


async def test_decision_ids_are_unique(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    assessments.respond(json=assessment_json())
    ids = {(await authorize(gate, backend, token=new_token()))["decision_id"] for _ in range(5)}
    assert len(ids) == 5
    assert assessments.call_count == 5


# --- every reason end to end --------------------------------------------------------------


@pytest.mark.parametrize(
    ("assessment", "policy", "reason", "score"),
    [
        ({"score": 0.8999999761581421}, {}, "score_ok", 0.9),
        ({"score": 0.30000001192092896}, {}, "score_below_threshold", 0.3),
        ({"score": 0.44999998807907104}, {}, "score_below_threshold", 0.4),
        ({"score": 0.4999999}, {}, "score_ok", 0.5),
        ({"score": 0.8999999761581421}, {"score_threshold": 0.9}, "score_ok", 0.9),
        ({"action": "login"}, {}, "action_mismatch", 0.9),
        ({"action": ""}, {}, "action_mismatch", 0.9),
        ({"action": "START_SESSION"}, {}, "score_ok", 0.9),
        (
            {"hostname": "portal.evil.example"},
            {"allowed_hostnames": ["acme.example"]},
            "hostname_mismatch",
            0.9,
        ),
        (
            {"hostname": "Portal.ACME.example"},
            {"allowed_hostnames": ["acme.example"]},
            "score_ok",
            0.9,
        ),
        ({"create_time": -600}, {}, "token_too_old", 0.9),
        (
            {"create_time": -150},
            {"max_token_age_seconds": 60},
            "token_too_old",
            0.9,
        ),
    ],
)
async def test_assessment_reasons(
    gate: Gate,
    backend: dict[str, str],
    assessments: respx.Route,
    assessment: dict[str, Any],
    policy: dict[str, Any],
    reason: str,
    score: float,
) -> None:
    if policy:
        await gate.set_policy("acme", **policy)
    assessments.respond(json=google_assessment(**assessment))
    answer = await authorize(gate, backend, token=new_token())
    assert assessments.call_count == 1
    assert answer["reason"] == reason
    assert answer["score"] == score
    passed = reason == "score_ok"
    assert answer["decision"] == ("allow" if passed else "deny")
    assert answer["verdict"] == ("pass" if passed else "fail")
    assert answer["assessment_name"] == "projects/123456789/assessments/abc123"
    assert answer["token_invalid_reason"] is None
    assert answer["upstream_error"] is None


@pytest.mark.parametrize("invalid_reason", ["EXPIRED", "DUPE", "A_REASON_GOOGLE_ADDS_LATER"])
async def test_token_invalid_passes_googles_reason_through(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, invalid_reason: str
) -> None:
    assessments.respond(
        json=assessment_json(valid=False, invalid_reason=invalid_reason, score=0.0, action="")
    )
    answer = await authorize(gate, backend, token=new_token())
    assert assessments.call_count == 1
    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "deny",
        "fail",
        "token_invalid",
    )
    assert answer["token_invalid_reason"] == invalid_reason


async def test_unknown_risk_reasons_are_passed_through(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    reasons = ["AUTOMATION", "SUSPECTED_CARDING", "SOMETHING_GOOGLE_ADDS_LATER"]
    assessments.respond(json=assessment_json(score=0.1, reasons=reasons))
    answer = await authorize(gate, backend, token=new_token())
    assert answer["reason"] == "score_below_threshold"
    assert answer["risk_reasons"] == reasons


async def test_a_zero_score_google_leaves_out_is_below_threshold(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    body = assessment_json()
    del body["riskAnalysis"]["score"]
    assessments.respond(json=body)
    answer = await authorize(gate, backend, token=new_token())
    assert assessments.call_count == 1
    assert (answer["reason"], answer["score"]) == ("score_below_threshold", 0.0)


@pytest.mark.parametrize("token", ["omitted", None, ""])
async def test_token_missing_makes_no_google_call(
    gate: Gate,
    backend: dict[str, str],
    google: respx.MockRouter,
    assessments: respx.Route,
    database: str,
    token: str | None,
) -> None:
    assessments.respond(json=assessment_json())
    body = {} if token == "omitted" else {"token": token}
    answer = await authorize(gate, backend, **body)
    answer.pop("decision_id")
    answer.pop("evaluated_at")
    assert answer == {
        "decision": "deny",
        "verdict": "fail",
        "reason": "token_missing",
        "score": None,
        "threshold": 0.5,
        "mode": "enforce",
        "policy_version": 2,
        "assessment_name": None,
        "token_invalid_reason": None,
        "risk_reasons": [],
        "upstream_error": None,
    }
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 1
    assert await count_rows(database, "token_claims") == 0


async def test_a_second_presentation_of_a_token_is_reused_without_a_google_call(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter, assessments: respx.Route
) -> None:
    assessments.respond(json=assessment_json())
    token = new_token()
    first = await authorize(gate, backend, token=token)
    second = await authorize(gate, backend, token=token)
    assert first["reason"] == "score_ok"
    second.pop("decision_id")
    second.pop("evaluated_at")
    assert second == {
        "decision": "deny",
        "verdict": "fail",
        "reason": "token_reused",
        "score": None,
        "threshold": 0.5,
        "mode": "enforce",
        "policy_version": 2,
        "assessment_name": None,
        "token_invalid_reason": None,
        "risk_reasons": [],
        "upstream_error": None,
    }
    assert assessments.call_count == 1
    assert len(google_calls(google)) == 1


async def test_token_reuse_is_service_wide_across_operators(
    gate: Gate, service_account: dict[str, str], google: respx.MockRouter, assessments: respx.Route
) -> None:
    await gate.protected_operator(service_account, "acme")
    await gate.protected_operator(service_account, "bravo")
    acme = bearer((await gate.create_key("backend", ["acme"]))["key"])
    bravo = bearer((await gate.create_key("backend", ["bravo"]))["key"])
    assessments.respond(json=assessment_json())
    token = new_token()
    first = await gate.client.post(
        AUTHORIZE, json={"operator_id": "acme", "token": token}, headers=acme
    )
    second = await gate.client.post(
        AUTHORIZE, json={"operator_id": "bravo", "token": token}, headers=bravo
    )
    assert first.json()["reason"] == "score_ok"
    assert second.json()["reason"] == "token_reused"
    assert second.json()["decision"] == "deny"
    assert assessments.call_count == 1
    assert len(google_calls(google)) == 1


async def test_concurrent_presentations_of_one_token_make_one_assessment(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    async def slow_google(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(200, json=assessment_json())

    route = google.post(ASSESSMENTS)
    route.side_effect = slow_google
    token = new_token()
    answers = await asyncio.gather(*(authorize(gate, backend, token=token) for _ in range(8)))
    reasons = sorted(answer["reason"] for answer in answers)
    assert reasons == ["score_ok"] + ["token_reused"] * 7
    assert len({answer["decision_id"] for answer in answers}) == 8
    assert route.call_count == 1


async def test_a_token_google_failed_on_is_not_sent_again(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    assessments.respond(503)
    token = new_token()
    first = await authorize(gate, backend, token=token)
    second = await authorize(gate, backend, token=token)
    assert (first["reason"], first["upstream_error"]) == ("upstream_unavailable", "server_error")
    assert second["reason"] == "token_reused"
    assert assessments.call_count == 1


async def test_token_reuse_still_counts_in_monitor_mode(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    await gate.set_policy("acme", mode="monitor")
    assessments.respond(json=assessment_json())
    token = new_token()
    await authorize(gate, backend, token=token)
    second = await authorize(gate, backend, token=token)
    assert (second["decision"], second["verdict"], second["reason"], second["mode"]) == (
        "allow",
        "fail",
        "token_reused",
        "monitor",
    )
    assert assessments.call_count == 1


@pytest.mark.parametrize("token", ["omitted", "given"])
async def test_disabled_policy_allows_without_a_google_call(
    gate: Gate, google: respx.MockRouter, assessments: respx.Route, database: str, token: str
) -> None:
    await gate.create_operator("acme")
    policy = await gate.set_policy("acme", score_threshold=0.7)
    key = await gate.create_key("backend", ["acme"])
    assessments.respond(json=assessment_json())
    body = {"token": new_token()} if token == "given" else {}
    answer = await authorize(gate, bearer(key["key"]), **body)
    answer.pop("decision_id")
    answer.pop("evaluated_at")
    assert answer == {
        "decision": "allow",
        "verdict": None,
        "reason": "protection_disabled",
        "score": None,
        "threshold": 0.7,
        "mode": "disabled",
        "policy_version": policy["version"],
        "assessment_name": None,
        "token_invalid_reason": None,
        "risk_reasons": [],
        "upstream_error": None,
    }
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 1
    assert await count_rows(database, "token_claims") == 0


# --- monitor mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assessment", "reason", "verdict"),
    [
        ({}, "score_ok", "pass"),
        ({"score": 0.1}, "score_below_threshold", "fail"),
        ({"valid": False, "invalid_reason": "EXPIRED"}, "token_invalid", "fail"),
        ({"action": "login"}, "action_mismatch", "fail"),
        ({"create_time": -600}, "token_too_old", "fail"),
    ],
)
async def test_monitor_mode_allows_and_says_what_enforcement_would_do(
    gate: Gate,
    backend: dict[str, str],
    assessments: respx.Route,
    assessment: dict[str, Any],
    reason: str,
    verdict: str,
) -> None:
    await gate.set_policy("acme", mode="monitor")
    assessments.respond(json=google_assessment(**assessment))
    answer = await authorize(gate, backend, token=new_token())
    assert assessments.call_count == 1
    assert (answer["decision"], answer["verdict"], answer["reason"], answer["mode"]) == (
        "allow",
        verdict,
        reason,
        "monitor",
    )


async def test_monitor_mode_allows_a_missing_token(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter
) -> None:
    await gate.set_policy("acme", mode="monitor")
    answer = await authorize(gate, backend)
    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "allow",
        "fail",
        "token_missing",
    )
    assert google_calls(google) == []


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_monitor_mode_allows_when_google_is_unavailable(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, fail_mode: str
) -> None:
    await gate.set_policy("acme", mode="monitor", fail_mode=fail_mode)
    assessments.respond(503)
    answer = await authorize(gate, backend, token=new_token())
    assert assessments.call_count == 1
    assert (answer["decision"], answer["verdict"], answer["reason"], answer["upstream_error"]) == (
        "allow",
        None,
        "upstream_unavailable",
        "server_error",
    )


# --- what is sent to Google ---------------------------------------------------------------


async def test_request_to_google_carries_the_event_and_a_bearer_token(
    gate: Gate,
    backend: dict[str, str],
    assessments: respx.Route,
    rsa_private_key_pem: str,
    service_account: dict[str, str],
) -> None:
    assessments.respond(json=assessment_json())
    token = new_token()
    await authorize(
        gate,
        backend,
        token=token,
        user_ip="203.0.113.7",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) chargegate-test",
        session_ref="backend-session-123",
        evse_id="DE*ACM*E1234*1",
    )
    assert assessments.call_count == 1
    request = assessments.calls.last.request
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert sent_to_google(assessments) == {
        "event": {
            "token": token,
            "siteKey": SITE_KEY,
            "expectedAction": "start_session",
            "userIpAddress": "203.0.113.7",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) chargegate-test",
        }
    }
    scheme, _, access_token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    public_pem = _public_pem(rsa_private_key_pem)
    claims = jwt.decode(access_token, certs=public_pem, verify=True)  # type: ignore[no-untyped-call]
    assert claims["iss"] == service_account["client_email"]
    assert "x-goog-api-key" not in request.headers


async def test_access_token_is_reused_across_calls(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    assessments.respond(json=assessment_json())
    await authorize(gate, backend, token=new_token())
    await authorize(gate, backend, token=new_token())
    first, second = (call.request.headers["authorization"] for call in assessments.calls)
    assert first == second


async def test_optional_event_fields_are_left_out(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    assessments.respond(json=assessment_json())
    token = new_token()
    await authorize(gate, backend, token=token)
    assert sent_to_google(assessments) == {
        "event": {"token": token, "siteKey": SITE_KEY, "expectedAction": "start_session"}
    }


async def test_expected_action_defaults_to_the_policys_and_the_request_overrides_it(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    await gate.set_policy("acme", expected_action="unlock_connector")
    assessments.respond(json=assessment_json(action="unlock_connector"))
    default = await authorize(gate, backend, token=new_token())
    assert sent_to_google(assessments)["event"]["expectedAction"] == "unlock_connector"
    assert default["reason"] == "score_ok"

    overridden = await authorize(gate, backend, token=new_token(), expected_action="start_session")
    assert sent_to_google(assessments)["event"]["expectedAction"] == "start_session"
    # The token says unlock_connector, the request expected start_session.
    assert overridden["reason"] == "action_mismatch"
    assert assessments.call_count == 2


async def test_ipv6_user_ip_is_sent(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    assessments.respond(json=assessment_json())
    await authorize(gate, backend, token=new_token(), user_ip="2001:DB8:0:0::7")
    sent = sent_to_google(assessments)["event"]["userIpAddress"]
    assert ipaddress.ip_address(sent) == ipaddress.ip_address("2001:db8::7")


async def test_api_key_credentials_are_sent_as_x_goog_api_key(
    gate: Gate, assessments: respx.Route
) -> None:
    await gate.protected_operator({"type": "api_key", "api_key": "AIzaSyTEST-the-api-key"})
    key = await gate.create_key("backend", ["acme"])
    assessments.respond(json=assessment_json())
    answer = await authorize(gate, bearer(key["key"]), token=new_token())
    assert answer["reason"] == "score_ok"
    request = assessments.calls.last.request
    assert request.headers["x-goog-api-key"] == "AIzaSyTEST-the-api-key"
    assert "authorization" not in request.headers


def _public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- Google unavailable -------------------------------------------------------------------


def _status(code: int, **kwargs: Any) -> Callable[[respx.Route], None]:
    def setup(route: respx.Route) -> None:
        route.respond(code, **kwargs)

    return setup


def _connect_refused(route: respx.Route) -> None:
    route.side_effect = httpx.ConnectError("connection refused")


UPSTREAM_FAILURES: list[tuple[str, Callable[[respx.Route], None], str]] = [
    ("429", _status(429, json={"error": {"status": "RESOURCE_EXHAUSTED"}}), "rate_limited"),
    ("401", _status(401, json={"error": {"status": "UNAUTHENTICATED"}}), "credentials_rejected"),
    ("403", _status(403, json={"error": {"status": "PERMISSION_DENIED"}}), "credentials_rejected"),
    ("400", _status(400, json={"error": {"status": "INVALID_ARGUMENT"}}), "bad_request"),
    ("404", _status(404, json={"error": {"status": "NOT_FOUND"}}), "bad_request"),
    ("500", _status(500), "server_error"),
    ("503", _status(503, text="Service Unavailable"), "server_error"),
    ("200 html", _status(200, text="<html>not json</html>"), "bad_response"),
    ("200 array", _status(200, json=[1, 2]), "bad_response"),
    ("200 no name", _status(200, json={"riskAnalysis": {"score": 0.9}}), "bad_response"),
]


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
@pytest.mark.parametrize(
    ("setup", "kind"),
    [case[1:] for case in UPSTREAM_FAILURES],
    ids=[case[0] for case in UPSTREAM_FAILURES],
)
async def test_google_http_failures_follow_fail_mode(
    gate: Gate,
    backend: dict[str, str],
    assessments: respx.Route,
    setup: Callable[[respx.Route], None],
    kind: str,
    fail_mode: str,
) -> None:
    policy = await gate.set_policy("acme", fail_mode=fail_mode)
    setup(assessments)
    answer = await authorize(gate, backend, token=new_token())
    # The request reached Google: it is never sent a second time.
    assert assessments.call_count == 1
    answer.pop("decision_id")
    answer.pop("evaluated_at")
    assert answer == {
        "decision": "allow" if fail_mode == "open" else "deny",
        "verdict": None,
        "reason": "upstream_unavailable",
        "score": None,
        "threshold": 0.5,
        "mode": "enforce",
        "policy_version": policy["version"],
        "assessment_name": None,
        "token_invalid_reason": None,
        "risk_reasons": [],
        "upstream_error": kind,
    }


async def warmed_up_backend_key(gate: Gate) -> dict[str, str]:
    """A backend key for acme, after one call without Google: database connections and
    the key cache are warm, so a timed call measures the upstream deadline only."""
    await gate.create_operator("warm")
    key = bearer((await gate.create_key("backend", ["acme", "warm"]))["key"])
    warm = await authorize(gate, key, operator_id="warm", token=new_token())
    assert warm["reason"] == "protection_disabled"
    return key


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_google_unreachable_is_retried_then_follows_fail_mode(
    make_settings: Any,
    service_account: dict[str, str],
    assessments: respx.Route,
    fail_mode: str,
) -> None:
    _connect_refused(assessments)
    async with started(make_settings(upstream_timeout_seconds=0.6)) as gate:
        await gate.protected_operator(service_account, fail_mode=fail_mode)
        key = await warmed_up_backend_key(gate)
        started_at = asyncio.get_running_loop().time()
        answer = await authorize(gate, key, token=new_token())
        elapsed = asyncio.get_running_loop().time() - started_at
    assert (answer["reason"], answer["upstream_error"]) == ("upstream_unavailable", "unreachable")
    assert answer["decision"] == ("allow" if fail_mode == "open" else "deny")
    # Refused connections never delivered the token: retried within the deadline.
    assert assessments.call_count >= 2
    assert elapsed < 0.6 + 0.5


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_google_too_slow_is_a_timeout_within_the_deadline(
    make_settings: Any,
    service_account: dict[str, str],
    assessments: respx.Route,
    fail_mode: str,
) -> None:
    attempts = 0

    async def slow(_request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(5)
        return httpx.Response(200, json=assessment_json())

    assessments.side_effect = slow
    async with started(make_settings(upstream_timeout_seconds=0.3)) as gate:
        await gate.protected_operator(service_account, fail_mode=fail_mode)
        key = await warmed_up_backend_key(gate)
        started_at = asyncio.get_running_loop().time()
        answer = await authorize(gate, key, token=new_token())
        elapsed = asyncio.get_running_loop().time() - started_at
    assert (answer["reason"], answer["upstream_error"]) == ("upstream_unavailable", "timeout")
    assert answer["decision"] == ("allow" if fail_mode == "open" else "deny")
    assert answer["verdict"] is None
    assert attempts == 1
    assert elapsed < 0.3 + 0.5


# --- who may call -------------------------------------------------------------------------


async def test_unknown_operator_is_404(gate: Gate, google: respx.MockRouter, database: str) -> None:
    key = await gate.create_key("backend", None)
    response = await gate.client.post(
        AUTHORIZE, json={"operator_id": "nobody", "token": new_token()}, headers=bearer(key["key"])
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 0


async def test_backend_key_of_another_operator_is_403(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter, database: str
) -> None:
    await gate.create_operator("bravo")
    bravo = await gate.create_key("backend", ["bravo"])
    token = new_token()
    response = await gate.client.post(
        AUTHORIZE, json={"operator_id": "acme", "token": token}, headers=bearer(bravo["key"])
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert token not in response.text
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 0
    assert await count_rows(database, "token_claims") == 0


async def test_operator_admin_key_may_not_authorize(
    gate: Gate, backend: dict[str, str], google: respx.MockRouter, database: str
) -> None:
    admin = await gate.create_key("operator_admin", ["acme"])
    response = await gate.client.post(
        AUTHORIZE, json={"operator_id": "acme", "token": new_token()}, headers=bearer(admin["key"])
    )
    assert response.status_code == 403
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cg_unknown-key"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["missing", "unknown", "not bearer"],
)
async def test_without_a_valid_key_is_401(
    gate: Gate,
    backend: dict[str, str],
    google: respx.MockRouter,
    database: str,
    headers: dict[str, str],
) -> None:
    response = await gate.client.post(
        AUTHORIZE, json={"operator_id": "acme", "token": new_token()}, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    assert google_calls(google) == []
    assert await count_rows(database, "decisions") == 0


async def test_backend_key_for_all_operators_and_platform_admin_may_authorize(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    everywhere = await gate.create_key("backend", None)
    assessments.respond(json=assessment_json())
    assert (await authorize(gate, bearer(everywhere["key"]), token=new_token()))[
        "reason"
    ] == "score_ok"
    assert (await authorize(gate, ADMIN, token=new_token()))["reason"] == "score_ok"
    assert assessments.call_count == 2


# --- recorded, and never the token --------------------------------------------------------


async def test_every_decision_is_recorded_before_the_answer(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    assessments.respond(json=assessment_json())
    token = new_token()
    bodies: list[dict[str, Any]] = [{"token": token}, {"token": token}, {}, {"token": new_token()}]
    for count, body in enumerate(bodies, start=1):
        answer = await authorize(gate, backend, **body)
        assert await count_rows(database, "decisions") == count
        row = await _decision_row(database, answer["decision_id"])
        assert row["reason"] == answer["reason"]
        assert row["decision"] == answer["decision"]


async def test_the_token_is_never_stored(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    good, failed = new_token(), new_token()
    assessments.respond(json=assessment_json())
    await authorize(gate, backend, token=good, session_ref="s-1", evse_id="DE*ACM*E1*1")
    await authorize(gate, backend, token=good)
    headers = {**backend, "Idempotency-Key": "k-1"}
    await authorize(gate, headers, token=new_token())
    assessments.respond(503)
    await authorize(gate, backend, token=failed)
    listing = await gate.client.get("/operators/acme/decisions", headers=ADMIN)

    dump = await _dump_tables(database, ["decisions", "token_claims", "idempotency_records"])
    assert await count_rows(database, "token_claims") == 3
    for token in (good, failed):
        assert token not in dump
        assert token not in listing.text


async def _decision_row(database: str, decision_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow("SELECT * FROM decisions WHERE decision_id = $1", decision_id)
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def _dump_tables(database: str, tables: list[str]) -> str:
    conn = await asyncpg.connect(database)
    try:
        rows = []
        for table in tables:
            rows += await conn.fetch(f'SELECT row_to_json(t)::text AS j FROM "{table}" t')
    finally:
        await conn.close()
    return "\n".join(str(row["j"]) for row in rows)
