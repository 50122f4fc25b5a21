"""Health, readiness and metrics endpoints for the people who run the service."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.errors import problem_response
from app.services import ServicesDep

router = APIRouter(tags=["operations"])

READY_TIMEOUT_SECONDS = 2.0


@router.get(
    "/healthz",
    operation_id="healthz",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready"}}}},
        503: {"description": "The database does not answer"},
    },
)
async def readyz(services: ServicesDep) -> Any:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception:
        return problem_response(503, "Not ready", "The database does not answer.", slug="not-ready")
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
