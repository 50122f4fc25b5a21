"""Conformance with Google's published schema, in both directions.

The reference is Google's own code, a test-only dependency: the official client library
(google-cloud-recaptcha-enterprise: the v1 message types), googleapis-common-protos
(google.rpc.Status, ErrorInfo, BadRequest and code.proto's HTTP mapping), google-api-core's
HTTP error parser and google-auth's OAuth client. Strict parsing (unknown fields and unknown
enum values are errors) makes a drifted field name or enum value fail here:
- the emulator's answers parse as Assessment / Key / google.rpc.Status;
- the gate's request bodies parse as Assessment / AnnotateAssessmentRequest;
- the emulator's field and enum tables equal the library's.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import respx
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth import jwt as google_jwt
from google.auth.transport.requests import Request as AuthRequest
from google.cloud import recaptchaenterprise_v1 as rce
from google.oauth2 import service_account
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy.ext.asyncio import create_async_engine

from app.credentials.types import ApiKeyCredential
from app.decisions.schemas import ANNOTATION_REASONS as CONTRACT_REASONS
from app.decisions.schemas import AuthorizeIn
from app.decisions.service import DecisionService
from app.operators.policy import PolicySnapshot
from app.operators.state import OperatorState
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.emulator import EmulatorState, FaultKind, create_emulator_app, wire
from app.recaptcha.emulator.auth import CLOUD_PLATFORM, SELF_SIGNED_AUDIENCE
from app.recaptcha.tokens import AccessTokenProvider
from app.settings import GoogleAuthMode
from tests.emulator.conftest import ACTION, HOSTNAME, PROJECT, PROJECT_NUMBER, Emulated

assert error_details_pb2  # imported to register ErrorInfo and BadRequest for Any fields
BASE = "http://emulator.test"


def strict_assessment(body: dict[str, Any]) -> rce.Assessment:
    message: rce.Assessment = rce.Assessment.from_json(
        json.dumps(body), ignore_unknown_fields=False
    )
    return message


def json_names(message: type[Any]) -> list[str]:
    return [field.json_name for field in message.pb().DESCRIPTOR.fields]


def enum_names(enum: Any) -> list[str]:
    return [member.name for member in enum]


# --- the emulator's tables are Google's ------------------------------------------------------


def test_field_names_are_the_libraries() -> None:
    assert list(wire.ASSESSMENT_FIELDS) == json_names(rce.Assessment)
    assert list(wire.EVENT_FIELDS) == json_names(rce.Event)
    assert ["name", *wire.ANNOTATE_FIELDS] == json_names(rce.AnnotateAssessmentRequest)


def test_enum_values_are_the_libraries() -> None:
    assert list(wire.INVALID_REASONS) == enum_names(rce.TokenProperties.InvalidReason)
    assert list(wire.ANNOTATIONS) == enum_names(rce.AnnotateAssessmentRequest.Annotation)
    assert list(wire.ANNOTATION_REASONS) == enum_names(rce.AnnotateAssessmentRequest.Reason)
    assert ["INTEGRATION_TYPE_UNSPECIFIED", *wire.INTEGRATION_TYPES] == enum_names(
        rce.WebKeySettings.IntegrationType
    )
    assert ["CLASSIFICATION_REASON_UNSPECIFIED", *wire.CLASSIFICATION_REASONS] == enum_names(
        rce.RiskAnalysis.ClassificationReason
    )


def test_the_contracts_outcomes_and_reasons_are_googles_enum_values() -> None:
    """API.md's lower-case outcome reasons, upper-cased as the gate sends them."""
    assert {r.upper() for r in CONTRACT_REASONS} <= set(wire.ANNOTATION_REASONS)
    assert {"LEGITIMATE", "FRAUDULENT"} <= set(wire.ANNOTATIONS)


# --- the emulator's answers ----------------------------------------------------------------


