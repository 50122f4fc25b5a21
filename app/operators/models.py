from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class Operator(Base):
    __tablename__ = "operators"

    operator_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Policy(Base):
    """The operator's current policy; its history lives in the audit log."""

    __tablename__ = "policies"

    operator_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("operators.operator_id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str] = mapped_column(String(16))
    score_threshold: Mapped[float] = mapped_column(Float)
    expected_action: Mapped[str] = mapped_column(String(100))
    allowed_hostnames: Mapped[list[Any]] = mapped_column(JSON)
    max_token_age_seconds: Mapped[int] = mapped_column(Integer)
    fail_mode: Mapped[str] = mapped_column(String(16))
    site_key: Mapped[str | None] = mapped_column(String(100))
    gcp_project_id: Mapped[str | None] = mapped_column(String(100))
    max_authorize_per_minute: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(64))


class RateLimitState(Base):
    """The shared state of app/ratelimit.py: one row per limited API key or operator.

    Kept here, with the operator tables, so that Alembic sees it through app.models.
    scope "key": a token bucket, `tokens` left as of `updated_at` (the database's clock);
    scope "operator": a per-minute window, `tokens` calls counted in the minute starting
    at `updated_at`.
    """

    __tablename__ = "rate_limits"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
