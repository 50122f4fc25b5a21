"""The reCAPTCHA client and access tokens against respx and against real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from httpx_aiohttp.transport import map_aiohttp_exceptions
from prometheus_client import REGISTRY

from app.credentials.types import ApiKeyCredential, ServiceAccountKey
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.http import build_http_client, is_connect_refused, is_timeout
from app.recaptcha.tokens import AccessTokenProvider
from app.recaptcha.types import UpstreamError, UpstreamErrorKind
from app.settings import GoogleAuthMode
from tests.conftest import verify_jwt

BASE = "https://recaptcha.test"
TOKEN_URI = "https://oauth2.test/token"
ASSESSMENTS = f"{BASE}/v1/projects/acme/assessments"
API_KEY = "AIzaSyTEST-api-key-never-logged"
ACCESS_TOKEN = "ya29.test-access-token"
RECAPTCHA_TOKEN = "03AFcWeA-the-recaptcha-token"
EVENT = {
    "token": RECAPTCHA_TOKEN,
    "siteKey": "6LcSiteKey",
    "expectedAction": "start_session",
    "userIpAddress": "203.0.113.7",
    "userAgent": "Mozilla/5.0",
}
ASSESSMENT = {
    "name": "projects/acme/assessments/abc123",
    "riskAnalysis": {"score": 0.8999999761581421, "reasons": []},
    "tokenProperties": {
        "valid": True,
        "invalidReason": "INVALID_REASON_UNSPECIFIED",
        "hostname": "portal.acme.example",
        "action": "start_session",
        "createTime": "2026-11-24T11:59:30.412345678Z",
    },
}
EXCHANGE_ANSWER = {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}


# --- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_key: rsa.RSAPublicKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def mints() -> float:
    return sample("chargegate_access_token_mints_total")


def upstream(outcome: str) -> float:
    return sample("chargegate_upstream_requests_total", {"outcome": outcome})


def bearer(request: httpx.Request) -> str:
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return KeyPair(pem, key.public_key())


@pytest.fixture
def sa_cred(test_key: KeyPair) -> ServiceAccountKey:
    der = test_key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ServiceAccountKey(
        client_email="gate@acme.iam.gserviceaccount.com",
        private_key_id="0123456789abcdef",
        private_key=test_key.private_pem,
        token_uri=TOKEN_URI,
        project_id="acme",
        # Unique per test, so cached tokens of one test never serve another.
        fingerprint=f"sha256:{hashlib.sha256(der).hexdigest()}:{time.monotonic_ns()}",
    )


@pytest.fixture
def api_cred() -> ApiKeyCredential:
    return ApiKeyCredential(API_KEY, "sha256:api")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = build_http_client()
    yield client
    await client.aclose()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    # The aiohttp transport is only intercepted with using="httpx". A request to a path
    # without a route fails the test: that is how tests assert "no call to Google".
    with respx.mock(using="httpx") as router:
        yield router


def make_client(
    http: httpx.AsyncClient,
    mode: GoogleAuthMode = GoogleAuthMode.TOKEN_EXCHANGE,
    timeout: float = 2.0,
    base: str = BASE,
    clock: FakeClock | None = None,
) -> RecaptchaClient:
    tokens = AccessTokenProvider(http, mode, clock=clock or time.time)
    return RecaptchaClient(http, base, tokens, timeout)


async def upstream_error(call: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await call
    return caught.value


# --- requests sent -----------------------------------------------------------------------


async def test_assessment_with_api_key(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    route = mock.post(ASSESSMENTS).respond(200, json=ASSESSMENT)
    ok_before = upstream("ok")

    assessment = await make_client(http).create_assessment(api_cred, "acme", EVENT)

    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"event": EVENT}
    assert assessment.name == "projects/acme/assessments/abc123"
    assert assessment.score == 0.8999999761581421
    assert upstream("ok") == ok_before + 1


async def test_self_signed_jwt_bearer(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey, test_key: KeyPair
) -> None:
    route = mock.post(ASSESSMENTS).respond(200, json=ASSESSMENT)
    clock = FakeClock()
    client = make_client(http, GoogleAuthMode.SELF_SIGNED_JWT, clock=clock)

    await client.create_assessment(sa_cred, "acme", EVENT)

    header, claims = verify_jwt(bearer(route.calls.last.request), test_key.public_key)
    assert header == {"typ": "JWT", "alg": "RS256", "kid": sa_cred.private_key_id}
    assert claims == {
        "iss": sa_cred.client_email,
        "sub": sa_cred.client_email,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": int(clock.now),
        "exp": int(clock.now) + 3600,
    }
    assert "x-goog-api-key" not in route.calls.last.request.headers


async def test_token_exchange(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey, test_key: KeyPair
) -> None:
    token_route = mock.post(TOKEN_URI).respond(200, json=EXCHANGE_ANSWER)
    route = mock.post(ASSESSMENTS).respond(200, json=ASSESSMENT)
    clock = FakeClock()

    await make_client(http, clock=clock).create_assessment(sa_cred, "acme", EVENT)

    assert token_route.call_count == 1
    form = parse_qs(token_route.calls.last.request.content.decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    header, claims = verify_jwt(form["assertion"][0], test_key.public_key)
    assert header["kid"] == sa_cred.private_key_id
    assert claims == {
        "iss": sa_cred.client_email,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": TOKEN_URI,
        "iat": int(clock.now),
        "exp": int(clock.now) + 3600,
    }
    assert bearer(route.calls.last.request) == ACCESS_TOKEN


async def test_access_token_reused_until_near_expiry_and_after_forget(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey
) -> None:
    token_route = mock.post(TOKEN_URI).respond(200, json=EXCHANGE_ANSWER)
    mock.post(ASSESSMENTS).respond(200, json=ASSESSMENT)
    clock = FakeClock()
    tokens = AccessTokenProvider(http, GoogleAuthMode.TOKEN_EXCHANGE, clock=clock)
    client = RecaptchaClient(http, BASE, tokens, 2.0)
    before = mints()

    for _ in range(3):
        await client.create_assessment(sa_cred, "acme", EVENT)
    assert token_route.call_count == 1

    clock.now += 3599 - 301  # still more than 5 minutes left
    await client.create_assessment(sa_cred, "acme", EVENT)
    assert token_route.call_count == 1

    clock.now += 2  # now less than 5 minutes left
    await client.create_assessment(sa_cred, "acme", EVENT)
    assert token_route.call_count == 2

    tokens.forget(sa_cred)
    await client.create_assessment(sa_cred, "acme", EVENT)
    await client.create_assessment(sa_cred, "acme", EVENT)
    assert token_route.call_count == 3
    assert mints() == before + 3


async def test_google_401_forgets_the_access_token(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey
) -> None:
    token_route = mock.post(TOKEN_URI).respond(200, json=EXCHANGE_ANSWER)
    mock.post(ASSESSMENTS).mock(
        side_effect=[httpx.Response(401, json={}), httpx.Response(200, json=ASSESSMENT)]
    )
    client = make_client(http)

    error = await upstream_error(client.create_assessment(sa_cred, "acme", EVENT))
    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    await client.create_assessment(sa_cred, "acme", EVENT)
    assert token_route.call_count == 2


@pytest.mark.parametrize("mode", list(GoogleAuthMode))
async def test_concurrent_first_calls_mint_once(
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    sa_cred: ServiceAccountKey,
    mode: GoogleAuthMode,
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=EXCHANGE_ANSWER)

    # Self-signed JWTs need no network: there the token route must not exist.
    if mode is GoogleAuthMode.TOKEN_EXCHANGE:
        token_route = mock.post(TOKEN_URI).mock(side_effect=slow_token)
    route = mock.post(ASSESSMENTS).respond(200, json=ASSESSMENT)
    client = make_client(http, mode)
    before = mints()

    await asyncio.gather(*(client.create_assessment(sa_cred, "acme", EVENT) for _ in range(50)))

    assert mints() == before + 1
    assert route.call_count == 50
    assert len({bearer(call.request) for call in route.calls}) == 1
    if mode is GoogleAuthMode.TOKEN_EXCHANGE:
        assert token_route.call_count == 1


async def test_annotate(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    route = mock.post(f"{ASSESSMENTS}/abc123:annotate").respond(200, json={})

    await make_client(http).annotate(
        api_cred, "projects/acme/assessments/abc123", "FRAUDULENT", ["CHARGEBACK", "REFUND"]
    )

    assert route.call_count == 1
    assert json.loads(route.calls.last.request.content) == {
        "annotation": "FRAUDULENT",
        "reasons": ["CHARGEBACK", "REFUND"],
    }


@pytest.mark.parametrize(
    "name", ["projects/acme/assessments", "projects/../assessments/x", "projects/a/keys/b"]
)
async def test_annotate_refuses_a_strange_name_without_calling_google(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential, name: str
) -> None:
    error = await upstream_error(make_client(http).annotate(api_cred, name, "LEGITIMATE", []))
    assert error.failure.kind is UpstreamErrorKind.BAD_REQUEST
    assert mock.calls.call_count == 0


async def test_get_key(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    key = {"name": "projects/acme/keys/6LcSiteKey", "webSettings": {"integrationType": "SCORE"}}
    route = mock.get(f"{BASE}/v1/projects/acme/keys/6LcSiteKey").respond(200, json=key)

    assert await make_client(http).get_key(api_cred, "acme", "6LcSiteKey") == key
    assert route.call_count == 1


# --- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind", "retry_after"),
    [
        (httpx.Response(200, text="<html>proxy</html>"), UpstreamErrorKind.BAD_RESPONSE, None),
        (httpx.Response(200, json=[ASSESSMENT]), UpstreamErrorKind.BAD_RESPONSE, None),
        (httpx.Response(200, json={"tokenProperties": {}}), UpstreamErrorKind.BAD_RESPONSE, None),
        (httpx.Response(400, json={}), UpstreamErrorKind.BAD_REQUEST, None),
        (httpx.Response(401), UpstreamErrorKind.CREDENTIALS_REJECTED, None),
        (httpx.Response(403, json={}), UpstreamErrorKind.CREDENTIALS_REJECTED, None),
        (httpx.Response(404, json={}), UpstreamErrorKind.BAD_REQUEST, None),
        (
            httpx.Response(429, json={}, headers={"Retry-After": "7"}),
            UpstreamErrorKind.RATE_LIMITED,
            7.0,
        ),
        (httpx.Response(500, json={}), UpstreamErrorKind.SERVER_ERROR, None),
        (httpx.Response(503, text="busy"), UpstreamErrorKind.SERVER_ERROR, None),
    ],
)
async def test_status_classification_without_resend(
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    api_cred: ApiKeyCredential,
    response: httpx.Response,
    kind: UpstreamErrorKind,
    retry_after: float | None,
) -> None:
    route = mock.post(ASSESSMENTS).mock(return_value=response)
    before = upstream(kind.value)

    error = await upstream_error(make_client(http).create_assessment(api_cred, "acme", EVENT))

    assert error.failure.kind is kind
    assert error.failure.status == response.status_code
    assert error.failure.retry_after_seconds == retry_after
    assert route.call_count == 1
    assert upstream(kind.value) == before + 1


async def test_error_text_holds_no_secret(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    echo = {
        "error": {
            "code": 400,
            "message": f"token {RECAPTCHA_TOKEN} with key {API_KEY} is bad",
            "status": "INVALID_ARGUMENT",
        }
    }
    mock.post(ASSESSMENTS).respond(400, json=echo)

    error = await upstream_error(make_client(http).create_assessment(api_cred, "acme", EVENT))

    assert str(error) == "bad_request: HTTP 400 INVALID_ARGUMENT"


async def test_refused_connection_is_retried(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    route = mock.post(ASSESSMENTS).mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=ASSESSMENT)]
    )

    await make_client(http).create_assessment(api_cred, "acme", EVENT)

    assert route.call_count == 2


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ReadTimeout("slow"), UpstreamErrorKind.TIMEOUT),
        (httpx.RemoteProtocolError("dropped"), UpstreamErrorKind.UNREACHABLE),
        (httpx.ReadError("reset"), UpstreamErrorKind.UNREACHABLE),
    ],
)
async def test_other_transport_errors_are_not_retried(
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    api_cred: ApiKeyCredential,
    exc: httpx.HTTPError,
    kind: UpstreamErrorKind,
) -> None:
    route = mock.post(ASSESSMENTS).mock(side_effect=exc)

    error = await upstream_error(make_client(http).create_assessment(api_cred, "acme", EVENT))

    assert error.failure.kind is kind
    assert route.call_count == 1


@pytest.mark.parametrize("slow", ["google", "token endpoint"])
async def test_deadline(http: httpx.AsyncClient, sa_cred: ServiceAccountKey, slow: str) -> None:
    entered: list[httpx.Request] = []

    async def never(request: httpx.Request) -> httpx.Response:
        entered.append(request)
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    # respx records a call only once its side effect returns: this one never does.
    with respx.mock(using="httpx", assert_all_called=False) as mock:
        if slow == "google":
            mock.post(TOKEN_URI).respond(200, json=EXCHANGE_ANSWER)
            mock.post(ASSESSMENTS).mock(side_effect=never)
        else:
            mock.post(TOKEN_URI).mock(side_effect=never)
        started = time.monotonic()

        error = await upstream_error(
            make_client(http, timeout=0.2).create_assessment(sa_cred, "acme", EVENT)
        )

    assert error.failure.kind is UpstreamErrorKind.TIMEOUT
    assert 0.19 <= time.monotonic() - started < 0.5
    assert [request.url for request in entered] == [ASSESSMENTS if slow == "google" else TOKEN_URI]


# --- token exchange failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (
            httpx.Response(400, json={"error": "invalid_grant"}),
            UpstreamErrorKind.CREDENTIALS_REJECTED,
        ),
        (
            httpx.Response(401, json={"error": "invalid_client"}),
            UpstreamErrorKind.CREDENTIALS_REJECTED,
        ),
        (httpx.Response(403), UpstreamErrorKind.CREDENTIALS_REJECTED),
        (httpx.Response(400, json={"error": "invalid_request"}), UpstreamErrorKind.BAD_REQUEST),
        (httpx.Response(429), UpstreamErrorKind.RATE_LIMITED),
        (httpx.Response(500), UpstreamErrorKind.SERVER_ERROR),
        (httpx.Response(200, text="not json"), UpstreamErrorKind.BAD_RESPONSE),
        (httpx.Response(200, json={"token_type": "Bearer"}), UpstreamErrorKind.BAD_RESPONSE),
    ],
)
async def test_token_exchange_failures(
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    sa_cred: ServiceAccountKey,
    response: httpx.Response,
    kind: UpstreamErrorKind,
) -> None:
    token_route = mock.post(TOKEN_URI).mock(return_value=response)
    before = mints()

    error = await upstream_error(make_client(http).create_assessment(sa_cred, "acme", EVENT))

    assert error.failure.kind is kind
    assert token_route.call_count == 1
    assert mints() == before


async def test_token_endpoint_refusing_until_the_deadline(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey
) -> None:
    token_route = mock.post(TOKEN_URI).mock(side_effect=httpx.ConnectError("refused"))
    started = time.monotonic()

    error = await upstream_error(make_client(http, timeout=0.5).check_credentials(sa_cred))

    assert error.failure.kind is UpstreamErrorKind.UNREACHABLE
    assert token_route.call_count >= 2
    assert time.monotonic() - started <= 0.5


async def test_check_credentials_mints_a_fresh_token(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey
) -> None:
    token_route = mock.post(TOKEN_URI).respond(200, json=EXCHANGE_ANSWER)
    client = make_client(http)

    await client.check_credentials(sa_cred)
    await client.check_credentials(sa_cred)

    assert token_route.call_count == 2


async def test_check_credentials_rejected(
    http: httpx.AsyncClient, mock: respx.MockRouter, sa_cred: ServiceAccountKey
) -> None:
    mock.post(TOKEN_URI).respond(400, json={"error": "invalid_grant", "error_description": "x"})

    error = await upstream_error(make_client(http).check_credentials(sa_cred))

    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    assert str(error) == "credentials_rejected: token endpoint answered 400 invalid_grant"


@pytest.mark.parametrize("mode", list(GoogleAuthMode))
async def test_unusable_private_key(
    http: httpx.AsyncClient,
    mock: respx.MockRouter,
    sa_cred: ServiceAccountKey,
    mode: GoogleAuthMode,
) -> None:
    broken = (
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    )
    cred = ServiceAccountKey(
        client_email=sa_cred.client_email,
        private_key_id=sa_cred.private_key_id,
        private_key=broken,
        token_uri=TOKEN_URI,
        project_id="acme",
        fingerprint=sa_cred.fingerprint,
    )

    error = await upstream_error(make_client(http, mode).check_credentials(cred))

    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    assert "c2VjcmV0" not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert mock.calls.call_count == 0


def mapped(cause: Exception) -> httpx.HTTPError:
    """The httpx error the aiohttp transport raises for `cause`."""
    try:
        with map_aiohttp_exceptions():
            raise cause
    except httpx.HTTPError as exc:
        return exc
    raise AssertionError("not mapped")


_KEY = aiohttp.client_reqrep.ConnectionKey("google.test", 443, True, True, None, None, None)


@pytest.mark.parametrize(
    ("exc", "refused", "timeout"),
    [
        (
            mapped(aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError())),
            True,
            False,
        ),
        (
            mapped(aiohttp.ClientConnectorDNSError(_KEY, OSError("no name"))),
            True,
            False,
        ),
        (mapped(aiohttp.ServerDisconnectedError()), False, False),
        (mapped(aiohttp.ClientOSError(104, "reset")), False, False),
        (mapped(aiohttp.ConnectionTimeoutError()), False, True),
        (mapped(aiohttp.SocketTimeoutError()), False, True),
        (httpx.ConnectError("refused"), True, False),
        (httpx.ConnectTimeout("slow connect"), False, True),
        (httpx.RemoteProtocolError("dropped"), False, False),
    ],
)
def test_transport_error_classification(exc: httpx.HTTPError, refused: bool, timeout: bool) -> None:
    assert is_connect_refused(exc) is refused
    assert is_timeout(exc) is timeout


# --- real sockets: the aiohttp transport's own errors ------------------------------------


class FakeGoogle:
    """A tiny HTTP/1.1 server on 127.0.0.1: answers, drops after reading, or hangs."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests.append(head + body)
            if self.behaviour == "answer":
                payload = json.dumps(ASSESSMENT).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
            elif self.behaviour == "hang":
                await reader.read()  # until the client gives up and closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._writers.discard(writer)


