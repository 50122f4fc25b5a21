from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from app.decisions.engine import DecisionMode, Reason
from app.operators.schemas import ActionName
from app.recaptcha.types import UpstreamErrorKind
from app.schemas import NoNul, OperatorId, StrictModel

AnnotationReason = Literal[
    "chargeback",
    "chargeback_fraud",
    "chargeback_dispute",
    "refund",
    "refund_fraud",
    "transaction_accepted",
    "transaction_declined",
    "payment_heuristics",
    "initiated_two_factor",
    "passed_two_factor",
    "failed_two_factor",
    "correct_password",
    "incorrect_password",
    "social_spam",
]
ANNOTATION_REASONS: tuple[str, ...] = get_args(AnnotationReason)


def _ip_address(value: str) -> str:
    return str(ipaddress.ip_address(value))


IpAddress = Annotated[str, StringConstraints(max_length=64), AfterValidator(_ip_address)]


class AuthorizeIn(StrictModel):
    operator_id: Annotated[OperatorId, StringConstraints(max_length=64)]
    token: Annotated[str, StringConstraints(max_length=8192), NoNul] | None = None
    expected_action: ActionName | None = None
    session_ref: Annotated[str, StringConstraints(max_length=128), NoNul] | None = None
    evse_id: Annotated[str, StringConstraints(max_length=64), NoNul] | None = None
    user_ip: IpAddress | None = None
    user_agent: Annotated[str, StringConstraints(max_length=1024), NoNul] | None = None


class DecisionOut(BaseModel):
    decision_id: str
    decision: Literal["allow", "deny"]
    verdict: Literal["pass", "fail"] | None
    reason: Reason
    score: float | None
    threshold: float
    mode: DecisionMode
    policy_version: int
    assessment_name: str | None
    token_invalid_reason: str | None
    risk_reasons: list[str]
    upstream_error: UpstreamErrorKind | None
    evaluated_at: datetime


class DecisionItem(DecisionOut):
    session_ref: str | None
    evse_id: str | None
    outcome: Literal["legitimate", "fraudulent"] | None


class DecisionPage(BaseModel):
    items: list[DecisionItem]
    next_cursor: str | None


class OutcomeIn(StrictModel):
    outcome: Literal["legitimate", "fraudulent"]
    reasons: Annotated[list[AnnotationReason], Field(max_length=len(ANNOTATION_REASONS))] = []


class OutcomeAccepted(BaseModel):
    decision_id: str
    outcome: Literal["legitimate", "fraudulent"]
    reasons: list[AnnotationReason]
