from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from app.schemas import NoNul, OperatorId, StrictModel

READ_ONLY_POLICY_FIELDS = frozenset(
    {"version", "updated_at", "updated_by", "credentials_configured"}
)
NULLABLE_POLICY_FIELDS = frozenset({"site_key", "gcp_project_id", "max_authorize_per_minute"})
# Google's default quota is 60,000 assessments per minute per project; far above it is a typo.
MAX_AUTHORIZE_PER_MINUTE = 1_000_000

_HOSTNAME = (
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def _normalise_hostname(value: str) -> str:
    return value.lower().rstrip(".")


Hostname = Annotated[
    str, StringConstraints(max_length=253, pattern=_HOSTNAME), AfterValidator(_normalise_hostname)
]
ActionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_/]{1,100}$")]
SiteKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
ProjectId = Annotated[
    str, StringConstraints(pattern=r"^(?:[a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]{1,20})$")
]


class PolicyFields(StrictModel):
    """The writable policy; a field left out of a PUT takes its default."""

    enabled: bool = False
    mode: Literal["enforce", "monitor"] = "enforce"
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    expected_action: ActionName = "start_session"
    allowed_hostnames: list[Hostname] = Field(default_factory=list, max_length=100)
    max_token_age_seconds: int = Field(default=120, ge=1, le=3600)
    fail_mode: Literal["open", "closed"] = "closed"
    site_key: SiteKey | None = None
    gcp_project_id: ProjectId | None = None
    max_authorize_per_minute: int | None = Field(default=None, ge=1, le=MAX_AUTHORIZE_PER_MINUTE)

    @model_validator(mode="before")
    @classmethod
    def _ignore_read_only(cls, data: Any) -> Any:
        # GET-modify-PUT sends the read-only fields back; they are ignored, not errors.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in READ_ONLY_POLICY_FIELDS}
        return data

    def normalised(self) -> dict[str, Any]:
        values = self.model_dump()
        values["allowed_hostnames"] = sorted(set(values["allowed_hostnames"]))
        return values


class PolicyOut(BaseModel):
    enabled: bool
    mode: Literal["enforce", "monitor"]
    score_threshold: float
    expected_action: str
    allowed_hostnames: list[str]
    max_token_age_seconds: int
    fail_mode: Literal["open", "closed"]
    site_key: str | None
    gcp_project_id: str | None
    max_authorize_per_minute: int | None
    version: int
    updated_at: datetime
    updated_by: str
    credentials_configured: bool


class OperatorIn(StrictModel):
    operator_id: Annotated[OperatorId, StringConstraints(max_length=64)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]


class OperatorOut(BaseModel):
    operator_id: str
    name: str
    created_at: datetime


class OperatorPage(BaseModel):
    items: list[OperatorOut]
    next_cursor: str | None


class SiteKeyOut(BaseModel):
    operator_id: str
    enabled: bool
    site_key: str | None
    action: str
    script_url: str | None


class AuditEntryOut(BaseModel):
    at: datetime
    actor: str
    action: Literal["policy.updated", "credentials.replaced", "credentials.deleted"]
    changes: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None
