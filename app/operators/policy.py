"""An operator's policy as a plain value: what the decision engine reads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class FailMode(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: int
    enabled: bool = False
    mode: Mode = Mode.ENFORCE
    score_threshold: float = 0.5
    expected_action: str = "start_session"
    allowed_hostnames: tuple[str, ...] = ()
    max_token_age_seconds: int = 120
    fail_mode: FailMode = FailMode.CLOSED
    site_key: str | None = None
    gcp_project_id: str | None = None
    # Authorize calls per UTC minute across all replicas (app/ratelimit.py); None: no limit.
    max_authorize_per_minute: int | None = None


DEFAULT_POLICY = PolicySnapshot(version=1)
