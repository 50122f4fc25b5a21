"""The pure decision engine: the reason table of API.md, check order, rounding and modes."""

from __future__ import annotations

import dataclasses
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.decisions.engine import (
    DecisionMode,
    Evidence,
    Reason,
    TokenMissing,
    TokenReused,
    Verdict,
    evaluate,
    round_score,
)
from app.operators.policy import FailMode, Mode, PolicySnapshot
from app.recaptcha.types import Assessment, UpstreamErrorKind, UpstreamFailure

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
NAME = "projects/123456789/assessments/abc123"


def policy(**overrides: Any) -> PolicySnapshot:
    values: dict[str, Any] = {
        "version": 3,
        "enabled": True,
        "mode": Mode.ENFORCE,
        "score_threshold": 0.5,
        "expected_action": "start_session",
        "allowed_hostnames": (),
        "max_token_age_seconds": 120,
        "fail_mode": FailMode.CLOSED,
        "site_key": "6LcSiteKey",
        "gcp_project_id": "acme-project",
    }
    values.update(overrides)
    return PolicySnapshot(**values)


def assessment(**overrides: Any) -> Assessment:
    values: dict[str, Any] = {
        "name": NAME,
        "valid": True,
        "invalid_reason": "INVALID_REASON_UNSPECIFIED",
        "action": "start_session",
        "hostname": "portal.acme.example",
        "create_time": NOW - timedelta(seconds=5),
        "score": 0.8999999761581421,
        "reasons": (),
    }
    values.update(overrides)
    return Assessment(**values)


def judge(
    evidence: Evidence, pol: PolicySnapshot | None = None, expected: str = "start_session"
) -> Verdict:
    return evaluate(pol or policy(), expected, evidence, NOW)


# --- every reason of the table (enforce mode) ---------------------------------------------

REASON_TABLE: list[tuple[str, Evidence, PolicySnapshot, Reason, str, str | None]] = [
    ("score_ok", assessment(), policy(), Reason.SCORE_OK, "allow", "pass"),
    (
        "score_below_threshold",
        assessment(score=0.1),
        policy(),
        Reason.SCORE_BELOW_THRESHOLD,
        "deny",
        "fail",
    ),
    ("token_missing", TokenMissing(), policy(), Reason.TOKEN_MISSING, "deny", "fail"),
    ("token_reused", TokenReused(), policy(), Reason.TOKEN_REUSED, "deny", "fail"),
    (
        "token_invalid",
        assessment(valid=False, invalid_reason="EXPIRED", score=0.0, action="", hostname=""),
        policy(),
        Reason.TOKEN_INVALID,
        "deny",
        "fail",
    ),
    (
        "action_mismatch",
        assessment(action="login"),
        policy(),
        Reason.ACTION_MISMATCH,
        "deny",
        "fail",
    ),
    (
        "hostname_mismatch",
        assessment(hostname="evil.example"),
        policy(allowed_hostnames=("acme.example",)),
        Reason.HOSTNAME_MISMATCH,
        "deny",
        "fail",
    ),
    (
        "token_too_old",
        assessment(create_time=NOW - timedelta(seconds=121)),
        policy(),
        Reason.TOKEN_TOO_OLD,
        "deny",
        "fail",
    ),
    (
        "protection_disabled",
        assessment(),
        policy(enabled=False),
        Reason.PROTECTION_DISABLED,
        "allow",
        None,
    ),
    (
        "upstream_unavailable",
        UpstreamFailure(UpstreamErrorKind.SERVER_ERROR, 503),
        policy(),
        Reason.UPSTREAM_UNAVAILABLE,
        "deny",
        None,
    ),
]


@pytest.mark.parametrize(
    ("evidence", "pol", "reason", "decision", "verdict"),
    [row[1:] for row in REASON_TABLE],
    ids=[row[0] for row in REASON_TABLE],
)
def test_every_reason_of_the_table(
    evidence: Evidence, pol: PolicySnapshot, reason: Reason, decision: str, verdict: str | None
) -> None:
    result = judge(evidence, pol)
    assert (result.reason, result.decision, result.verdict) == (reason, decision, verdict)
    assert result.threshold == pol.score_threshold
    assert result.policy_version == 3


