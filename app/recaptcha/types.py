"""What reCAPTCHA Enterprise tells us, as plain values (no HTTP, no framework)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class UpstreamErrorKind(StrEnum):
    """Why Google could not answer; the `upstream_error` values of the contract."""

    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    RATE_LIMITED = "rate_limited"
    CREDENTIALS_REJECTED = "credentials_rejected"
    BAD_REQUEST = "bad_request"
    SERVER_ERROR = "server_error"
    BAD_RESPONSE = "bad_response"
    CIRCUIT_OPEN = "circuit_open"


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    kind: UpstreamErrorKind
    status: int | None = None
    retry_after_seconds: float | None = None
    # Safe to log: never holds a token, key or credential.
    detail: str = ""


class UpstreamError(Exception):
    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(f"{failure.kind}: {failure.detail}")
        self.failure = failure

    @classmethod
    def of(
        cls,
        kind: UpstreamErrorKind,
        detail: str,
        status: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> UpstreamError:
        return cls(UpstreamFailure(kind, status, retry_after_seconds, detail))


@dataclass(frozen=True, slots=True)
class Assessment:
    """The parts of a reCAPTCHA Enterprise assessment the gate decides on."""

    name: str
    valid: bool
    invalid_reason: str | None
    action: str
    hostname: str
    create_time: datetime | None
    score: float | None
    reasons: tuple[str, ...] = field(default_factory=tuple)
