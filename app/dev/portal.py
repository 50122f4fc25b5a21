"""The demo driver portal of `chargegate dev`: a static page at /demo, and POST /demo/start,
standing in for the charging backend behind such a page.

The page sends its reCAPTCHA token here, never to chargegate: this side holds the backend
API key and calls POST /sessions/authorize over HTTP, as a real charging backend does.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

STATIC = Path(__file__).with_name("static")
_NO_STORE = {"Cache-Control": "no-store"}
# What the page may learn of a decision (the rest is for the backend's own log).
_SHOWN = ("decision_id", "decision", "reason", "score", "threshold", "mode")

router = APIRouter(include_in_schema=False)


@dataclass
class DemoBackend:
    client: httpx.AsyncClient  # base_url: chargegate
    operator_id: str
    backend_key: str | None = None  # known once the dev stack has set itself up


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(default=None, max_length=8192)
    evse_id: str = Field(min_length=1, max_length=64)


@router.get("/demo")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=_NO_STORE)


@router.get("/demo/portal.js")
async def script() -> FileResponse:
    return FileResponse(STATIC / "portal.js", media_type="text/javascript", headers=_NO_STORE)


@router.post("/demo/start")
async def start(body: StartRequest, request: Request) -> JSONResponse:
    backend: DemoBackend = request.app.state.demo_backend
    if backend.backend_key is None:
        return JSONResponse({"error": "the dev stack is still starting"}, 503)
    session_ref = "demo-" + secrets.token_hex(6)
    response = await backend.client.post(
        "/sessions/authorize",
        headers={
            "Authorization": f"Bearer {backend.backend_key}",
            # A retry with the same key gets the first answer instead of a second assessment.
            "Idempotency-Key": session_ref,
        },
        json={
            "operator_id": backend.operator_id,
            "token": body.token,
            "session_ref": session_ref,
            "evse_id": body.evse_id,
            "user_ip": request.client.host if request.client else None,
            "user_agent": request.headers.get("user-agent", "")[:1024] or None,
        },
    )
    if response.status_code != 200:
        return JSONResponse({"error": f"chargegate answered {response.status_code}"}, 502)
    decision = response.json()
    # Here a real backend starts the session on "allow" and refuses it on "deny".
    return JSONResponse({name: decision[name] for name in _SHOWN}, headers=_NO_STORE)