@pytest.fixture
async def inproc() -> AsyncIterator[tuple[EmulatorState, httpx.AsyncClient, str, str]]:
    """The emulator mounted in-process (ASGI): its state, a client, a site key, an API key."""
    state = EmulatorState()
    state.add_project(PROJECT, PROJECT_NUMBER)
    site_key = state.add_key(PROJECT, allowed_domains=["acme.example"], labels={"env": "dev"})
    api_key = state.create_api_key(PROJECT)
    transport = httpx.ASGITransport(app=create_emulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield state, client, site_key, api_key


async def assess(client: httpx.AsyncClient, api_key: str, event: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(
        f"/v1/projects/{PROJECT}/assessments",
        json={"event": event},
        headers={"x-goog-api-key": api_key},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def scenario_token(state: EmulatorState, site_key: str, scenario: str) -> str:
    if scenario == "malformed":
        return "03AFcWeA-garbage"
    if scenario == "missing":
        return ""
    if scenario == "key_mismatch":
        return state.issue_token(state.add_key(PROJECT), ACTION, HOSTNAME)
    if scenario == "domain_mismatch":
        return state.issue_token(site_key, ACTION, "evil.example")
    age = 600 if scenario == "expired" else 0
    return state.issue_token(site_key, ACTION, HOSTNAME, 0.9, age, reasons=["AUTOMATION"])


SCENARIOS = ["valid", "dupe", "expired", "malformed", "missing", "key_mismatch", "domain_mismatch"]


@pytest.mark.parametrize("emit_defaults", [True, False], ids=["google", "canonical"])
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_assessment_answers_parse_strictly(
    inproc: tuple[EmulatorState, httpx.AsyncClient, str, str], scenario: str, emit_defaults: bool
) -> None:
    state, client, site_key, api_key = inproc
    state.emit_defaults = emit_defaults
    token = scenario_token(state, site_key, scenario)
    event = {
        "token": token,
        "siteKey": site_key,
        "expectedAction": ACTION,
        "userIpAddress": "203.0.113.7",
        "userAgent": "Mozilla/5.0",
    }
    if scenario == "dupe":
        await assess(client, api_key, event)

    body = await assess(client, api_key, event)
    message = strict_assessment(body)

    props, risk = message.token_properties, message.risk_analysis
    expected_reason = {
        "valid": "INVALID_REASON_UNSPECIFIED",
        "domain_mismatch": "DOMAIN_MISMATCH",
        "key_mismatch": "KEY_MISMATCH",
    }.get(scenario, scenario.upper())
    assert props.valid is (scenario == "valid")
    assert props.invalid_reason.name == expected_reason
    assert re.fullmatch(rf"projects/{PROJECT_NUMBER}/assessments/[0-9a-f]{{16}}", message.name)
    assert message.event.token == token
    assert message.event.site_key == site_key
    assert message.event.expected_action == ACTION
    assert message.event.user_ip_address == "203.0.113.7"
    assert message.event.user_agent == "Mozilla/5.0"
    assert "createTime" in body["tokenProperties"]  # set by Google even for garbage
    if scenario == "valid":
        # The JSON double of a proto float: 0.9 as float32.
        assert body["riskAnalysis"]["score"] == 0.8999999761581421
        assert [r.name for r in risk.reasons] == ["AUTOMATION"]
        assert (props.hostname, props.action) == (HOSTNAME, ACTION)
    elif scenario in ("malformed", "missing"):
        assert body["tokenProperties"]["createTime"] == "1970-01-01T00:00:00Z"
        assert (props.hostname, props.action, risk.score) == ("", "", 0.0)
    if emit_defaults:
        # Google prints scalar fields even when they hold their default.
        assert body["tokenProperties"]["invalidReason"] == expected_reason
        assert {"hostname", "action", "androidPackageName", "iosBundleId"} <= set(
            body["tokenProperties"]
        )
        assert "score" in body["riskAnalysis"]
    else:
        assert scenario == "valid" or "score" not in body.get("riskAnalysis", {})


@pytest.mark.parametrize("emit_defaults", [True, False], ids=["google", "canonical"])
async def test_key_answer_parses_strictly(
    inproc: tuple[EmulatorState, httpx.AsyncClient, str, str], emit_defaults: bool
) -> None:
    state, client, site_key, api_key = inproc
    state.emit_defaults = emit_defaults
    answer = await client.get(
        f"/v1/projects/{PROJECT}/keys/{site_key}", headers={"x-goog-api-key": api_key}
    )
    assert answer.status_code == 200, answer.text

    key = rce.Key.from_json(answer.text, ignore_unknown_fields=False)

    assert key.name == f"projects/{PROJECT_NUMBER}/keys/{site_key}"
    assert key.web_settings.integration_type.name == "SCORE"
    assert list(key.web_settings.allowed_domains) == ["acme.example"]
    assert dict(key.labels) == {"env": "dev"}
    assert key.create_time.timestamp() > 0


# --- error bodies ------------------------------------------------------------------------------


def http_mapping() -> set[tuple[int, str]]:
    """(HTTP status, google.rpc.Code name) pairs, read from code.proto's own comments."""
    proto = Path(code_pb2.__file__).with_name("code.proto").read_text()
    pairs = re.findall(r"// HTTP Mapping: (\d{3})[^\n]*\n\s*([A-Z_]+) = \d+;", proto)
    assert len(pairs) == 17
    return {(int(status), name) for status, name in pairs}


async def error_answers(
    state: EmulatorState, client: httpx.AsyncClient, site_key: str, api_key: str
) -> list[httpx.Response]:
    """One answer for each error the emulator gives on Google's paths."""
    assessments = f"/v1/projects/{PROJECT}/assessments"
    event = {"event": {"token": "x", "siteKey": site_key}}
    with_key = {"x-goog-api-key": api_key}
    answers = [
        await client.post(assessments, json=event),  # no credentials
        await client.post(assessments, json=event, headers={"authorization": "Bearer ya29.x"}),
        await client.post(assessments, json=event, headers={"x-goog-api-key": "AIzaWrong"}),
        await client.post("/v1/projects/elsewhere/assessments", json=event, headers=with_key),
        await client.post(assessments, json={"event": {"tokn": "x"}}, headers=with_key),
        await client.post(assessments, json={"event": {"token": 7}}, headers=with_key),
        await client.post(assessments, content=b"{", headers=with_key),
        await client.post(
            f"{assessments}/0123456789abcdef:annotate",
            json={"annotation": "LEGITIMATE"},
            headers=with_key,
        ),
        await client.get(f"/v1/projects/{PROJECT}/keys/6LcMissing", headers=with_key),
        await client.get("/v1/no/such/method"),
    ]
    for status in (429, 500, 503):
        state.add_fault(PROJECT, FaultKind.STATUS, status=status)
        answers.append(await client.post(assessments, json=event, headers=with_key))
    return answers


async def test_error_bodies_are_google_rpc_status(
    inproc: tuple[EmulatorState, httpx.AsyncClient, str, str],
) -> None:
    mapping = http_mapping()
    answers = await error_answers(*inproc)

    seen = set()
    for answer in answers:
        error = answer.json()["error"]
        assert set(error) == {"code", "message", "status", "details"}, answer.text
        # Google's REST errors carry the HTTP status as code, the rpc Code's name as status.
        assert error["code"] == answer.status_code
        assert (answer.status_code, error["status"]) in mapping
        status = status_pb2.Status()
        json_format.ParseDict(
            {k: error[k] for k in ("code", "message", "details")},
            status,
            ignore_unknown_fields=False,
        )
        assert [d.TypeName() for d in status.details] == [
            d["@type"].split("/")[1] for d in error["details"]
        ]
        seen.add(error["status"])
    assert seen == {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
        "UNAVAILABLE",
    }


async def test_error_bodies_read_by_google_api_core(
    inproc: tuple[EmulatorState, httpx.AsyncClient, str, str],
) -> None:
    """google-api-core's from_http_response (what Google's REST clients use) reads them."""
    answers = await error_answers(*inproc)
    reasons = {}
    for answer in answers:
        response = requests.Response()
        response.status_code = answer.status_code
        response._content = answer.content
        response.request = requests.Request("POST", str(answer.request.url)).prepare()

        error = api_exceptions.from_http_response(response)  # type: ignore[no-untyped-call]

        assert error.code == answer.status_code
        assert error.message.endswith(answer.json()["error"]["message"])
        reasons[answer.status_code, error.reason] = error.domain
    assert reasons[401, "ACCESS_TOKEN_TYPE_UNSUPPORTED"] == "googleapis.com"
    assert reasons[400, "API_KEY_INVALID"] == "googleapis.com"
    assert reasons[429, "RATE_LIMIT_EXCEEDED"] == "googleapis.com"


# --- OAuth, as Google's own auth library speaks it -----------------------------------------------


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_google_auth_exchanges_the_key_file(
    emulated: Emulated, key_file: dict[str, str], session: requests.Session
) -> None:
    """google-auth reads the key file and gets a token at its token_uri (it signs the
    assertion for aud=https://oauth2.googleapis.com/token, whatever the token_uri)."""
    info = service_account.Credentials.from_service_account_info
    creds = info(key_file, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
    creds.refresh(AuthRequest(session))

    assert emulated.state.token_exchanges == 1
    assert creds.token.startswith("ya29.")
    assert creds.expiry is not None
    answer = session.post(
        f"{emulated.url}/v1/projects/{PROJECT}/assessments",
        json={"event": emulated.event(emulated.token())},
        headers={"authorization": f"Bearer {creds.token}"},
    )
    assert answer.status_code == 200
    assert answer.json()["tokenProperties"]["valid"] is True


@pytest.mark.parametrize("way", ["scope", "audience"])
def test_google_auth_self_signed_jwts_are_accepted(
    emulated: Emulated, key_file: dict[str, str], session: requests.Session, way: str
) -> None:
    """AIP-4111 self-signed JWTs as google-auth makes them: with a scope, or an audience."""
    creds: Any
    if way == "scope":
        creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            key_file, scopes=[CLOUD_PLATFORM], always_use_jwt_access=True
        )
    else:
        creds = google_jwt.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            key_file, audience=SELF_SIGNED_AUDIENCE
        )
    creds.refresh(AuthRequest(session))
    # jwt.Credentials keeps its token as bytes (its apply() decodes it for the header).
    token = creds.token.decode() if isinstance(creds.token, bytes) else creds.token

    answer = session.get(
        f"{emulated.url}/v1/projects/{PROJECT}/keys/{emulated.site_key}",
        headers={"authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    assert emulated.state.token_exchanges == 0


def test_google_auth_reads_the_oauth_errors(
    emulated: Emulated, key_file: dict[str, str], session: requests.Session
) -> None:
    other = emulated.state.create_service_account(PROJECT)
    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        {**key_file, "private_key": other["private_key"]}, scopes=[CLOUD_PLATFORM]
    )
    with pytest.raises(auth_exceptions.RefreshError) as caught:
        creds.refresh(AuthRequest(session))

    assert caught.value.args[0] == "invalid_grant: Invalid JWT Signature."
    assert caught.value.retryable is False
    assert emulated.state.token_exchange_failures == 1


# --- the gate's requests ---------------------------------------------------------------------


@pytest.fixture
def google_mock() -> Iterator[respx.MockRouter]:
    # The gate's transport is aiohttp: respx sees it only with using="httpx".
    with respx.mock(using="httpx", base_url=BASE) as router:
        yield router


async def test_the_gates_assessment_request_is_an_assessment(
    http: httpx.AsyncClient, google_mock: respx.MockRouter
) -> None:
    """The event DecisionService really builds (all optional fields set) parses strictly."""
    route = google_mock.post(f"/v1/projects/{PROJECT}/assessments").respond(
        200, json={"name": f"projects/{PROJECT_NUMBER}/assessments/abc"}
    )
    client = RecaptchaClient(
        http, BASE, AccessTokenProvider(http, GoogleAuthMode.SELF_SIGNED_JWT), 2
    )
    # _assess is where the event is built; the engine is never used on that path.
    engine = create_async_engine("sqlite+aiosqlite://")
    service = DecisionService(engine, client, upstream_timeout=2)
    state = OperatorState(
        "acme",
        PolicySnapshot(version=1, enabled=True, site_key="6LcSiteKey", gcp_project_id=PROJECT),
        ApiKeyCredential("AIzaTest", "sha256:test"),
    )
    body = AuthorizeIn(
        operator_id="acme", token="03Atoken", user_ip="203.0.113.7", user_agent="Mozilla/5.0"
    )

    try:
        await service._assess(state, body, "03Atoken", ACTION)
    finally:
        await engine.dispose()

    sent = json.loads(route.calls.last.request.content)
    message = strict_assessment(sent)
    assert set(sent) == {"event"}
    assert message.event.token == "03Atoken"
    assert message.event.site_key == "6LcSiteKey"
    assert message.event.expected_action == ACTION
    assert message.event.user_ip_address == "203.0.113.7"
    assert message.event.user_agent == "Mozilla/5.0"


@pytest.mark.parametrize("outcome", ["legitimate", "fraudulent"])
async def test_the_gates_annotate_request_is_an_annotate_assessment_request(
    http: httpx.AsyncClient, google_mock: respx.MockRouter, outcome: str
) -> None:
    """Every outcome and reason of the contract, upper-cased as the outbox stores them."""
    name = f"projects/{PROJECT_NUMBER}/assessments/abc123"
    route = google_mock.post(f"/v1/{name}:annotate").respond(200, json={})
    client = RecaptchaClient(
        http, BASE, AccessTokenProvider(http, GoogleAuthMode.SELF_SIGNED_JWT), 2
    )
    reasons = [r.upper() for r in CONTRACT_REASONS]

    await client.annotate(ApiKeyCredential("AIzaTest", "sha256:t"), name, outcome.upper(), reasons)

    sent = route.calls.last.request.content.decode()
    request = rce.AnnotateAssessmentRequest.from_json(sent, ignore_unknown_fields=False)
    assert request.annotation.name == outcome.upper()
    assert [r.name for r in request.reasons] == reasons


async def test_the_gates_requests_over_http_are_googles(
    emulated: Emulated, key_file: dict[str, str], http: httpx.AsyncClient
) -> None:
    """What reached the emulator over the wire, read back with the library's types."""
    from tests.emulator.conftest import gate_client, sa_credential

    client, cred = gate_client(http, emulated), sa_credential(key_file)
    event = emulated.event(emulated.token(), userIpAddress="2001:db8::1", userAgent="UA")
    assessment = await client.create_assessment(cred, PROJECT, event)
    await client.annotate(cred, assessment.name, "LEGITIMATE", ["TRANSACTION_ACCEPTED"])
    await client.get_key(cred, PROJECT, emulated.site_key)

    create, annotate, get_key = emulated.state.requests
    assert (create.method, create.path) == ("POST", f"/v1/projects/{PROJECT}/assessments")
    strict_assessment(create.body)
    assert annotate.path == f"/v1/{assessment.name}:annotate"
    rce.AnnotateAssessmentRequest.from_json(json.dumps(annotate.body), ignore_unknown_fields=False)
    assert (get_key.method, get_key.body) == ("GET", None)
