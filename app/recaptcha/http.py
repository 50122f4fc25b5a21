"""The one shared HTTP client for Google, and what its transport errors mean."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from app.recaptcha.types import UpstreamError, UpstreamErrorKind

# Fallback for requests that do not pass their own (every Google call passes the time left
# of its deadline).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# Kept below Google's idle timeout: a POST on a pooled socket the server has already closed
# fails as "disconnected" and may not be resent, so stale sockets must not linger.
KEEPALIVE_SECONDS = 30.0
RETRY_DELAY_SECONDS = (0.05, 0.2)
# A retry with less time left than this could not complete anyway (TLS and Google's answer
# take longer), and would turn "unreachable" into "timeout".
MIN_ATTEMPT_SECONDS = 0.05


def build_http_client(max_connections: int = 200) -> httpx.AsyncClient:
    """The shared client: httpx's API over the aiohttp transport (see DESIGN.md)."""
    # HttpxAiohttpClient builds an AiohttpTransport from these limits, and uses the same
    # transport for proxies taken from the environment (plain AsyncClient would fall back
    # to httpcore there).
    return HttpxAiohttpClient(
        timeout=DEFAULT_TIMEOUT,
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_SECONDS,
        ),
        follow_redirects=False,
    )


def is_connect_refused(exc: httpx.HTTPError) -> bool:
    """True when the request was certainly never sent (refused, DNS failure): safe to retry."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        # httpx-aiohttp maps every aiohttp.ClientConnectionError, ServerDisconnectedError
        # (request possibly delivered) included, to httpx.ConnectTimeout, so only the
        # aiohttp cause tells them apart. A TLS failure is not going to heal by retrying.
        return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(
            cause, aiohttp.ClientSSLError
        )
    # httpx's own transport, and respx side effects.
    return isinstance(exc, httpx.ConnectError)


def is_timeout(exc: httpx.HTTPError) -> bool:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


def transport_failure(exc: httpx.HTTPError, prefix: str = "") -> UpstreamError:
    """The upstream error for a request that got no HTTP answer (text names no secret)."""
    cause = type(exc.__cause__ or exc).__name__
    if is_timeout(exc):
        kind, what = UpstreamErrorKind.TIMEOUT, "no answer within the deadline"
    elif is_connect_refused(exc):
        kind, what = UpstreamErrorKind.UNREACHABLE, "connection not established"
    else:
        # Possibly after the request arrived: never resent (a token would come back DUPE).
        kind, what = UpstreamErrorKind.UNREACHABLE, "connection failed"
    return UpstreamError.of(kind, f"{prefix}{what} ({cause})")


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline: float,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, retrying only while the connection is refused and time remains.

    `deadline` is a time.monotonic() instant; the caller enforces it (asyncio.timeout),
    each attempt also gets the time left as its own timeout.
    """
    while True:
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            return await http.request(method, url, timeout=httpx.Timeout(remaining), **kwargs)
        except httpx.HTTPError as exc:
            if not is_connect_refused(exc):
                raise
            delay = random.uniform(*RETRY_DELAY_SECONDS)  # noqa: S311 - jitter, not a secret
            if deadline - time.monotonic() <= delay + MIN_ATTEMPT_SECONDS:
                raise
            await asyncio.sleep(delay)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
