"""projects.assessments.create and projects.keys.get answers, shaped like Google's.

Token verdicts, in the order they are checked:
- no token → MISSING; not a token this emulator issued → MALFORMED (both with the epoch as
  createTime, empty hostname/action and no score, as Google answers garbage);
- already assessed once → DUPE (a token is single use, whatever the first answer was);
- older than two minutes → EXPIRED;
- issued for another site key than event.siteKey, or a key outside the project →
  `state.key_mismatch_reason` (KEY_MISMATCH);
- its hostname outside the key's allowedDomains → DOMAIN_MISMATCH.
Invalid tokens that could be read keep their hostname, action and createTime; only a valid
one gets a score. The expected action is echoed, never judged: Google only answers
UNEXPECTED_ACTION for POLICY_BASED_CHALLENGE keys, so for SCORE keys checking the action is
the caller's job.
"""

from __future__ import annotations

import secrets
from typing import Any

from app.recaptcha.emulator import wire
from app.recaptcha.emulator.state import (
    TOKEN_LIFETIME_SECONDS,
    AssessmentRecord,
    EmulatorState,
    Project,
    SiteKey,
    TokenClaims,
)


def create_assessment(
    state: EmulatorState, project: Project, event: dict[str, Any]
) -> dict[str, Any]:
    """The Assessment Google answers for `event`; the token is used up by it."""
    token = str(event.get("token") or "")
    claims = state.read_token(token) if token else None
    if claims is None:
        verdict = "MISSING" if not token else "MALFORMED"
    else:
        verdict = _verdict(state, project, str(event.get("siteKey") or ""), claims)
    # Google's assessment names carry the project number, whichever form the path used.
    name = f"projects/{project.number}/assessments/{secrets.token_hex(8)}"
    answer = {
        "name": name,
        "event": _event_echo(event),
        "riskAnalysis": {
            "score": wire.float32(claims.score) if claims and verdict == "VALID" else 0,
            "reasons": list(claims.reasons) if claims and verdict == "VALID" else [],
            "extendedVerdictReasons": [],
        },
        "tokenProperties": {
            "valid": verdict == "VALID",
            "invalidReason": "INVALID_REASON_UNSPECIFIED" if verdict == "VALID" else verdict,
            "hostname": claims.hostname if claims else "",
            "androidPackageName": "",
            "iosBundleId": "",
            "action": claims.action if claims else "",
            "createTime": wire.timestamp(claims.create_time_ns) if claims else wire.EPOCH,
        },
    }
    state.save_assessment(AssessmentRecord(name, project.project_id, answer))
    return answer if state.emit_defaults else _compact(answer)


def key_resource(state: EmulatorState, key: SiteKey) -> dict[str, Any]:
    """A Key resource (a web key), as projects.keys.get answers it."""
    project = state.project(key.project_id)
    answer = {
        "name": f"projects/{project.number}/keys/{key.site_key}",
        "displayName": key.display_name,
        "webSettings": {
            "allowAllDomains": not key.allowed_domains,
            "allowedDomains": list(key.allowed_domains),
            "allowAmpTraffic": False,
            "integrationType": key.integration_type,
            "challengeSecurityPreference": "CHALLENGE_SECURITY_PREFERENCE_UNSPECIFIED",
        },
        "labels": dict(key.labels),
        "createTime": wire.timestamp(key.create_time_ns),
    }
    return answer if state.emit_defaults else wire.strip_defaults(answer)


def _verdict(state: EmulatorState, project: Project, site_key: str, claims: TokenClaims) -> str:
    if not state.consume(claims.nonce):
        return "DUPE"
    age = state.clock() - claims.create_time_ns / 1e9
    if age > TOKEN_LIFETIME_SECONDS:
        return "EXPIRED"
    key = state.keys.get(claims.site_key)
    if key is None or key.project_id != project.project_id:
        return state.key_mismatch_reason
    if site_key and site_key != claims.site_key:
        return state.key_mismatch_reason
    if not key.allows(claims.hostname):
        return "DOMAIN_MISMATCH"
    return "VALID"


def _event_echo(event: dict[str, Any]) -> dict[str, Any]:
    """The request's event with every scalar field printed, as Google's answers show it."""
    return {
        "token": event.get("token", ""),
        "siteKey": event.get("siteKey", ""),
        "userAgent": event.get("userAgent", ""),
        "userIpAddress": event.get("userIpAddress", ""),
        "expectedAction": event.get("expectedAction", ""),
        "hashedAccountId": event.get("hashedAccountId", ""),
        "express": event.get("express", False),
        "requestedUri": event.get("requestedUri", ""),
        "wafTokenAssessment": event.get("wafTokenAssessment", False),
        "ja3": event.get("ja3", ""),
        "headers": event.get("headers", []),
        "firewallPolicyEvaluation": event.get("firewallPolicyEvaluation", False),
        "fraudPrevention": event.get("fraudPrevention", "FRAUD_PREVENTION_UNSPECIFIED"),
    }


def _compact(answer: dict[str, Any]) -> dict[str, Any]:
    """Canonical proto3 JSON, except that createTime stays: Google sets it (to the epoch for
    garbage), so it is a present message, not a default."""
    compact: dict[str, Any] = wire.strip_defaults(answer)
    compact.setdefault("tokenProperties", {})["createTime"] = answer["tokenProperties"][
        "createTime"
    ]
    return compact
