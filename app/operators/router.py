from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response

from app.audit import repository as audit
from app.auth.deps import AUTH_ERRORS, OperatorAdmin, OperatorIdPath, PlatformAdmin
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.operators import repository as repo
from app.operators import service
from app.operators.schemas import (
    AuditEntryOut,
    AuditPage,
    OperatorIn,
    OperatorOut,
    OperatorPage,
    PolicyFields,
    PolicyOut,
    SiteKeyOut,
)
from app.schemas import decode_cursor, encode_cursor
from app.services import ServicesDep

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=512)]
IfMatch = Annotated[str | None, Header(max_length=200)]

_OPERATOR_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: {"description": "Unknown operator"},
}


@router.post(
    "/operators",
    status_code=201,
    response_model=OperatorOut,
    tags=["platform"],
    operation_id="createOperator",
    responses={**AUTH_ERRORS, 409: {"description": "The operator exists already"}},
)
async def create_operator(
    body: OperatorIn, principal: PlatformAdmin, services: ServicesDep
) -> OperatorOut:
    now = utcnow()
    async with services.engine.begin() as conn:
        created = await repo.create_operator(
            conn,
            body.operator_id,
            body.name,
            service.default_policy_values(),
            now,
            principal.key_id,
        )
    if not created:
        raise Conflict(f"Operator {body.operator_id} exists already.")
    services.operators.invalidate(body.operator_id)
    return OperatorOut(operator_id=body.operator_id, name=body.name, created_at=now)


@router.get(
    "/operators",
    response_model=OperatorPage,
    tags=["platform"],
    operation_id="listOperators",
    responses=AUTH_ERRORS,
)
async def list_operators(
    principal: PlatformAdmin, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> OperatorPage:
    after = decode_cursor(cursor, str)[0] if cursor else None
    async with services.engine.connect() as conn:
        rows = await repo.operator_page(conn, limit, after)
    items = [
        OperatorOut(operator_id=r.operator_id, name=r.name, created_at=r.created_at)
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(items[-1].operator_id) if len(rows) > limit else None
    return OperatorPage(items=items, next_cursor=next_cursor)


@router.get(
    "/operators/{operator_id}/site-key",
    response_model=SiteKeyOut,
    tags=["public"],
    operation_id="getSiteKey",
    responses={404: {"description": "Unknown operator"}},
)
async def get_site_key(
    operator_id: OperatorIdPath, services: ServicesDep, response: Response
) -> SiteKeyOut:
    response.headers["Access-Control-Allow-Origin"] = "*"
    state = await services.operators.get(operator_id)
    if state is None:
        # With CORS on the 404 too, a portal on another origin can tell "unknown" from "blocked".
        raise NotFound(
            f"Operator {operator_id} does not exist.", headers={"Access-Control-Allow-Origin": "*"}
        )
    response.headers["Cache-Control"] = "public, max-age=60"
    policy = state.policy
    site_key = policy.site_key if policy.enabled else None
    return SiteKeyOut(
        operator_id=operator_id,
        enabled=policy.enabled,
        site_key=site_key,
        action=policy.expected_action,
        script_url=f"{services.settings.recaptcha_script_url}?render={site_key}"
        if site_key
        else None,
    )


@router.options("/operators/{operator_id}/site-key", include_in_schema=False, status_code=204)
async def site_key_preflight(operator_id: OperatorIdPath) -> Response:
    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Accept",
            "Access-Control-Max-Age": "86400",
        },
    )


@router.get(
    "/operators/{operator_id}/policy",
    response_model=PolicyOut,
    tags=["operator"],
    operation_id="getPolicy",
    responses=_OPERATOR_ERRORS,
)
async def get_policy(
    operator_id: OperatorIdPath, principal: OperatorAdmin, services: ServicesDep, response: Response
) -> PolicyOut:
    policy = await service.get_policy(services, operator_id)
    response.headers["ETag"] = service.etag(policy.version)
    return policy


@router.put(
    "/operators/{operator_id}/policy",
    response_model=PolicyOut,
    tags=["operator"],
    operation_id="replacePolicy",
    responses={
        **_OPERATOR_ERRORS,
        412: {"description": "If-Match does not match the current ETag"},
    },
)
async def put_policy(
    operator_id: OperatorIdPath,
    body: PolicyFields,
    principal: OperatorAdmin,
    services: ServicesDep,
    response: Response,
    if_match: IfMatch = None,
) -> PolicyOut:
    policy = await service.update_policy(
        services, operator_id, principal.key_id, if_match, lambda _current: body
    )
    response.headers["ETag"] = service.etag(policy.version)
    return policy


@router.patch(
    "/operators/{operator_id}/policy",
    response_model=PolicyOut,
    tags=["operator"],
    operation_id="patchPolicy",
    responses={
        **_OPERATOR_ERRORS,
        412: {"description": "If-Match does not match the current ETag"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def patch_policy(
    operator_id: OperatorIdPath,
    patch: Annotated[dict[str, Any], Body()],
    principal: OperatorAdmin,
    services: ServicesDep,
    response: Response,
    if_match: IfMatch = None,
) -> PolicyOut:
    policy = await service.update_policy(
        services,
        operator_id,
        principal.key_id,
        if_match,
        lambda current: service.merge_patch(current, patch),
    )
    response.headers["ETag"] = service.etag(policy.version)
    return policy


@router.get(
    "/operators/{operator_id}/audit-log",
    response_model=AuditPage,
    tags=["operator"],
    operation_id="listAuditLog",
    responses=_OPERATOR_ERRORS,
)
async def list_audit_log(
    operator_id: OperatorIdPath,
    principal: OperatorAdmin,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AuditPage:
    before = decode_cursor(cursor, int)[0] if cursor else None
    async with services.engine.connect() as conn:
        if not await repo.operator_exists(conn, operator_id):
            raise NotFound(f"Operator {operator_id} does not exist.")
        rows = await audit.page(conn, operator_id, limit, before)
    items = [
        AuditEntryOut(at=r.at, actor=r.actor, action=r.action, changes=r.changes)
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
