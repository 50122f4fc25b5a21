"""The reason table of POST /sessions/authorize, end to end: the real server, tokens minted by
the emulator, and the emulator's own record of what Google was asked."""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer
from tests.conftest import ADMIN, AUTHORIZE_RESPONSE_FIELDS
from tests.e2e.conftest import ACTION, HOSTNAME, Tenant, create_tenant

ASSESSMENT_NAME = re.compile(r"^projects/\d{12}/assessments/[0-9a-f]{16}$")
DECISION_FIELDS = AUTHORIZE_RESPONSE_FIELDS


def f32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def assessed(tenant: Tenant, answer: dict[str, Any], *, valid: bool = True) -> None:
    """The answer names the one assessment the emulator made for this call."""
    assert set(answer) == DECISION_FIELDS
    assert answer["upstream_error"] is None
    assert answer["assessment_name"] is not None
    assert ASSESSMENT_NAME.match(answer["assessment_name"])
    assert answer["assessment_name"] in tenant.assessments()
    record = tenant.state.assessments[answer["assessment_name"]]
    assert record.answer["tokenProperties"]["valid"] is valid


def not_assessed(tenant: Tenant, answer: dict[str, Any]) -> None:
    """No assessment: the contract's empty fields, and nothing reached the emulator."""
    assert set(answer) == DECISION_FIELDS
    assert answer["verdict"] in (None, "fail")
    assert answer["score"] is None
    assert answer["assessment_name"] is None
    assert answer["token_invalid_reason"] is None
    assert answer["risk_reasons"] == []
    assert answer["upstream_error"] is None
    assert tenant.assessment_requests() == []


async def test_score_ok(tenant: Tenant) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    answer = await tenant.decide(
        tenant.token(),
        session_ref="backend-session-123",
        evse_id="DE*ACM*E1234*1",
        user_ip="203.0.113.7",
        user_agent="Mozilla/5.0 (e2e)",
    )

    assert answer["decision_id"].startswith("dec_")
    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "allow",
        "pass",
        "score_ok",
    )
    assert (answer["score"], answer["threshold"], answer["mode"]) == (0.9, 0.5, "enforce")
    assert answer["token_invalid_reason"] is None
    assert answer["risk_reasons"] == []
    assert before <= datetime.fromisoformat(answer["evaluated_at"]) <= datetime.now(UTC)
    assessed(tenant, answer)
    properties = tenant.state.assessments[answer["assessment_name"]].answer["tokenProperties"]
    assert (properties["hostname"], properties["action"]) == (HOSTNAME, ACTION)
    # What Google was sent: the token, the policy's site key and action, the driver's details.
    [sent] = tenant.assessment_requests()
    assert sent["event"] == {
        "token": sent["event"]["token"],
        "siteKey": tenant.site_key,
        "expectedAction": ACTION,
        "userIpAddress": "203.0.113.7",
        "userAgent": "Mozilla/5.0 (e2e)",
    }


@pytest.mark.parametrize("score", [0.1, 0.3, 0.5, 0.7, 0.9])
async def test_float32_score_is_rounded_then_compared(tenant: Tenant, score: float) -> None:
    # The emulator sends the float32 Google sends (0.7 → 0.699999988079071): compared raw, a
    # score equal to the threshold would be denied.
    await tenant.set_policy(score_threshold=score)
    answer = await tenant.decide(tenant.token(score=score))

    record = tenant.state.assessments[answer["assessment_name"]].answer
    assert record["riskAnalysis"]["score"] == f32(score)
    assert (answer["reason"], answer["score"], answer["threshold"]) == ("score_ok", score, score)
    assert answer["decision"] == "allow"


async def test_score_below_threshold(tenant: Tenant) -> None:
    await tenant.set_policy(score_threshold=0.7)
    answer = await tenant.decide(tenant.token(score=0.6, reasons=["AUTOMATION", "NEW_REASON_X"]))

    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "deny",
        "fail",
        "score_below_threshold",
    )
    assert (answer["score"], answer["threshold"]) == (0.6, 0.7)
    # Google's risk reasons are passed through as sent, known or not.
    assert answer["risk_reasons"] == ["AUTOMATION", "NEW_REASON_X"]
    assessed(tenant, answer)


@pytest.mark.parametrize("token", [None, "", "null"])
async def test_token_missing(tenant: Tenant, token: str | None) -> None:
    body: dict[str, Any] = {} if token is None else {"token": None if token == "null" else token}
    answer = await tenant.decide(**body)

    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "deny",
        "fail",
        "token_missing",
    )
    assert answer["threshold"] == 0.5
    not_assessed(tenant, answer)