@pytest.fixture
async def fake_google() -> AsyncIterator[list[FakeGoogle]]:
    servers: list[FakeGoogle] = []
    yield servers
    for server in servers:
        await server.close()


async def test_real_socket_refused_then_accepted_is_retried(
    http: httpx.AsyncClient, api_cred: ApiKeyCredential, fake_google: list[FakeGoogle]
) -> None:
    port = free_port()
    server = FakeGoogle("answer")
    fake_google.append(server)

    async def start_late() -> None:
        await asyncio.sleep(0.15)
        await server.start(port)

    starting = asyncio.create_task(start_late())
    client = make_client(http, timeout=2.0, base=f"http://127.0.0.1:{port}")
    started = time.monotonic()

    assessment = await client.create_assessment(api_cred, "acme", EVENT)

    await starting
    assert assessment.name == ASSESSMENT["name"]
    assert time.monotonic() - started >= 0.15
    assert len(server.requests) == 1
    assert f"x-goog-api-key: {API_KEY}\r\n".encode() in server.requests[0]


async def test_real_socket_dropped_after_request_is_not_resent(
    http: httpx.AsyncClient, api_cred: ApiKeyCredential, fake_google: list[FakeGoogle]
) -> None:
    server = FakeGoogle("drop")
    fake_google.append(server)
    port = await server.start()
    client = make_client(http, timeout=2.0, base=f"http://127.0.0.1:{port}")

    error = await upstream_error(client.create_assessment(api_cred, "acme", EVENT))

    assert error.failure.kind is UpstreamErrorKind.UNREACHABLE
    # The transport reports this as ConnectTimeout, like a refused connection.
    assert error.failure.detail == "connection failed (ServerDisconnectedError)"
    assert error.__cause__ is None
    await asyncio.sleep(0.3)  # a resend would arrive by now
    assert len(server.requests) == 1


