from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class StoredCredential(Base):
    """One operator's Google credentials: public metadata in clear, the secret AES-GCM sealed."""

    __tablename__ = "credentials"

    operator_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("operators.operator_id", ondelete="CASCADE"), primary_key=True
    )
    type: Mapped[str] = mapped_column(String(32))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    key_id: Mapped[str] = mapped_column(String(64))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
