from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

from app.auth.keys import Role
from app.schemas import NoNul, OperatorId, StrictModel


class ApiKeyIn(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
    role: Annotated[Role, Field(strict=False)]
    operator_ids: Annotated[list[OperatorId], Field(min_length=1, max_length=1000)] | None
    # JSON has no datetime type: an RFC 3339 string with an offset is accepted here.
    expires_at: Annotated[AwareDatetime | None, Field(strict=False)] = None


class ApiKeyOut(BaseModel):
    id: str
    key: str
    name: str
    role: Role
    operator_ids: list[str] | None
    created_at: datetime
    expires_at: datetime | None