async def test_token_reused(tenant: Tenant) -> None:
    token = tenant.token()
    first = await tenant.decide(token)
    second = await tenant.decide(token)

    assert first["reason"] == "score_ok"
    assert (second["decision"], second["verdict"], second["reason"]) == (
        "deny",
        "fail",
        "token_reused",
    )
    assert second["decision_id"] != first["decision_id"]
    assert second["assessment_name"] is None
    # Checked before calling Google: the emulator saw the token exactly once (never DUPE).
    assert len(tenant.assessment_requests()) == 1
    assert tenant.assessments() == [first["assessment_name"]]


async def test_token_reused_across_operators(
    tenant: Tenant, http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    other = await create_tenant(http, emulator)
    token = tenant.token()
    assert (await tenant.decide(token))["reason"] == "score_ok"

    answer = await other.decide(token)

    assert answer["reason"] == "token_reused"
    assert other.assessment_requests() == []


async def test_garbage_token_is_malformed(tenant: Tenant) -> None:
    answer = await tenant.decide("not-a-recaptcha-token")

    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "deny",
        "fail",
        "token_invalid",
    )
    assert answer["token_invalid_reason"] == "MALFORMED"
    assert answer["score"] == 0.0
    assessed(tenant, answer, valid=False)


async def test_expired_token(tenant: Tenant) -> None:
    answer = await tenant.decide(tenant.token(age_seconds=125))

    assert (answer["decision"], answer["reason"], answer["token_invalid_reason"]) == (
        "deny",
        "token_invalid",
        "EXPIRED",
    )
    assessed(tenant, answer, valid=False)


async def test_token_of_another_site_key(tenant: Tenant) -> None:
    other_key = tenant.state.add_key(tenant.project_id)
    answer = await tenant.decide(tenant.token(site_key=other_key))

    assert (answer["decision"], answer["reason"], answer["token_invalid_reason"]) == (
        "deny",
        "token_invalid",
        "KEY_MISMATCH",
    )
    assessed(tenant, answer, valid=False)
    [sent] = tenant.assessment_requests()
    assert sent["event"]["siteKey"] == tenant.site_key


async def test_unknown_invalid_reason_is_passed_through(tenant: Tenant) -> None:
    # Google adds invalidReason values; one the gate has never heard of is not an error.
    other_key = tenant.state.add_key(tenant.project_id)
    tenant.state.key_mismatch_reason = "BRAND_NEW_REASON"
    try:
        answer = await tenant.decide(tenant.token(site_key=other_key))
    finally:
        tenant.state.key_mismatch_reason = "KEY_MISMATCH"

    assert (answer["decision"], answer["reason"], answer["token_invalid_reason"]) == (
        "deny",
        "token_invalid",
        "BRAND_NEW_REASON",
    )