def test_every_reason_is_in_the_table() -> None:
    assert {row[3] for row in REASON_TABLE} == set(Reason)


# --- check order --------------------------------------------------------------------------

ALL_BAD = {
    "valid": False,
    "invalid_reason": "MALFORMED",
    "action": "login",
    "hostname": "evil.example",
    "create_time": None,
    "score": 0.1,
}


@pytest.mark.parametrize(
    ("fixed", "expected"),
    [
        ((), Reason.TOKEN_INVALID),
        (("valid",), Reason.ACTION_MISMATCH),
        (("valid", "action"), Reason.HOSTNAME_MISMATCH),
        (("valid", "action", "hostname"), Reason.TOKEN_TOO_OLD),
        (("valid", "action", "hostname", "create_time"), Reason.SCORE_BELOW_THRESHOLD),
        (("valid", "action", "hostname", "create_time", "score"), Reason.SCORE_OK),
    ],
)
def test_first_failing_check_names_the_reason(fixed: tuple[str, ...], expected: Reason) -> None:
    good = dataclasses.asdict(assessment())
    values = {**ALL_BAD, **{field: good[field] for field in fixed}}
    pol = policy(allowed_hostnames=("acme.example",))
    assert judge(assessment(**values), pol).reason is expected


def test_token_invalid_reason_only_reported_for_an_invalid_token() -> None:
    invalid = judge(assessment(valid=False, invalid_reason="EXPIRED", action="login"))
    assert invalid.token_invalid_reason == "EXPIRED"
    too_old = judge(assessment(create_time=None, invalid_reason="EXPIRED"))
    assert too_old.reason is Reason.TOKEN_TOO_OLD
    assert too_old.token_invalid_reason is None


# --- score rounding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "threshold", "rounded", "reason"),
    [
        (0.8999999761581421, 0.9, 0.9, Reason.SCORE_OK),
        (0.4999999, 0.5, 0.5, Reason.SCORE_OK),
        (0.44999998807907104, 0.5, 0.4, Reason.SCORE_BELOW_THRESHOLD),
        (0.6999999880790710, 0.7, 0.7, Reason.SCORE_OK),
        (0.30000001192092896, 0.3, 0.3, Reason.SCORE_OK),
        (0.10000000149011612, 0.2, 0.1, Reason.SCORE_BELOW_THRESHOLD),
        (1.0, 1.0, 1.0, Reason.SCORE_OK),
        (0.0, 0.0, 0.0, Reason.SCORE_OK),
        (0.0, 0.1, 0.0, Reason.SCORE_BELOW_THRESHOLD),
        (0.5, 0.55, 0.5, Reason.SCORE_BELOW_THRESHOLD),
        (0.6, 0.55, 0.6, Reason.SCORE_OK),
    ],
)
def test_score_is_rounded_to_one_decimal_before_the_threshold(
    raw: float, threshold: float, rounded: float, reason: Reason
) -> None:
    result = judge(assessment(score=raw), policy(score_threshold=threshold))
    assert result.score == rounded
    assert result.reason is reason


def test_round_score_every_float32_tenth() -> None:
    for tenth in range(11):
        float32 = struct.unpack("f", struct.pack("f", tenth / 10))[0]
        assert round_score(float32) == tenth / 10


def test_missing_score_reads_as_zero() -> None:
    # proto3 JSON leaves a 0.0 score out of Google's answer.
    below = judge(assessment(score=None), policy(score_threshold=0.1))
    assert (below.reason, below.score) == (Reason.SCORE_BELOW_THRESHOLD, 0.0)
    assert judge(assessment(score=None), policy(score_threshold=0.0)).reason is Reason.SCORE_OK


# --- what Google really sends -------------------------------------------------------------


def test_invalid_reason_unspecified_on_a_valid_token_is_fine() -> None:
    result = judge(assessment(invalid_reason="INVALID_REASON_UNSPECIFIED"))
    assert result.reason is Reason.SCORE_OK
    assert result.token_invalid_reason is None


