from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AwareDatetime, ValidationError

from app.auth.deps import (
    AUTH_ERRORS,
    Authenticated,
    OperatorAdmin,
    OperatorIdPath,
    authenticate,
    require_operator,
    require_role,
)
from app.auth.keys import Role
from app.db import utcnow
from app.decisions import repository as repo
from app.decisions.schemas import (
    AuthorizeIn,
    DecisionItem,
    DecisionOut,
    DecisionPage,
    OutcomeAccepted,
    OutcomeIn,
)
from app.errors import Conflict, InvalidRequest, NotFound
from app.metrics import AUTHORIZE_DURATION
from app.operators import repository as operators_repo
from app.schemas import decode_cursor, encode_cursor, invalid_cursor
from app.services import ServicesDep, services_of

router = APIRouter()


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            errors=[
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": "1-255 printable ASCII characters",
                    "type": "value_error",
                }
            ],
        )
    return value


@router.post(
    "/sessions/authorize",
    response_model=DecisionOut,
    tags=["backend"],
    operation_id="authorizeSession",
    responses={
        **AUTH_ERRORS,
        404: {"description": "Unknown operator"},
        409: {"description": "Idempotency-Key reused with a different body"},
        413: {"description": "Body over 64 KiB"},
        422: {"description": "Invalid request"},
        429: {
            "description": "Over the key's rate limit (CHARGEGATE_KEY_RATE_LIMIT), the "
            "operator's max_authorize_per_minute, or the key's concurrent-call cap; the call "
            "did not reach Google and did not use the token",
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
    },
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/AuthorizeIn"}}
            },
        },
    },
)
async def authorize(request: Request) -> Response:
    # The hot path: only `request` is declared, and the body is parsed here after the key
    # is checked, which spares FastAPI's dependency and body machinery (same answers, less
    # CPU per call; see bench/RESULTS.md). The OpenAPI description is given above.
    started = time.perf_counter()
    principal = await authenticate(request)
    key = _idempotency_key(request.headers.get("idempotency-key"))
    try:
        body = AuthorizeIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None
    require_operator(principal, body.operator_id, Role.BACKEND)
    services = services_of(request)
    # Limits come before DecisionService: a refused call neither claims its token nor
    # reaches Google. An unknown operator is 404 before any limit counts the call.
    state = await services.operators.get(body.operator_id)
    if state is None:
        raise NotFound(f"Operator {body.operator_id} does not exist.")
    limiter = services.limiter
    per_minute = state.policy.max_authorize_per_minute
    limiter.enter(principal.key_id)
    try:
        if limiter.key_rate is not None or per_minute is not None:
            await limiter.admit(principal.key_id, body.operator_id, per_minute)
        answer = await services.decisions.authorize(principal, body, state, key)
    finally:
        limiter.leave(principal.key_id)
    AUTHORIZE_DURATION.observe(time.perf_counter() - started)
    # The answer is already JSON-shaped; validating it again would only cost time.
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


@router.post(
    "/sessions/{decision_id}/outcome",
    status_code=202,
    response_model=OutcomeAccepted,
    tags=["backend"],
    operation_id="reportOutcome",
    responses={
        **AUTH_ERRORS,
        404: {"description": "Unknown decision (or one of another operator)"},
        409: {"description": "The decision has no assessment to annotate"},
    },
)
async def report_outcome(
    decision_id: Annotated[str, Path(max_length=40)],
    body: OutcomeIn,
    principal: Authenticated,
    services: ServicesDep,
) -> OutcomeAccepted:
    require_role(principal, Role.BACKEND)
    reasons = list(dict.fromkeys(body.reasons))
    async with services.engine.begin() as conn:
        decision = await repo.decision_for_update(conn, decision_id)
        if decision is None or not principal.may_act_for(decision.operator_id):
            raise NotFound("No decision has that id.")
        if decision.assessment_name is None:
            raise Conflict(
                "This decision was made without an assessment; there is nothing to annotate."
            )
        previous_reasons = sorted(decision.outcome_reasons or [])
        same_report = decision.outcome == body.outcome and previous_reasons == sorted(reasons)
        if not same_report:
            await repo.record_outcome(conn, decision, body.outcome, reasons, utcnow())
    services.outbox.wake()
    return OutcomeAccepted(decision_id=decision_id, outcome=body.outcome, reasons=reasons)


@router.get(
    "/operators/{operator_id}/decisions",
    response_model=DecisionPage,
    tags=["operator"],
    operation_id="listDecisions",
    responses={**AUTH_ERRORS, 404: {"description": "Unknown operator"}},
)
async def list_decisions(
    operator_id: OperatorIdPath,
    principal: OperatorAdmin,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    decision: Literal["allow", "deny"] | None = None,
    since: AwareDatetime | None = None,
) -> DecisionPage:
    before = None
    if cursor:
        at_text, decision_id = decode_cursor(cursor, str, str)
        try:
            at = datetime.fromisoformat(at_text)
        except ValueError:
            raise invalid_cursor() from None
        if at.tzinfo is None:
            # Only a forged cursor lacks the offset; comparing it would fail in the database.
            raise invalid_cursor()
        before = (at, decision_id)
    async with services.engine.connect() as conn:
        if not await operators_repo.operator_exists(conn, operator_id):
            raise NotFound(f"Operator {operator_id} does not exist.")
        rows = await repo.decision_page(conn, operator_id, limit, before, decision, since)
    items = [DecisionItem.model_validate(row, from_attributes=True) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.evaluated_at.isoformat(), last.decision_id)
    return DecisionPage(items=items, next_cursor=next_cursor)
