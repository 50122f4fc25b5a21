from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        Index(
            "ix_decisions_operator_id_evaluated_at", "operator_id", "evaluated_at", "decision_id"
        ),
    )

    decision_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    operator_id: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str] = mapped_column(String(40))
    decision: Mapped[str] = mapped_column(String(8))
    verdict: Mapped[str | None] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    mode: Mapped[str] = mapped_column(String(16))
    policy_version: Mapped[int] = mapped_column(Integer)
    assessment_name: Mapped[str | None] = mapped_column(String(300))
    token_invalid_reason: Mapped[str | None] = mapped_column(String(64))
    risk_reasons: Mapped[list[str]] = mapped_column(JSON)
    upstream_error: Mapped[str | None] = mapped_column(String(32))
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    session_ref: Mapped[str | None] = mapped_column(String(128))
    evse_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str | None] = mapped_column(String(16))
    outcome_reasons: Mapped[list[str] | None] = mapped_column(JSON)
    outcome_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TokenClaim(Base):
    """A token seen once, by hash: the service-wide replay guard."""

    __tablename__ = "token_claims"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_records"

    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AnnotationOutbox(Base):
    """Annotations waiting to reach Google; a row per outcome report that changed something."""

    __tablename__ = "annotation_outbox"
    __table_args__ = (
        Index("ix_annotation_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    decision_id: Mapped[str] = mapped_column(String(40), index=True)
    operator_id: Mapped[str] = mapped_column(String(64))
    assessment_name: Mapped[str] = mapped_column(String(300))
    annotation: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