async def test_domain_outside_the_site_key_is_token_invalid(
    http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    tenant = await create_tenant(http, emulator)
    key = emulator.state.add_key(tenant.project_id, allowed_domains=["acme.example"])
    await tenant.set_policy(site_key=key)

    answer = await tenant.decide(tenant.token(site_key=key, hostname="evil.example"))

    assert (answer["reason"], answer["token_invalid_reason"]) == (
        "token_invalid",
        "DOMAIN_MISMATCH",
    )


async def test_action_mismatch(tenant: Tenant) -> None:
    answer = await tenant.decide(tenant.token(action="login"))

    assert (answer["decision"], answer["verdict"], answer["reason"]) == (
        "deny",
        "fail",
        "action_mismatch",
    )
    assert answer["score"] == 0.9
    assessed(tenant, answer)


async def test_action_compares_case_insensitively_and_follows_the_request(
    tenant: Tenant,
) -> None:
    mixed_case = await tenant.decide(tenant.token(action="Start_Session"))
    overridden = await tenant.decide(tenant.token(action="resume"), expected_action="resume")
    wrong_override = await tenant.decide(tenant.token(), expected_action="resume")

    assert mixed_case["reason"] == "score_ok"
    assert overridden["reason"] == "score_ok"
    assert wrong_override["reason"] == "action_mismatch"
    assert [sent["event"]["expectedAction"] for sent in tenant.assessment_requests()] == [
        ACTION,
        "resume",
        "resume",
    ]


async def test_hostname_mismatch(tenant: Tenant) -> None:
    await tenant.set_policy(allowed_hostnames=["acme.example"])

    wrong = await tenant.decide(tenant.token(hostname="evil.example"))
    lookalike = await tenant.decide(tenant.token(hostname="notacme.example"))
    subdomain = await tenant.decide(tenant.token(hostname="PORTAL.Acme.Example"))

    assert (wrong["decision"], wrong["verdict"], wrong["reason"]) == (
        "deny",
        "fail",
        "hostname_mismatch",
    )
    assert lookalike["reason"] == "hostname_mismatch"
    assert subdomain["reason"] == "score_ok"
    assessed(tenant, wrong)


async def test_any_hostname_when_none_listed(tenant: Tenant) -> None:
    answer = await tenant.decide(tenant.token(hostname="anything.example"))
    assert answer["reason"] == "score_ok"


async def test_token_too_old(tenant: Tenant) -> None:
    await tenant.set_policy(max_token_age_seconds=30)

    old = await tenant.decide(tenant.token(age_seconds=60))
    fresh = await tenant.decide(tenant.token(age_seconds=10))

    # Still valid at Google (under 120 s), but older than the operator allows.
    assert (old["decision"], old["verdict"], old["reason"]) == ("deny", "fail", "token_too_old")
    assert old["score"] == 0.9
    assessed(tenant, old)
    assert fresh["reason"] == "score_ok"


async def test_checks_run_in_the_contract_order(tenant: Tenant) -> None:
    # Wrong action, wrong hostname, too old and a low score at once: the action names it.
    await tenant.set_policy(allowed_hostnames=["acme.example"], max_token_age_seconds=30)
    everything_wrong = tenant.token(action="login", hostname="evil.example", age_seconds=60)
    host_and_age = tenant.token(hostname="evil.example", age_seconds=60, score=0.1)
    age_and_score = tenant.token(hostname="portal.acme.example", age_seconds=60, score=0.1)

    assert (await tenant.decide(everything_wrong))["reason"] == "action_mismatch"
    assert (await tenant.decide(host_and_age))["reason"] == "hostname_mismatch"
    assert (await tenant.decide(age_and_score))["reason"] == "token_too_old"


async def test_protection_disabled(http: httpx.AsyncClient, emulator: EmulatorServer) -> None:
    tenant = await create_tenant(http, emulator, enabled=False)
    token = tenant.token()

    with_token = await tenant.decide(token)
    without_token = await tenant.decide()

    for answer in (with_token, without_token):
        assert (answer["decision"], answer["verdict"], answer["reason"], answer["mode"]) == (
            "allow",
            None,
            "protection_disabled",
            "disabled",
        )
        not_assessed(tenant, answer)
    # No call reached Google: the token is still unused there.
    claims = tenant.state.read_token(token)
    assert claims is not None
    assert claims.nonce not in tenant.state.used_tokens


async def test_monitor_mode_allows_and_names_the_would_be_reason(tenant: Tenant) -> None:
    await tenant.set_policy(mode="monitor", score_threshold=0.7)
    token = tenant.token(score=0.3)

    low = await tenant.decide(token)
    reused = await tenant.decide(token)
    good = await tenant.decide(tenant.token())
    missing = await tenant.decide()

    assert (low["decision"], low["verdict"], low["reason"], low["mode"]) == (
        "allow",
        "fail",
        "score_below_threshold",
        "monitor",
    )
    assert low["score"] == 0.3
    assessed(tenant, low)
    assert (reused["decision"], reused["reason"]) == ("allow", "token_reused")
    assert (good["decision"], good["verdict"], good["reason"]) == ("allow", "pass", "score_ok")
    assert (missing["decision"], missing["reason"]) == ("allow", "token_missing")


async def test_decisions_are_listed_without_the_token(tenant: Tenant) -> None:
    token = tenant.token()
    answer = await tenant.decide(token, session_ref="ref-1", evse_id="DE*ACM*E1*1")

    response = await tenant.http.get(f"/operators/{tenant.operator_id}/decisions", headers=ADMIN)

    assert response.status_code == 200, response.text
    [item] = response.json()["items"]
    assert item == {**answer, "session_ref": "ref-1", "evse_id": "DE*ACM*E1*1", "outcome": None}
    assert token not in response.text


async def test_canonical_proto3_answers(tenant: Tenant) -> None:
    # Google's JSON may leave out default values ("score": 0, "valid": false, empty lists).
    tenant.state.emit_defaults = False
    try:
        valid = await tenant.decide(tenant.token(score=0.7))
        garbage = await tenant.decide("garbage")
        low = await tenant.decide(tenant.token(score=0.0))
    finally:
        tenant.state.emit_defaults = True

    assert (valid["reason"], valid["score"], valid["risk_reasons"]) == ("score_ok", 0.7, [])
    assert (garbage["reason"], garbage["token_invalid_reason"]) == ("token_invalid", "MALFORMED")
    assert (low["reason"], low["score"]) == ("score_below_threshold", 0.0)
