"""Parsing assessments exactly as reCAPTCHA Enterprise sends them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.recaptcha.client import parse_assessment
from app.recaptcha.types import UpstreamError, UpstreamErrorKind

NAME = "projects/acme-charging/assessments/f1a2b3c4d5000000"


def google_answer() -> dict[str, Any]:
    """A real-shaped answer for a valid token (fields as Google sends them, extras included)."""
    return {
        "name": NAME,
        "event": {
            "token": "",
            "siteKey": "6LcSiteKey",
            "userAgent": "Mozilla/5.0",
            "userIpAddress": "203.0.113.7",
            "expectedAction": "start_session",
            "hashedAccountId": "",
            "express": False,
            "firewallPolicyEvaluation": False,
        },
        "riskAnalysis": {
            "score": 0.8999999761581421,
            "reasons": [],
            "extendedVerdictReasons": [],
            "challenge": "CHALLENGE_UNSPECIFIED",
        },
        "tokenProperties": {
            "valid": True,
            "invalidReason": "INVALID_REASON_UNSPECIFIED",
            "hostname": "portal.acme.example",
            "androidPackageName": "",
            "iosBundleId": "",
            "action": "start_session",
            "createTime": "2026-11-24T11:59:30.412Z",
        },
        "accountDefenderAssessment": {"labels": []},
        "fraudPreventionAssessment": None,
    }


def test_valid_token_keeps_the_raw_float32_score() -> None:
    a = parse_assessment(google_answer())
    assert a.name == NAME
    assert a.valid is True
    assert a.invalid_reason == "INVALID_REASON_UNSPECIFIED"
    assert a.action == "start_session"
    assert a.hostname == "portal.acme.example"
    assert a.create_time == datetime(2026, 11, 24, 11, 59, 30, 412000, tzinfo=UTC)
    assert a.score == 0.8999999761581421
    assert a.reasons == ()


def test_malformed_token_shape() -> None:
    body = {
        "name": NAME,
        "riskAnalysis": {"score": 0, "reasons": []},
        "tokenProperties": {
            "valid": False,
            "invalidReason": "MALFORMED",
            "hostname": "",
            "action": "",
            "createTime": "1970-01-01T00:00:00Z",
        },
    }
    a = parse_assessment(body)
    assert a.valid is False
    assert a.invalid_reason == "MALFORMED"
    assert (a.action, a.hostname) == ("", "")
    assert a.create_time == datetime(1970, 1, 1, tzinfo=UTC)
    assert a.score == 0.0


def test_unknown_enum_values_pass_through() -> None:
    body = google_answer()
    body["tokenProperties"] = {"valid": False, "invalidReason": "SOME_FUTURE_REASON"}
    body["riskAnalysis"]["reasons"] = ["AUTOMATION", "BRAND_NEW_REASON"]
    a = parse_assessment(body)
    assert a.invalid_reason == "SOME_FUTURE_REASON"
    assert a.reasons == ("AUTOMATION", "BRAND_NEW_REASON")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-24T12:00:00.123456789Z", datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-24T12:00:00Z", datetime(2026, 11, 24, 12, tzinfo=UTC)),
        ("2026-11-24T12:00:00.5Z", datetime(2026, 11, 24, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-24T13:00:00+01:00", datetime(2026, 11, 24, 12, tzinfo=UTC)),
        ("2026-11-24T12:00:00", None),  # no offset: not RFC 3339
        ("not a time", None),
        (12345, None),
    ],
)
def test_create_time(raw: object, expected: datetime | None) -> None:
    body = google_answer()
    body["tokenProperties"]["createTime"] = raw
    assert parse_assessment(body).create_time == expected


def test_missing_fields_read_as_empty() -> None:
    a = parse_assessment({"name": NAME})
    assert a.valid is False
    assert a.invalid_reason is None
    assert (a.action, a.hostname) == ("", "")
    assert a.create_time is None
    assert a.score is None
    assert a.reasons == ()


def test_missing_score_is_none() -> None:
    body = google_answer()
    del body["riskAnalysis"]["score"]
    assert parse_assessment(body).score is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": NAME, "tokenProperties": []},
        {"name": NAME, "tokenProperties": {"valid": "yes"}},
        {"name": NAME, "tokenProperties": {"action": 3}},
        {"name": NAME, "riskAnalysis": {"score": "0.9"}},
        {"name": NAME, "riskAnalysis": {"score": True}},
        {"name": NAME, "riskAnalysis": {"reasons": "AUTOMATION"}},
        {"name": NAME, "riskAnalysis": {"reasons": [1]}},
    ],
)
def test_wrong_shape_is_bad_response(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_assessment(body)
    assert caught.value.failure.kind is UpstreamErrorKind.BAD_RESPONSE
    assert caught.value.failure.status == 200
