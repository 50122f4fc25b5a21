"""Google's JSON on the wire: field names, enum values, number and time formats, error bodies.

Everything here is what reCAPTCHA Enterprise REST v1 (and Google's API front end) really
sends; tests/emulator/test_conformance.py checks it against the official client library's
message types, so a drifted field name or enum value fails there.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

SERVICE = "recaptchaenterprise.googleapis.com"
RPC_PREFIX = "google.cloud.recaptchaenterprise.v1.RecaptchaEnterpriseService."
EPOCH = "1970-01-01T00:00:00Z"

# google.rpc.Code names for the HTTP statuses Google's front end maps them to.
STATUS_WORDS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

# Enum values of the v1 API the emulator produces or accepts (checked against the library).
INTEGRATION_TYPES = ("SCORE", "CHECKBOX", "INVISIBLE", "POLICY_BASED_CHALLENGE")
CLASSIFICATION_REASONS = (
    "AUTOMATION",
    "UNEXPECTED_ENVIRONMENT",
    "TOO_MUCH_TRAFFIC",
    "UNEXPECTED_USAGE_PATTERNS",
    "LOW_CONFIDENCE_SCORE",
    "SUSPECTED_CARDING",
    "SUSPECTED_CHARGEBACK",
)
INVALID_REASONS = (
    "INVALID_REASON_UNSPECIFIED",
    "UNKNOWN_INVALID_REASON",
    "MALFORMED",
    "EXPIRED",
    "DUPE",
    "MISSING",
    "BROWSER_ERROR",
    "UNEXPECTED_ACTION",
    "KEY_MISMATCH",
    "DOMAIN_MISMATCH",
)
ANNOTATIONS = (
    "ANNOTATION_UNSPECIFIED",
    "LEGITIMATE",
    "FRAUDULENT",
    "PASSWORD_CORRECT",
    "PASSWORD_INCORRECT",
)
ANNOTATION_REASONS = (
    "REASON_UNSPECIFIED",
    "CHARGEBACK",
    "CHARGEBACK_FRAUD",
    "CHARGEBACK_DISPUTE",
    "REFUND",
    "REFUND_FRAUD",
    "TRANSACTION_ACCEPTED",
    "TRANSACTION_DECLINED",
    "PAYMENT_HEURISTICS",
    "INITIATED_TWO_FACTOR",
    "PASSED_TWO_FACTOR",
    "FAILED_TWO_FACTOR",
    "CORRECT_PASSWORD",
    "INCORRECT_PASSWORD",
    "SOCIAL_SPAM",
)

# Request fields Google accepts (json names; the front end also takes the proto names).
ASSESSMENT_FIELDS = (
    "name",
    "event",
    "riskAnalysis",
    "tokenProperties",
    "accountVerification",
    "accountDefenderAssessment",
    "privatePasswordLeakVerification",
    "firewallPolicyAssessment",
    "fraudPreventionAssessment",
    "fraudSignals",
    "phoneFraudAssessment",
    "assessmentEnvironment",
    "policyEvaluation",
)
EVENT_FIELDS = (
    "token",
    "siteKey",
    "userAgent",
    "userIpAddress",
    "expectedAction",
    "hashedAccountId",
    "express",
    "requestedUri",
    "wafTokenAssessment",
    "ja3",
    "ja4",
    "headers",
    "firewallPolicyEvaluation",
    "transactionData",
    "userInfo",
    "fraudPrevention",
)
EVENT_STRING_FIELDS = ("token", "siteKey", "userAgent", "userIpAddress", "expectedAction")
ANNOTATE_FIELDS = (
    "annotation",
    "reasons",
    "accountId",
    "hashedAccountId",
    "transactionEvent",
    "phoneAuthenticationEvent",
)


def float32(value: float) -> float:
    """The double a proto `float` field prints as: Google stores the score as float32, so
    0.9 arrives as 0.8999999761581421."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def timestamp(ns: int) -> str:
    """A google.protobuf.Timestamp in proto3 JSON: RFC 3339 in UTC with 0, 3, 6 or 9
    fractional digits, as few as represent the value exactly."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def strip_defaults(value: Any) -> Any:
    """Canonical proto3 JSON (as the client libraries print it): fields holding their
    default value (0, "", false, [], {}, an *_UNSPECIFIED enum) are left out."""
    if isinstance(value, dict):
        kept = {k: strip_defaults(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if not _is_default(v)}
    if isinstance(value, list):
        return [strip_defaults(v) for v in value]
    return value


def _is_default(value: Any) -> bool:
    if isinstance(value, str):
        return value == "" or value.endswith("_UNSPECIFIED")
    if isinstance(value, bool | int | float):
        return not value
    return isinstance(value, list | dict) and not value


def error_body(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Google's JSON error (google.rpc.Status as the REST front end prints it)."""
    return {
        "error": {
            "code": status,
            "message": message,
            "status": STATUS_WORDS.get(status, "UNKNOWN"),
            "details": details or [],
        }
    }


def error_info(reason: str, method: str | None = None, **metadata: str) -> dict[str, Any]:
    """A google.rpc.ErrorInfo detail, as Google attaches to auth and quota errors."""
    meta = {"service": SERVICE, **metadata}
    if method is not None:
        meta["method"] = RPC_PREFIX + method
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": meta,
    }


def bad_request(field: str, description: str) -> dict[str, Any]:
    """A google.rpc.BadRequest detail naming the offending field."""
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }


# Texts Google's front end really answers with (see the report for where each was seen).
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
UNREGISTERED_CALLER = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
API_KEY_INVALID = "API key not valid. Please pass a valid API key."
INTERNAL = "Internal error encountered."
UNAVAILABLE = "The service is currently unavailable."


def permission_denied(permission: str) -> str:
    return (
        f"Permission denied for: {permission}. Please ensure you have sufficient permissions: "
        "https://cloud.google.com/iam/docs/granting-changing-revoking-access"
    )


def quota_exceeded(project_number: str) -> str:
    return (
        "Quota exceeded for quota metric 'Assessments' and limit 'Assessments per minute' "
        f"of service '{SERVICE}' for consumer 'project_number:{project_number}'."
    )
