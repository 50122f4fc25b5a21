from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.audit import repository as audit
from app.auth.deps import AUTH_ERRORS, OperatorAdmin, OperatorIdPath
from app.credentials import store
from app.credentials.schemas import CredentialsIn, CredentialsMetadata, VerifyResult
from app.credentials.verify import verify_configuration
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.operators import repository as repo
from app.schemas import rfc3339
from app.services import ServicesDep

router = APIRouter(tags=["operator"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: {"description": "Unknown operator (or no credentials)"},
}


def _public(meta: dict[str, Any]) -> CredentialsMetadata:
    return CredentialsMetadata.model_validate(meta)


@router.put(
    "/operators/{operator_id}/credentials",
    response_model=CredentialsMetadata,
    operation_id="putCredentials",
    responses=_ERRORS,
)
async def put_credentials(
    operator_id: OperatorIdPath,
    body: CredentialsIn,
    principal: OperatorAdmin,
    services: ServicesDep,
) -> CredentialsMetadata:
    payload, meta = store.prepare(body)
    async with services.engine.begin() as conn:
        # The policy row is the operator's write lock: concurrent uploads (and a concurrent
        # delete or enable) queue up instead of racing to insert the one credentials row.
        if await repo.policy_row(conn, operator_id, for_update=True) is None:
            raise NotFound(f"Operator {operator_id} does not exist.")
        now = utcnow()
        old = await repo.credential_meta(conn, operator_id)
        meta["updated_at"] = rfc3339(now)
        key_id, sealed = store.seal(services.keyring, operator_id, payload)
        await repo.put_credential(conn, operator_id, meta["type"], meta, key_id, sealed, now)
        await audit.record(
            conn,
            operator_id,
            principal.key_id,
            "credentials.replaced",
            {"credentials": {"old": old, "new": meta}},
        )
    services.operators.invalidate(operator_id)
    return _public(meta)


@router.get(
    "/operators/{operator_id}/credentials",
    response_model=CredentialsMetadata,
    operation_id="getCredentials",
    responses=_ERRORS,
)
async def get_credentials(
    operator_id: OperatorIdPath, principal: OperatorAdmin, services: ServicesDep
) -> CredentialsMetadata:
    async with services.engine.connect() as conn:
        meta = await repo.credential_meta(conn, operator_id)
    if meta is None:
        raise NotFound(f"Operator {operator_id} has no credentials.")
    return _public(meta)


@router.delete(
    "/operators/{operator_id}/credentials",
    status_code=204,
    operation_id="deleteCredentials",
    responses={**_ERRORS, 409: {"description": "The policy is enabled"}},
)
async def delete_credentials(
    operator_id: OperatorIdPath, principal: OperatorAdmin, services: ServicesDep
) -> Response:
    async with services.engine.begin() as conn:
        policy = await repo.policy_row(conn, operator_id, for_update=True)
        if policy is None:
            raise NotFound(f"Operator {operator_id} does not exist.")
        old = await repo.credential_meta(conn, operator_id)
        if old is None:
            raise NotFound(f"Operator {operator_id} has no credentials.")
        if policy.enabled:
            raise Conflict("The policy is enabled; disable it before deleting its credentials.")
        await repo.delete_credential(conn, operator_id)
        await audit.record(
            conn,
            operator_id,
            principal.key_id,
            "credentials.deleted",
            {"credentials": {"old": old, "new": None}},
        )
    services.operators.invalidate(operator_id)
    return Response(status_code=204)


@router.post(
    "/operators/{operator_id}/credentials/verify",
    response_model=VerifyResult,
    operation_id="verifyCredentials",
    responses=_ERRORS,
)
async def verify_credentials(
    operator_id: OperatorIdPath, principal: OperatorAdmin, services: ServicesDep
) -> VerifyResult:
    services.operators.invalidate(operator_id)
    state = await services.operators.get(operator_id)
    if state is None:
        raise NotFound(f"Operator {operator_id} does not exist.")
    return await verify_configuration(services.recaptcha, state, services.settings.google_auth)
