"""Pure ASGI middleware: request ids and access log, the request body limit, and JSON bodies
that are not UTF-8 text."""

from __future__ import annotations

import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_response
from app.logging import request_id_var

MAX_BODY_BYTES = 64 * 1024
_JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})  # the methods whose bodies the routes read

access_log = logging.getLogger("chargegate.access")


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID, echoed back) and writes one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or secrets.token_hex(8)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The path only, never the query string or headers: they may carry secrets.
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            request_id_var.reset(token)


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
                return text
    return None


class BodyLimitMiddleware:
    """Reads the whole body (at most MAX_BODY_BYTES) before the app sees it.

    Checking Content-Length alone would let a chunked upload through, so the
    bytes are counted as they arrive and the app gets them in one piece.

    A JSON body that is not UTF-8 text is answered 422 here, like every other body that is
    not a JSON document: FastAPI would answer its routes' undecodable bodies with a bare 400
    ("There was an error parsing the body"), which the OpenAPI document does not list.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and scope["method"] in _JSON_METHODS and not _utf8_json_text(scope, body):
            await _not_utf8(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            413,
            "Request body too large",
            f"Request bodies are limited to {self.max_bytes // 1024} KiB.",
            slug="payload-too-large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _utf8_json_text(scope: Scope, body: bytes) -> bool:
    """False for a body read as JSON (declared JSON, or no Content-Type: FastAPI reads those
    as JSON too) that is not UTF-8 text. A raw NUL byte is never part of a JSON text; ruling
    it out as well leaves `json.loads` nothing to detect as UTF-16/32, so it cannot fail on
    the encoding once this passes."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            if media_type != b"application/json" and not media_type.endswith(b"+json"):
                return True
            break
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _not_utf8(scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        422,
        "Invalid request",
        "The request body is not a JSON document: it is not UTF-8 text.",
        slug="validation-error",
        errors=[{"loc": ["body"], "msg": "JSON text must be UTF-8", "type": "json_invalid"}],
    )
    await response(scope, receive, send)
