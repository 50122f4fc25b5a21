"""Google access tokens for service-account keys, minted once and reused until near expiry."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from google.auth import crypt, jwt

from app.credentials.types import ApiKeyCredential, GoogleCredential, ServiceAccountKey
from app.metrics import ACCESS_TOKEN_MINTS
from app.recaptcha.http import retry_after, send, transport_failure
from app.recaptcha.types import UpstreamError, UpstreamErrorKind
from app.settings import GoogleAuthMode

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_LIFETIME_SECONDS = 3600
REFRESH_MARGIN_SECONDS = 300
_OAUTH_REFUSALS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_CacheKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # wall clock, seconds


class AccessTokenProvider:
    """Auth headers for Google calls; one access token per service-account key at a time."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        mode: GoogleAuthMode,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._mode = mode
        self._clock = clock
        self._tokens: dict[_CacheKey, _Token] = {}
        self._locks: dict[_CacheKey, asyncio.Lock] = {}

    async def auth_headers(self, cred: GoogleCredential, deadline: float) -> dict[str, str]:
        """Headers authenticating `cred`; `deadline` is a time.monotonic() instant."""
        if isinstance(cred, ApiKeyCredential):
            return {"x-goog-api-key": cred.api_key}
        token = await self._access_token(cred, deadline)
        return {"authorization": f"Bearer {token}"}

    def forget(self, cred: GoogleCredential) -> None:
        """Drop the cached token of `cred` (Google refused it), so the next call mints anew."""
        if isinstance(cred, ServiceAccountKey):
            self._tokens.pop(self._cache_key(cred), None)

    def _cache_key(self, cred: ServiceAccountKey) -> _CacheKey:
        return (cred.fingerprint, cred.private_key_id, self._mode.value)

    def _cached(self, key: _CacheKey) -> str | None:
        token = self._tokens.get(key)
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        return None

    async def _access_token(self, cred: ServiceAccountKey, deadline: float) -> str:
        key = self._cache_key(cred)
        if (value := self._cached(key)) is not None:
            return value
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                # Single flight: concurrent first calls wait for one mint and share it.
                async with self._locks.setdefault(key, asyncio.Lock()):
                    if (value := self._cached(key)) is not None:
                        return value
                    token = await self._mint(cred, deadline)
                    self._tokens[key] = token
                    ACCESS_TOKEN_MINTS.inc()
                    return token.value
        except TimeoutError:
            raise UpstreamError.of(
                UpstreamErrorKind.TIMEOUT, "access token not obtained in time"
            ) from None

    async def _mint(self, cred: ServiceAccountKey, deadline: float) -> _Token:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": cred.client_email,
            "scope": SCOPE,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECONDS,
        }
        if self._mode is GoogleAuthMode.SELF_SIGNED_JWT:
            claims["sub"] = cred.client_email
            return _Token(await _sign(cred, claims), _refresh_at(now, TOKEN_LIFETIME_SECONDS))
        claims["aud"] = cred.token_uri
        assertion = await _sign(cred, claims)
        value, lifetime = await self._exchange(cred.token_uri, assertion, deadline)
        return _Token(value, _refresh_at(now, lifetime))

    async def _exchange(self, token_uri: str, assertion: str, deadline: float) -> tuple[str, int]:
        try:
            response = await send(
                self._http,
                "POST",
                token_uri,
                deadline=deadline,
                data={"grant_type": JWT_GRANT_TYPE, "assertion": assertion},
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            # Not chained: the httpx error carries the request, and the assertion is a credential.
            raise transport_failure(exc, "token endpoint: ") from None
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 200:
            if isinstance(body, dict):
                value, lifetime = body.get("access_token"), body.get("expires_in")
                if isinstance(value, str) and value and isinstance(lifetime, int | float):
                    return value, int(lifetime)
            raise UpstreamError.of(
                UpstreamErrorKind.BAD_RESPONSE, "token endpoint answer not understood", status
            )
        error = body.get("error") if isinstance(body, dict) else None
        code = error if isinstance(error, str) and _SAFE_CODE.match(error) else ""
        detail = f"token endpoint answered {status} {code}".rstrip()
        if status in (401, 403) or (status == 400 and code in _OAUTH_REFUSALS):
            kind = UpstreamErrorKind.CREDENTIALS_REJECTED
        elif status == 429:
            kind = UpstreamErrorKind.RATE_LIMITED
        elif status >= 500:
            kind = UpstreamErrorKind.SERVER_ERROR
        elif 400 <= status < 500:
            kind = UpstreamErrorKind.BAD_REQUEST
        else:
            kind = UpstreamErrorKind.BAD_RESPONSE
        raise UpstreamError.of(kind, detail, status, retry_after(response))


async def _sign(cred: ServiceAccountKey, claims: dict[str, Any]) -> str:
    """A JWT signed with the key of `cred` (header kid = private_key_id)."""
    # Parsing and validating the RSA key costs ~35 ms of CPU: off the event loop, and done
    # per mint (about hourly) rather than keeping parsed keys of replaced credentials around.
    try:
        return await asyncio.to_thread(_sign_blocking, cred, claims)
    except Exception:
        # No chaining: the parser's error may quote the key.
        raise UpstreamError.of(
            UpstreamErrorKind.CREDENTIALS_REJECTED, "private key is not usable"
        ) from None


def _sign_blocking(cred: ServiceAccountKey, claims: dict[str, Any]) -> str:
    signer = crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
        cred.private_key, key_id=cred.private_key_id
    )
    encoded: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
    return encoded.decode("ascii")


def _refresh_at(issued_at: int, lifetime: int) -> float:
    # Short-lived tokens would otherwise be "expired" on arrival and minted per request.
    return issued_at + lifetime - min(REFRESH_MARGIN_SECONDS, lifetime / 2)