async def test_real_socket_no_answer_times_out_at_the_deadline(
    http: httpx.AsyncClient, api_cred: ApiKeyCredential, fake_google: list[FakeGoogle]
) -> None:
    server = FakeGoogle("hang")
    fake_google.append(server)
    port = await server.start()
    client = make_client(http, timeout=0.5, base=f"http://127.0.0.1:{port}")
    started = time.monotonic()

    error = await upstream_error(client.create_assessment(api_cred, "acme", EVENT))

    assert error.failure.kind is UpstreamErrorKind.TIMEOUT
    assert 0.49 <= time.monotonic() - started < 0.8
    assert len(server.requests) == 1


async def test_real_socket_refused_for_the_whole_deadline(
    http: httpx.AsyncClient, api_cred: ApiKeyCredential
) -> None:
    client = make_client(http, timeout=0.5, base=f"http://127.0.0.1:{free_port()}")
    before = upstream("unreachable")
    started = time.monotonic()

    error = await upstream_error(client.create_assessment(api_cred, "acme", EVENT))

    assert error.failure.kind is UpstreamErrorKind.UNREACHABLE
    assert time.monotonic() - started <= 0.5
    assert upstream("unreachable") == before + 1


# --- bounded concurrency -----------------------------------------------------------------


async def test_calls_beyond_the_slots_wait_within_their_deadline(
    http: httpx.AsyncClient, mock: respx.MockRouter, api_cred: ApiKeyCredential
) -> None:
    """With one slot, a second call waits for it; the wait counts against its own deadline,
    so a slow Google makes it time out on time rather than pile up."""

    async def slow(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.4)
        return httpx.Response(200, json=ASSESSMENT)

    route = mock.post(ASSESSMENTS).mock(side_effect=slow)
    tokens = AccessTokenProvider(http, GoogleAuthMode.TOKEN_EXCHANGE)
    client = RecaptchaClient(http, BASE, tokens, 0.6, max_concurrency=1)
    started = time.monotonic()
    first = asyncio.create_task(client.create_assessment(api_cred, "acme", EVENT))
    second = asyncio.create_task(client.create_assessment(api_cred, "acme", EVENT))
    await asyncio.sleep(0.1)
    assert REGISTRY.get_sample_value("chargegate_upstream_waiting") == 1
    assert (await first).valid
    error = await upstream_error(second)
    elapsed = time.monotonic() - started
    assert error.failure.kind is UpstreamErrorKind.TIMEOUT
    assert elapsed < 0.6 + 0.2
    assert route.call_count >= 1
    assert REGISTRY.get_sample_value("chargegate_upstream_waiting") == 0
