"""The emulator as an ASGI app: Google's REST paths, the OAuth token endpoint, the browser
script, and a control API under /emulator/ (clearly not a Google path)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.recaptcha.emulator import auth, wire
from app.recaptcha.emulator.assessments import create_assessment, key_resource
from app.recaptcha.emulator.browser import enterprise_js
from app.recaptcha.emulator.control import ControlError, control_error, control_routes
from app.recaptcha.emulator.faults import Handler, with_faults
from app.recaptcha.emulator.state import (
    Annotation,
    EmulatorState,
    FaultTarget,
    Project,
    RecordedRequest,
)

_ENUM_TYPE = "type.googleapis.com/google.cloud.recaptchaenterprise.v1.AnnotateAssessmentRequest"


def create_emulator_app(state: EmulatorState | None = None) -> Starlette:
    """The emulator; `app.state.emulator` is its EmulatorState (a fresh one by default)."""
    emulator = state if state is not None else EmulatorState()

    # --- Google's REST API (v1) ----------------------------------------------------------

    async def assessments_create(request: Request) -> Response:
        project_ref = request.path_params["project"]
        project = _caller_project(
            request, emulator, project_ref, "CreateAssessment", "assessments.create"
        )
        raw = _json_object(await request.body())
        emulator.record(RecordedRequest("POST", request.url.path, raw))
        body = _fields(raw, wire.ASSESSMENT_FIELDS, "assessment")
        event = body.get("event", {})
        if not isinstance(event, dict):
            raise _invalid_value("assessment.event", event, "TYPE_MESSAGE")
        event = _fields(event, wire.EVENT_FIELDS, "assessment.event")
        for name in wire.EVENT_STRING_FIELDS:
            if name in event and not isinstance(event[name], str):
                raise _invalid_value(f"assessment.event.{name}", event[name], "TYPE_STRING")
        return _google_json(create_assessment(emulator, project, event))

    async def assessments_annotate(request: Request) -> Response:
        project_ref = request.path_params["project"]
        project = _caller_project(
            request, emulator, project_ref, "AnnotateAssessment", "assessments.annotate"
        )
        raw = _json_object(await request.body())
        emulator.record(RecordedRequest("POST", request.url.path, raw))
        body = _fields(raw, wire.ANNOTATE_FIELDS, "")
        annotation = body.get("annotation", "ANNOTATION_UNSPECIFIED")
        if annotation not in wire.ANNOTATIONS:
            raise _invalid_value("annotation", annotation, f"{_ENUM_TYPE}.Annotation")
        reasons = body.get("reasons", [])
        if not isinstance(reasons, list):
            raise _invalid_value("reasons", reasons, f"{_ENUM_TYPE}.Reason")
        for index, reason in enumerate(reasons):
            if reason not in wire.ANNOTATION_REASONS:
                raise _invalid_value(f"reasons[{index}]", reason, f"{_ENUM_TYPE}.Reason")
        name = f"projects/{project.number}/assessments/{request.path_params['assessment']}"
        record = emulator.assessments.get(name)
        if record is None or record.project_id != project.project_id:
            raise auth.ApiError(404, f"Assessment {name} not found.")
        emulator.save_annotation(Annotation(name, annotation, tuple(reasons), body))
        return _google_json({})

    async def keys_get(request: Request) -> Response:
        project_ref = request.path_params["project"]
        project = _caller_project(request, emulator, project_ref, "GetKey", "keys.get")
        emulator.record(RecordedRequest("GET", request.url.path, None))
        key = emulator.keys.get(request.path_params["key"])
        if key is None or key.project_id != project.project_id:
            name = f"projects/{project.number}/keys/{request.path_params['key']}"
            raise auth.ApiError(404, f"Key {name} not found.")
        return _google_json(key_resource(emulator, key))

    # --- OAuth 2.0 token endpoint (oauth2.googleapis.com/token) ---------------------------

    async def token(request: Request) -> Response:
        form = await _form(request)
        try:
            access_token, lifetime = auth.exchange(emulator, form)
        except auth.OAuthError as exc:
            emulator.count_exchange_failure()
            return JSONResponse(exc.body, exc.status, headers={"Cache-Control": "no-store"})
        answer = {"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"}
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    def guarded(target: FaultTarget, handler: Handler) -> Handler:
        """`handler` behind the fault plans of the project the call is for."""

        async def endpoint(request: Request) -> Response:
            if target is FaultTarget.TOKEN:
                project_id = _token_project(emulator, await _form(request))
            else:
                project = emulator.find_project(request.path_params["project"])
                project_id = project.project_id if project else None
            return await with_faults(request, emulator, project_id, target, handler)

        return endpoint

    # --- the browser's script ------------------------------------------------------------

    async def script(request: Request) -> Response:
        render = request.query_params.get("render")
        text = enterprise_js(
            str(request.url_for("mint_token")),
            None if render in (None, "", "explicit") else render,
            request.query_params.get("onload"),
        )
        return Response(text, media_type="text/javascript", headers={"Cache-Control": "no-store"})

    routes = [
        Route(
            "/v1/projects/{project}/assessments",
            guarded(FaultTarget.ASSESSMENTS, assessments_create),
            methods=["POST"],
        ),
        Route(
            "/v1/projects/{project}/assessments/{assessment}:annotate",
            guarded(FaultTarget.ANNOTATE, assessments_annotate),
            methods=["POST"],
        ),
        Route(
            "/v1/projects/{project}/keys/{key}",
            guarded(FaultTarget.KEYS, keys_get),
            methods=["GET"],
        ),
        Route("/token", guarded(FaultTarget.TOKEN, token), methods=["POST"], name="token"),
        Route("/recaptcha/enterprise.js", script, methods=["GET"]),
        *control_routes(emulator),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            auth.ApiError: _api_error,
            ControlError: control_error,
            HTTPException: _http_error,
        },
    )
    app.state.emulator = emulator
    return app


# --- helpers: Google's side ------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


def _token_project(state: EmulatorState, form: dict[str, str]) -> str | None:
    """The project of the service account a token request claims to be (for faults)."""
    jwt = auth.parse_jwt(form.get("assertion", ""))
    account = state.service_accounts.get(str(jwt.claims.get("iss"))) if jwt else None
    return account.project_id if account else None


def _caller_project(
    request: Request, state: EmulatorState, project_ref: str, method: str, permission: str
) -> Project:
    """The URL's project, when the credentials are good and belong to it.

    Google checks identity first (401, or 400 for a bad API key), then IAM: a project that
    does not exist or is not the caller's looks the same (403), so nothing leaks."""
    api_key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    principal = auth.authenticate(state, request.headers.get("authorization"), api_key, method)
    project = state.find_project(project_ref)
    if project is None or project.project_id != principal.project_id:
        raise auth.ApiError(403, wire.permission_denied(f"recaptchaenterprise.{permission}"))
    return project


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise auth.ApiError(400, "Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(body, dict):
        raise auth.ApiError(400, "Invalid JSON payload received. Expected an object.")
    return body


def _fields(obj: dict[str, Any], known: tuple[str, ...], path: str) -> dict[str, Any]:
    """`obj` with proto field names turned into JSON names; an unknown name is Google's 400."""
    result: dict[str, Any] = {}
    for name, value in obj.items():
        json_name = wire.snake_to_camel(name)
        if json_name not in known:
            where = f" at '{path}'" if path else ""
            message = (
                f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
            )
            raise auth.ApiError(400, message, [wire.bad_request(path, message)])
        result[json_name] = value
    return result


def _invalid_value(field: str, value: Any, type_name: str) -> auth.ApiError:
    message = f"Invalid value at '{field}' ({type_name}), {json.dumps(value)}"
    return auth.ApiError(400, message, [wire.bad_request(field, message)])


def _google_json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, indent=2), media_type="application/json; charset=UTF-8")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, auth.ApiError)
    return Response(
        json.dumps(exc.body, indent=2), exc.status, media_type="application/json; charset=UTF-8"
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    # Google routes on method and path together: anything it does not serve is a 404.
    return JSONResponse(wire.error_body(404, "Method not found."), 404)