@pytest.mark.parametrize("invalid_reason", ["EXPIRED", "DUPE", "SOME_REASON_GOOGLE_ADDS_LATER"])
def test_invalid_reason_passed_through(invalid_reason: str) -> None:
    result = judge(assessment(valid=False, invalid_reason=invalid_reason))
    assert result.reason is Reason.TOKEN_INVALID
    assert result.token_invalid_reason == invalid_reason


def test_risk_reasons_passed_through_known_or_not() -> None:
    reasons = ("AUTOMATION", "TOO_MUCH_TRAFFIC", "A_REASON_GOOGLE_ADDS_LATER")
    result = judge(assessment(reasons=reasons, score=0.1))
    assert result.risk_reasons == reasons
    assert judge(assessment(reasons=reasons)).risk_reasons == reasons


def test_assessment_name_reported() -> None:
    assert judge(assessment()).assessment_name == NAME
    assert judge(assessment(valid=False)).assessment_name == NAME


# --- action -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_action", "expected", "reason"),
    [
        ("", "start_session", Reason.ACTION_MISMATCH),
        ("start_session", "start_session", Reason.SCORE_OK),
        ("START_SESSION", "start_session", Reason.SCORE_OK),
        ("Start_Session", "START_SESSION", Reason.SCORE_OK),
        ("start_session", "login", Reason.ACTION_MISMATCH),
        ("start_session_x", "start_session", Reason.ACTION_MISMATCH),
        ("start", "start_session", Reason.ACTION_MISMATCH),
    ],
)
def test_action_check(token_action: str, expected: str, reason: Reason) -> None:
    assert judge(assessment(action=token_action), expected=expected).reason is reason


def test_expected_action_argument_wins_over_policy() -> None:
    pol = policy(expected_action="start_session")
    assert judge(assessment(action="unlock"), pol, expected="unlock").reason is Reason.SCORE_OK
    assert judge(assessment(), pol, expected="unlock").reason is Reason.ACTION_MISMATCH


# --- hostname -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "allowed", "reason"),
    [
        ("portal.acme.example", ("portal.acme.example",), Reason.SCORE_OK),
        ("PORTAL.Acme.Example", ("portal.acme.example",), Reason.SCORE_OK),
        ("portal.acme.example", ("acme.example",), Reason.SCORE_OK),
        ("a.b.acme.example", ("acme.example",), Reason.SCORE_OK),
        ("acme.example", ("acme.example",), Reason.SCORE_OK),
        ("portal.acme.example.", ("acme.example",), Reason.SCORE_OK),
        ("portal.acme.example", ("other.example", "acme.example"), Reason.SCORE_OK),
        ("evilacme.example", ("acme.example",), Reason.HOSTNAME_MISMATCH),
        ("acme.example.evil.test", ("acme.example",), Reason.HOSTNAME_MISMATCH),
        ("acme.example", ("portal.acme.example",), Reason.HOSTNAME_MISMATCH),
        ("", ("acme.example",), Reason.HOSTNAME_MISMATCH),
        ("", (), Reason.SCORE_OK),
        ("anything.example", (), Reason.SCORE_OK),
    ],
)
def test_hostname_check(hostname: str, allowed: tuple[str, ...], reason: Reason) -> None:
    pol = policy(allowed_hostnames=allowed)
    assert judge(assessment(hostname=hostname), pol).reason is reason


# --- token age ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("create_time", "max_age", "reason"),
    [
        (None, 120, Reason.TOKEN_TOO_OLD),
        (NOW - timedelta(seconds=121), 120, Reason.TOKEN_TOO_OLD),
        (NOW - timedelta(seconds=120, microseconds=1), 120, Reason.TOKEN_TOO_OLD),
        (NOW - timedelta(seconds=120), 120, Reason.SCORE_OK),
        (NOW - timedelta(seconds=119), 120, Reason.SCORE_OK),
        (NOW - timedelta(seconds=11), 10, Reason.TOKEN_TOO_OLD),
        (NOW - timedelta(seconds=3000), 3600, Reason.SCORE_OK),
        (NOW + timedelta(seconds=2), 120, Reason.SCORE_OK),
        (NOW, 1, Reason.SCORE_OK),
    ],
)
def test_token_age(create_time: datetime | None, max_age: int, reason: Reason) -> None:
    pol = policy(max_token_age_seconds=max_age)
    assert judge(assessment(create_time=create_time), pol).reason is reason


