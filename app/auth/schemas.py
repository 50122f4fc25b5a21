from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, StringConstraints

from app.auth.keys import Role
from app.schemas import NoNul, OperatorId, StrictModel

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339_text(value: Any) -> Any:
    # Lax datetime parsing would also take a number or a digit string as a Unix time.
    if value is not None and not (isinstance(value, str) and _RFC3339.match(value)):
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2027-06-01T00:00:00Z")
    return value


class ApiKeyIn(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
    role: Annotated[Role, Field(strict=False)]
    operator_ids: Annotated[list[OperatorId], Field(min_length=1, max_length=1000)] | None
    # JSON has no datetime type: an RFC 3339 string with an offset is accepted here.
    expires_at: Annotated[
        AwareDatetime | None, Field(strict=False), BeforeValidator(_rfc3339_text)
    ] = None


class ApiKeyOut(BaseModel):
    id: str
    key: str
    name: str
    role: Role
    operator_ids: list[str] | None
    created_at: datetime
    expires_at: datetime | None
