"""The decision core: evidence about a token + the operator's policy → allow or deny.

Pure: no I/O, no framework. Everything the gate knows arrives as a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from app.operators.policy import FailMode, Mode, PolicySnapshot
from app.recaptcha.types import Assessment, UpstreamErrorKind, UpstreamFailure


class Reason(StrEnum):
    SCORE_OK = "score_ok"
    SCORE_BELOW_THRESHOLD = "score_below_threshold"
    TOKEN_MISSING = "token_missing"  # noqa: S105 - a reason, not a secret
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a reason, not a secret
    TOKEN_REUSED = "token_reused"  # noqa: S105 - a reason, not a secret
    ACTION_MISMATCH = "action_mismatch"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    TOKEN_TOO_OLD = "token_too_old"  # noqa: S105 - a reason, not a secret
    PROTECTION_DISABLED = "protection_disabled"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"


class DecisionMode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"
    DISABLED = "disabled"


class TokenMissing:
    """No token was given."""


class TokenReused:
    """The token was presented before (the service-wide claim failed)."""


Evidence = Assessment | UpstreamFailure | TokenMissing | TokenReused


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: str  # "allow" | "deny"
    verdict: str | None  # "pass" | "fail" | None when no assessment concluded
    reason: Reason
    mode: DecisionMode
    score: float | None
    threshold: float
    policy_version: int
    assessment_name: str | None = None
    token_invalid_reason: str | None = None
    risk_reasons: tuple[str, ...] = ()
    upstream_error: UpstreamErrorKind | None = None


def round_score(raw: float) -> float:
    """Google sends float32 scores (0.8999999761581421 means 0.9): one decimal, half up."""
    return math.floor(raw * 10 + 0.5) / 10


def hostname_allowed(hostname: str, allowed: tuple[str, ...]) -> bool:
    host = hostname.lower().rstrip(".")
    if not host:
        return False
    return any(host == domain or host.endswith("." + domain) for domain in allowed)


def disabled(policy: PolicySnapshot) -> Verdict:
    return Verdict(
        decision="allow",
        verdict=None,
        reason=Reason.PROTECTION_DISABLED,
        mode=DecisionMode.DISABLED,
        score=None,
        threshold=policy.score_threshold,
        policy_version=policy.version,
    )


def evaluate(
    policy: PolicySnapshot, expected_action: str, evidence: Evidence, now: datetime
) -> Verdict:
    """Runs the checks in the contract's order; the first that fails names the reason."""
    if not policy.enabled:
        return disabled(policy)
    mode = DecisionMode(policy.mode.value)
    if isinstance(evidence, UpstreamFailure):
        return Verdict(
            decision=_fail_decision(policy),
            verdict=None,
            reason=Reason.UPSTREAM_UNAVAILABLE,
            mode=mode,
            score=None,
            threshold=policy.score_threshold,
            policy_version=policy.version,
            upstream_error=evidence.kind,
        )
    if isinstance(evidence, TokenMissing | TokenReused):
        reason = Reason.TOKEN_MISSING if isinstance(evidence, TokenMissing) else Reason.TOKEN_REUSED
        return _judged(policy, mode, reason, None, None)

    # Google's JSON leaves out zero values, so a missing score is 0.0.
    score = round_score(evidence.score or 0.0)
    reason = _first_failed_check(policy, expected_action, evidence, score, now)
    return _judged(policy, mode, reason, score, evidence)


def _first_failed_check(
    policy: PolicySnapshot,
    expected_action: str,
    assessment: Assessment,
    score: float,
    now: datetime,
) -> Reason:
    if not assessment.valid:
        return Reason.TOKEN_INVALID
    # Google compares action names case-insensitively; an empty action never matches.
    if not assessment.action or assessment.action.casefold() != expected_action.casefold():
        return Reason.ACTION_MISMATCH
    if policy.allowed_hostnames and not hostname_allowed(
        assessment.hostname, policy.allowed_hostnames
    ):
        return Reason.HOSTNAME_MISMATCH
    if assessment.create_time is None or (
        (now - assessment.create_time).total_seconds() > policy.max_token_age_seconds
    ):
        return Reason.TOKEN_TOO_OLD
    if score < policy.score_threshold:
        return Reason.SCORE_BELOW_THRESHOLD
    return Reason.SCORE_OK


def _judged(
    policy: PolicySnapshot,
    mode: DecisionMode,
    reason: Reason,
    score: float | None,
    assessment: Assessment | None,
) -> Verdict:
    passed = reason is Reason.SCORE_OK
    enforce = mode is DecisionMode.ENFORCE
    return Verdict(
        decision="allow" if passed or not enforce else "deny",
        verdict="pass" if passed else "fail",
        reason=reason,
        mode=mode,
        score=score,
        threshold=policy.score_threshold,
        policy_version=policy.version,
        assessment_name=assessment.name if assessment else None,
        token_invalid_reason=(
            assessment.invalid_reason if assessment and reason is Reason.TOKEN_INVALID else None
        ),
        risk_reasons=assessment.reasons if assessment else (),
    )


def _fail_decision(policy: PolicySnapshot) -> str:
    if policy.mode is Mode.MONITOR or policy.fail_mode is FailMode.OPEN:
        return "allow"
    return "deny"
