"""The OpenAPI document: FastAPI's, with errors described as problem+json and bearer auth."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.decisions.schemas import AuthorizeIn
from app.errors import PROBLEM_JSON

PUBLIC_OPERATIONS = {"healthz", "readyz", "metrics", "getSiteKey"}
# Operations that answer without the database.
DATABASE_FREE_OPERATIONS = {"healthz", "metrics"}
DATABASE_UNAVAILABLE = {
    "description": "The database is unavailable (authorize: only once the last known state is "
    "older than CHARGEGATE_STALE_STATE_SECONDS or the decision buffer is full)",
    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    # authorize parses its own body (see its route), so FastAPI does not list the model.
    schemas["AuthorizeIn"] = AuthorizeIn.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "chargegate API key (cg_…)"}
    }
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            if operation.get("operationId") not in PUBLIC_OPERATIONS:
                operation["security"] = [{"bearer": []}]
            if operation.get("operationId") not in DATABASE_FREE_OPERATIONS:
                responses.setdefault("503", dict(DATABASE_UNAVAILABLE))
            if method in ("post", "put", "patch"):
                responses.setdefault("413", {"description": "Body over 64 KiB"})
            if operation.get("parameters") or operation.get("requestBody"):
                responses.setdefault("422", {})
                responses["422"]["description"] = "Invalid request"
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = problem
    return schema
