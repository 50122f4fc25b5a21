"""Request authentication and the role/operator checks, as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from app.auth.keys import Principal, Role
from app.errors import Forbidden, Unauthorized
from app.schemas import OPERATOR_ID_PATTERN
from app.services import services_of


async def authenticate(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, raw_key = header.partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        raise Unauthorized()
    principal = await services_of(request).api_keys.principal_for(raw_key.strip())
    if principal is None:
        raise Unauthorized("The API key is unknown, revoked or expired.")
    return principal


Authenticated = Annotated[Principal, Depends(authenticate)]

# The OpenAPI description of the answers every authenticated operation may give.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown, revoked or expired API key"},
    403: {"description": "The key lacks the role or the operator"},
}


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role is not Role.PLATFORM_ADMIN and principal.role not in roles:
        raise Forbidden(f"This API key ({principal.role}) may not do this.")


def require_operator(principal: Principal, operator_id: str, *roles: Role) -> None:
    require_role(principal, *roles)
    if not principal.may_act_for(operator_id):
        raise Forbidden("This API key is not valid for that operator.")


async def platform_admin(principal: Authenticated) -> Principal:
    require_role(principal)
    return principal


OperatorIdPath = Annotated[str, Path(pattern=OPERATOR_ID_PATTERN, max_length=64)]


async def operator_admin(operator_id: OperatorIdPath, principal: Authenticated) -> Principal:
    require_operator(principal, operator_id, Role.OPERATOR_ADMIN)
    return principal


PlatformAdmin = Annotated[Principal, Depends(platform_admin)]
OperatorAdmin = Annotated[Principal, Depends(operator_admin)]
