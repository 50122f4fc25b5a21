"""reCAPTCHA Enterprise REST calls: assessments, annotations, keys."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx

from app.credentials.types import GoogleCredential, ServiceAccountKey
from app.metrics import UPSTREAM_DURATION, UPSTREAM_REQUESTS, UPSTREAM_WAITING
from app.recaptcha.breaker import CircuitBreaker
from app.recaptcha.http import retry_after, send, transport_failure
from app.recaptcha.tokens import AccessTokenProvider
from app.recaptcha.types import Assessment, UpstreamError, UpstreamErrorKind

T = TypeVar("T")

# Path segments we put into Google URLs; the leading alphanumeric rules out "." and "..".
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,254}$")
_ASSESSMENT_NAME = re.compile(r"^projects/([^/]+)/assessments/([^/]+)$")
_GOOGLE_STATUS = re.compile(r"^[A-Z_]{1,64}$")


class RecaptchaClient:
    """A thin client of our own over the shared httpx client, so the transport can change."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        tokens: AccessTokenProvider,
        timeout_seconds: float,
        *,
        breaker: CircuitBreaker | None = None,
        max_concurrency: int = 200,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._timeout = timeout_seconds
        self.breaker = breaker or CircuitBreaker(failures=5, cooldown=10.0)
        # FIFO slots: a call waits for one within its own deadline, then times out.
        self._slots = asyncio.Semaphore(max_concurrency)

    async def create_assessment(
        self, cred: GoogleCredential, project_id: str, event: dict[str, str]
    ) -> Assessment:
        url = f"{self._base}/v1/projects/{_segment(project_id, 'project id')}/assessments"
        if not self.breaker.admit(project_id):
            raise UpstreamError.of(UpstreamErrorKind.CIRCUIT_OPEN, "circuit breaker open")
        try:
            assessment = await self._call(cred, "POST", url, parse_assessment, {"event": event})
        except UpstreamError as exc:
            failure = exc.failure
            self.breaker.failed(project_id, failure.kind, failure.retry_after_seconds)
            raise
        except BaseException:
            self.breaker.abandoned(project_id)
            raise
        self.breaker.succeeded(project_id)
        return assessment

    async def annotate(
        self, cred: GoogleCredential, assessment_name: str, annotation: str, reasons: list[str]
    ) -> None:
        match = _ASSESSMENT_NAME.match(assessment_name)
        if match is None:
            raise UpstreamError.of(UpstreamErrorKind.BAD_REQUEST, "invalid assessment name")
        project, assessment = (_segment(part, "assessment name") for part in match.groups())
        url = f"{self._base}/v1/projects/{project}/assessments/{assessment}:annotate"
        body = {"annotation": annotation, "reasons": reasons}
        await self._call(cred, "POST", url, lambda _: None, body)

    async def get_key(
        self, cred: GoogleCredential, project_id: str, site_key: str
    ) -> dict[str, Any]:
        project = _segment(project_id, "project id")
        url = f"{self._base}/v1/projects/{project}/keys/{_segment(site_key, 'site key')}"
        return await self._call(cred, "GET", url, lambda body: body)

    async def check_credentials(self, cred: GoogleCredential) -> None:
        """Mint a fresh access token for a service account (an API key is only checked by a
        real call such as get_key)."""
        if isinstance(cred, ServiceAccountKey):
            self._tokens.forget(cred)
            await self._tokens.auth_headers(cred, time.monotonic() + self._timeout)

    async def _call(
        self,
        cred: GoogleCredential,
        method: str,
        url: str,
        parse: Callable[[dict[str, Any]], T],
        json: dict[str, Any] | None = None,
    ) -> T:
        started = time.monotonic()
        try:
            result = parse(await self._send(cred, method, url, json, started + self._timeout))
        except UpstreamError as exc:
            self._record(exc.failure.kind.value, started)
            raise
        self._record("ok", started)
        return result

    async def _send(
        self,
        cred: GoogleCredential,
        method: str,
        url: str,
        json: dict[str, Any] | None,
        deadline: float,
    ) -> dict[str, Any]:
        """The JSON object Google answered, within one deadline for token, retries and body."""
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                await self._take_slot()
                try:
                    headers = await self._tokens.auth_headers(cred, deadline)
                    response = await send(
                        self._http, method, url, deadline=deadline, headers=headers, json=json
                    )
                finally:
                    self._slots.release()
        except TimeoutError:
            raise UpstreamError.of(
                UpstreamErrorKind.TIMEOUT, "no answer within the deadline"
            ) from None
        except httpx.HTTPError as exc:
            # Not chained: the httpx error carries the request, with its token and credentials.
            raise transport_failure(exc) from None
        status = response.status_code
        if 200 <= status < 300:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise UpstreamError.of(
                    UpstreamErrorKind.BAD_RESPONSE, "answer is not a JSON object", status
                )
            return body
        if status in (401, 403) or _api_key_invalid(response):
            # A revoked or expired access token: the next call mints a new one.
            self._tokens.forget(cred)
            kind = UpstreamErrorKind.CREDENTIALS_REJECTED
        elif status == 429:
            kind = UpstreamErrorKind.RATE_LIMITED
        elif 400 <= status < 500:
            kind = UpstreamErrorKind.BAD_REQUEST
        elif status >= 500:
            kind = UpstreamErrorKind.SERVER_ERROR
        else:
            kind = UpstreamErrorKind.BAD_RESPONSE
        raise UpstreamError.of(kind, _error_detail(response), status, retry_after(response))

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        UPSTREAM_WAITING.inc()
        try:
            await self._slots.acquire()
        finally:
            UPSTREAM_WAITING.dec()

    @staticmethod
    def _record(outcome: str, started: float) -> None:
        UPSTREAM_REQUESTS.labels(outcome=outcome).inc()
        UPSTREAM_DURATION.observe(time.monotonic() - started)


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value):
        raise UpstreamError.of(UpstreamErrorKind.BAD_REQUEST, f"invalid {what}")
    return value


