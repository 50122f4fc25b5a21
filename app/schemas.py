"""Shared request/response building blocks: strict models, bounded strings, cursors."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from app.errors import InvalidRequest

OPERATOR_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"


def _reject_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


NoNul = AfterValidator(_reject_nul)


OperatorId = Annotated[str, StringConstraints(pattern=OPERATOR_ID_PATTERN)]


class StrictModel(BaseModel):
    """Request bodies: unknown fields and type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


def rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def encode_cursor(*parts: Any) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, *types: type) -> list[Any]:
    """The parts of a cursor made by encode_cursor, checked against the expected types."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(types)
        or not all(
            isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, types, strict=False)
        )
    ):
        raise invalid_cursor()
    return parts


def invalid_cursor() -> InvalidRequest:
    return InvalidRequest(
        "cursor is not valid; use next_cursor from a previous page",
        errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
    )
