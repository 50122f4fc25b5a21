"""Injected failures: slow answers, Google's error statuses, dropped connections, broken JSON.

A dropped connection must look like one to the client: no HTTP answer at all, the socket
closed after the request arrived (the case a client may not resend, since Google may have
seen the token). An ASGI app cannot do that on its own: raising makes uvicorn answer 500.
So the server (server.py) hands each request a way to abort its TCP connection through an
ASGI scope extension, and DropConnection uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.recaptcha.emulator import wire
from app.recaptcha.emulator.state import EmulatorState, FaultKind, FaultPlan, FaultTarget

# scope["extensions"][DROP_EXTENSION]["drop"]() aborts the request's TCP connection.
DROP_EXTENSION = "chargegate.drop_connection"
BROKEN_JSON = b'{"name": "projects/'  # a 200 cut off mid-body

_OAUTH_ERRORS = {
    429: "rate_limit_exceeded",
    500: "internal_failure",
    503: "temporarily_unavailable",
}


class DropConnection(Response):
    """Not an answer: closes the client's connection, sending nothing."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drop = scope.get("extensions", {}).get(DROP_EXTENSION, {}).get("drop")
        if drop is None:
            # In-process (httpx.ASGITransport) there is no socket to close.
            raise ConnectionAbortedError("emulator fault: connection dropped")
        drop()
        # Wait for the server to notice, so it neither answers nor logs a missing response.
        while (await receive())["type"] != "http.disconnect":
            pass


Handler = Callable[[Request], Awaitable[Response]]


async def with_faults(
    request: Request,
    state: EmulatorState,
    project_id: str | None,
    target: FaultTarget,
    handler: Handler,
) -> Response:
    """`handler`'s answer, or what a fault plan of the project makes of this call.

    Faults strike after the whole request arrived. A dropped connection drops the answer,
    not the request: Google may have done the work (a token so sent is used up)."""
    plan = state.take_fault(project_id, target) if project_id is not None else None
    if plan is None:
        return await handler(request)
    await request.body()
    if plan.kind is FaultKind.DELAY:
        await asyncio.sleep(plan.delay_ms / 1000)
        return await handler(request)
    if plan.kind is FaultKind.DROP:
        with contextlib.suppress(Exception):
            await handler(request)
        return DropConnection()
    if plan.kind is FaultKind.BROKEN_JSON:
        return Response(BROKEN_JSON, 200, media_type="application/json")
    return _status(state, plan, target)


def _status(state: EmulatorState, plan: FaultPlan, target: FaultTarget) -> Response:
    if target is FaultTarget.TOKEN:
        # The token endpoint speaks OAuth (RFC 6749 §5.2), not google.rpc.Status.
        error = _OAUTH_ERRORS.get(plan.status, "invalid_request")
        body: dict[str, Any] = {"error": error, "error_description": "emulated failure"}
        return JSONResponse(body, plan.status, headers=_retry_after(plan))
    number = state.project(plan.project_id).number
    messages = {
        429: wire.quota_exceeded(number),
        500: wire.INTERNAL,
        503: wire.UNAVAILABLE,
    }
    message = messages.get(plan.status, "emulated failure")
    details = []
    if plan.status == 429:
        details.append(
            wire.error_info(
                "RATE_LIMIT_EXCEEDED", consumer=f"projects/{number}", quota_limit="Assessments"
            )
        )
    body = wire.error_body(plan.status, message, details)
    return JSONResponse(body, plan.status, headers=_retry_after(plan))


def _retry_after(plan: FaultPlan) -> dict[str, str] | None:
    return None if plan.retry_after is None else {"Retry-After": str(plan.retry_after)}