def _api_key_invalid(response: httpx.Response) -> bool:
    """Google refuses a bad API key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    if response.status_code != 400:
        return False
    try:
        details = response.json()["error"]["details"]
        return any(d.get("reason") == "API_KEY_INVALID" for d in details if isinstance(d, dict))
    except (ValueError, KeyError, TypeError):
        return False


def _error_detail(response: httpx.Response) -> str:
    """`HTTP 400 INVALID_ARGUMENT`: Google's status code word only, its message may echo input."""
    try:
        error = response.json().get("error")
        status = error.get("status") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        status = None
    if isinstance(status, str) and _GOOGLE_STATUS.match(status):
        return f"HTTP {response.status_code} {status}"
    return f"HTTP {response.status_code}"


def parse_assessment(body: dict[str, Any]) -> Assessment:
    """Read an assessment as Google sends it: proto3 JSON omits false, empty and zero values
    (so a missing field reads as its empty value, null likewise); unknown fields are ignored."""
    try:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("assessment has no name")
        props = _object(body, "tokenProperties")
        risk = _object(body, "riskAnalysis")
        valid = props.get("valid", False)
        if not isinstance(valid, bool | None):
            raise ValueError("tokenProperties.valid is not a boolean")
        score = risk.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise ValueError("riskAnalysis.score is not a number")
        reasons = risk.get("reasons")
        if reasons is None:
            reasons = []
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("riskAnalysis.reasons is not a list of strings")
        invalid_reason = props.get("invalidReason")
        if invalid_reason is not None and not isinstance(invalid_reason, str):
            raise ValueError("tokenProperties.invalidReason is not a string")
        return Assessment(
            name=name,
            valid=valid is True,
            invalid_reason=invalid_reason,
            action=_string(props, "action"),
            hostname=_string(props, "hostname"),
            create_time=_timestamp(props.get("createTime")),
            score=None if score is None else float(score),
            reasons=tuple(reasons),
        )
    except ValueError as exc:
        raise UpstreamError.of(UpstreamErrorKind.BAD_RESPONSE, str(exc), 200) from None


def _object(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field} is not an object")
    return value


def _string(props: dict[str, Any], field: str) -> str:
    value = props.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"tokenProperties.{field} is not a string")
    return value


def _timestamp(value: object) -> datetime | None:
    """RFC 3339 with up to 9 fractional digits (nanoseconds are truncated to microseconds)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
