from __future__ import annotations

from datetime import UTC
from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy import func, select

from app.auth import repository
from app.auth.deps import AUTH_ERRORS, PlatformAdmin
from app.auth.keys import Role
from app.auth.schemas import ApiKeyIn, ApiKeyOut
from app.db import table_of, utcnow
from app.errors import InvalidRequest, NotFound
from app.operators.models import Operator
from app.services import ServicesDep

router = APIRouter(tags=["platform"])

_operators = table_of(Operator)


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: {message}",
        errors=[{"loc": ["body", field], "msg": message, "type": "value_error"}],
    )


@router.post(
    "/api-keys",
    status_code=201,
    response_model=ApiKeyOut,
    operation_id="createApiKey",
    responses={
        **AUTH_ERRORS,
    },
)
async def create_api_key(
    body: ApiKeyIn, principal: PlatformAdmin, services: ServicesDep
) -> ApiKeyOut:
    now = utcnow()
    expires_at = body.expires_at.astimezone(UTC) if body.expires_at is not None else None
    if body.operator_ids is None and body.role is Role.OPERATOR_ADMIN:
        raise _invalid("operator_ids", "an operator_admin key must name its operators")
    if expires_at is not None and expires_at <= now:
        raise _invalid("expires_at", "must be in the future")
    operator_ids = sorted(set(body.operator_ids)) if body.operator_ids is not None else None
    async with services.engine.begin() as conn:
        if operator_ids is not None:
            known = await conn.scalar(
                select(func.count())
                .select_from(_operators)
                .where(_operators.c.operator_id.in_(operator_ids))
            )
            if known != len(operator_ids):
                raise _invalid("operator_ids", "names an operator that does not exist")
        key_id, raw_key = await repository.insert_key(
            conn, body.name, body.role, operator_ids, expires_at, now
        )
    return ApiKeyOut(
        id=key_id,
        key=raw_key,
        name=body.name,
        role=body.role,
        operator_ids=operator_ids,
        created_at=now,
        expires_at=expires_at,
    )


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    operation_id="revokeApiKey",
    responses={
        **AUTH_ERRORS,
        404: {"description": "Unknown or already revoked key"},
    },
)
async def revoke_api_key(
    key_id: Annotated[str, Path(max_length=40)], principal: PlatformAdmin, services: ServicesDep
) -> Response:
    async with services.engine.begin() as conn:
        revoked = await repository.revoke_key(conn, key_id, utcnow())
    if not revoked:
        raise NotFound("No active API key has that id.")
    return Response(status_code=204)
