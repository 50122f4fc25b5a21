"""The emulator's control API under /emulator/ (clearly not a Google path): set up projects,
keys and credentials, mint tokens (for pages on any origin: CORS), inject faults, read
what happened. JSON in snake_case, like the Python API it mirrors."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.recaptcha.emulator import wire
from app.recaptcha.emulator.state import EmulatorState, FaultTarget

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


class ControlError(Exception):
    """A refused /emulator request (400/404), answered in the same JSON shape as Google's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def control_routes(emulator: EmulatorState) -> list[Route]:
    """The /emulator/ routes over `emulator`."""

    async def add_project(request: Request) -> Response:
        body = await _control_body(request)
        try:
            project = emulator.add_project(
                _string(body, "project_id"), _optional(body, "project_number")
            )
        except ValueError as exc:
            raise ControlError(400, str(exc)) from None
        return _control({"project_id": project.project_id, "project_number": project.number})

    async def add_key(request: Request) -> Response:
        body = await _control_body(request)
        project_id = _known_project(emulator, request.path_params["project"])
        try:
            site_key = emulator.add_key(
                project_id,
                _optional(body, "site_key"),
                integration_type=_optional(body, "integration_type") or "SCORE",
                allowed_domains=_strings(body, "allowed_domains"),
                display_name=_optional(body, "display_name"),
            )
        except ValueError as exc:
            raise ControlError(400, str(exc)) from None
        return _control({"site_key": site_key})

    async def add_service_account(request: Request) -> Response:
        body = await _control_body(request)
        project_id = _known_project(emulator, request.path_params["project"])
        token_uri = _optional(body, "token_uri") or str(request.url_for("token"))
        return _control(emulator.create_service_account(project_id, token_uri))

    async def add_api_key(request: Request) -> Response:
        project_id = _known_project(emulator, request.path_params["project"])
        return _control({"api_key": emulator.create_api_key(project_id)})

    async def mint_token(request: Request) -> Response:
        body = await _control_body(request)
        try:
            value = emulator.issue_token(
                _string(body, "site_key"),
                _optional(body, "action") or "",
                _optional(body, "hostname") or "",
                score=_number(body, "score", 0.9),
                age_seconds=_number(body, "age_seconds", 0.0),
                reasons=_strings(body, "reasons"),
            )
        except KeyError:
            raise ControlError(404, "unknown site key") from None
        except ValueError as exc:
            raise ControlError(400, str(exc)) from None
        return _control({"token": value})

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            emulator.clear_faults()
            return Response(status_code=204, headers=_CORS)
        if request.method == "GET":
            return _control([plan.to_json() for plan in emulator.faults], 200)
        body = await _control_body(request)
        project_id = _known_project(emulator, _string(body, "project_id"))
        count = body.get("count", 1)
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise ControlError(400, "count must be an integer or null")
        retry_after = body.get("retry_after")
        if retry_after is not None and (
            not isinstance(retry_after, int) or isinstance(retry_after, bool)
        ):
            raise ControlError(400, "retry_after must be an integer or null")
        try:
            plan = emulator.add_fault(
                project_id,
                _string(body, "kind"),
                count=count,
                delay_ms=int(_number(body, "delay_ms", 0)),
                status=int(_number(body, "status", 503)),
                target=_optional(body, "target") or FaultTarget.API,
                retry_after=retry_after,
            )
        except ValueError as exc:
            raise ControlError(400, str(exc)) from None
        return _control(plan.to_json())

    async def stats(request: Request) -> Response:
        return _control(emulator.stats(), 200)

    async def annotations(request: Request) -> Response:
        items = [
            {"assessment_name": a.assessment_name, "annotation": a.annotation, "reasons": a.reasons}
            for a in list(emulator.annotations)
        ]
        return _control(items, 200)

    async def recorded(request: Request) -> Response:
        items = [{"method": r.method, "path": r.path, "body": r.body} for r in emulator.requests]
        return _control(items, 200)

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=_CORS)

    return [
        Route("/emulator/projects", add_project, methods=["POST"]),
        Route("/emulator/projects/{project}/keys", add_key, methods=["POST"]),
        Route(
            "/emulator/projects/{project}/service-accounts", add_service_account, methods=["POST"]
        ),
        Route("/emulator/projects/{project}/api-keys", add_api_key, methods=["POST"]),
        Route("/emulator/tokens", mint_token, methods=["POST"], name="mint_token"),
        Route("/emulator/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/emulator/stats", stats, methods=["GET"]),
        Route("/emulator/annotations", annotations, methods=["GET"]),
        Route("/emulator/requests", recorded, methods=["GET"]),
        Route("/emulator/{rest:path}", preflight, methods=["OPTIONS"]),
    ]


async def control_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    body = wire.error_body(exc.status, exc.message)
    return JSONResponse(body, exc.status, headers=_CORS)


async def _control_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise ControlError(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "body must be a JSON object")
    return body


def _control(body: Any, status: int = 201) -> Response:
    return JSONResponse(body, status, headers=_CORS)


def _known_project(state: EmulatorState, project_ref: str) -> str:
    project = state.find_project(project_ref)
    if project is None:
        raise ControlError(404, f"unknown project {project_ref!r}")
    return project.project_id


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"{name} must be a non-empty string")
    return value


def _optional(body: dict[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _string(body, name)


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError(400, f"{name} must be a list of strings")
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{name} must be a number")
    return float(value)