# --- monitor mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "reason", "verdict"),
    [
        (assessment(), Reason.SCORE_OK, "pass"),
        (assessment(score=0.1), Reason.SCORE_BELOW_THRESHOLD, "fail"),
        (TokenMissing(), Reason.TOKEN_MISSING, "fail"),
        (TokenReused(), Reason.TOKEN_REUSED, "fail"),
        (assessment(valid=False, invalid_reason="DUPE"), Reason.TOKEN_INVALID, "fail"),
        (assessment(action="login"), Reason.ACTION_MISMATCH, "fail"),
        (assessment(hostname="evil.test"), Reason.HOSTNAME_MISMATCH, "fail"),
        (assessment(create_time=None), Reason.TOKEN_TOO_OLD, "fail"),
        (UpstreamFailure(UpstreamErrorKind.TIMEOUT), Reason.UPSTREAM_UNAVAILABLE, None),
    ],
)
def test_monitor_mode_always_allows_and_keeps_verdict_and_reason(
    evidence: Evidence, reason: Reason, verdict: str | None
) -> None:
    pol = policy(mode=Mode.MONITOR, allowed_hostnames=("acme.example",))
    result = judge(evidence, pol)
    assert result.decision == "allow"
    assert result.mode is DecisionMode.MONITOR
    assert (result.reason, result.verdict) == (reason, verdict)


def test_monitor_mode_keeps_the_evidence_fields() -> None:
    pol = policy(mode=Mode.MONITOR)
    result = judge(assessment(valid=False, invalid_reason="EXPIRED", reasons=("AUTOMATION",)), pol)
    assert result.token_invalid_reason == "EXPIRED"
    assert result.risk_reasons == ("AUTOMATION",)
    assert result.assessment_name == NAME


# --- disabled -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evidence",
    [
        assessment(score=0.0, valid=False),
        TokenMissing(),
        TokenReused(),
        UpstreamFailure(UpstreamErrorKind.TIMEOUT),
    ],
)
@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.MONITOR])
def test_disabled_policy_allows_without_an_assessment(evidence: Evidence, mode: Mode) -> None:
    pol = policy(enabled=False, mode=mode, score_threshold=0.7)
    result = judge(evidence, pol)
    assert result == Verdict(
        decision="allow",
        verdict=None,
        reason=Reason.PROTECTION_DISABLED,
        mode=DecisionMode.DISABLED,
        score=None,
        threshold=0.7,
        policy_version=3,
    )


# --- upstream failure, by fail_mode and mode -----------------------------------------------


@pytest.mark.parametrize("kind", list(UpstreamErrorKind))
@pytest.mark.parametrize(
    ("mode", "fail_mode", "decision"),
    [
        (Mode.ENFORCE, FailMode.CLOSED, "deny"),
        (Mode.ENFORCE, FailMode.OPEN, "allow"),
        (Mode.MONITOR, FailMode.CLOSED, "allow"),
        (Mode.MONITOR, FailMode.OPEN, "allow"),
    ],
)
def test_upstream_failure_follows_fail_mode(
    kind: UpstreamErrorKind, mode: Mode, fail_mode: FailMode, decision: str
) -> None:
    pol = policy(mode=mode, fail_mode=fail_mode, score_threshold=0.6)
    result = judge(UpstreamFailure(kind, detail="x"), pol)
    assert result == Verdict(
        decision=decision,
        verdict=None,
        reason=Reason.UPSTREAM_UNAVAILABLE,
        mode=DecisionMode(mode.value),
        score=None,
        threshold=0.6,
        policy_version=3,
        upstream_error=kind,
    )


# --- evidence without an assessment -------------------------------------------------------


@pytest.mark.parametrize("evidence", [TokenMissing(), TokenReused()])
def test_no_assessment_fields_without_an_assessment(evidence: Evidence) -> None:
    result = judge(evidence, policy(score_threshold=0.8))
    assert result.score is None
    assert result.threshold == 0.8
    assert result.assessment_name is None
    assert result.token_invalid_reason is None
    assert result.risk_reasons == ()
    assert result.upstream_error is None
