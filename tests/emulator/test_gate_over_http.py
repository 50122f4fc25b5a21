"""The gate's own Google client (RecaptchaClient, AccessTokenProvider, build_http_client)
against the emulator over real HTTP: token verdicts, credentials, faults, annotate, keys."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

import httpx
import pytest

from app.credentials.types import GoogleCredential
from app.recaptcha.emulator import EmulatorState, FaultKind, FaultTarget
from app.recaptcha.types import UpstreamError, UpstreamErrorKind
from app.settings import GoogleAuthMode
from tests.emulator.conftest import (
    ACTION,
    HOSTNAME,
    PROJECT,
    PROJECT_NUMBER,
    Emulated,
    api_credential,
    gate_client,
    sa_credential,
)

SELF_SIGNED = GoogleAuthMode.SELF_SIGNED_JWT
EXCHANGE = GoogleAuthMode.TOKEN_EXCHANGE
WAYS = ["self_signed_jwt", "token_exchange", "api_key"]


def f32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


@pytest.fixture(params=WAYS)
def way(
    request: pytest.FixtureRequest, emulated: Emulated, key_file: dict[str, str]
) -> tuple[GoogleCredential, GoogleAuthMode]:
    """Each way the gate authenticates: its credential and auth mode."""
    if request.param == "api_key":
        return api_credential(emulated.state.create_api_key(PROJECT)), SELF_SIGNED
    return sa_credential(key_file), GoogleAuthMode(request.param)


async def failure(call: Awaitable[object]) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await call
    return caught.value


# --- token verdicts -----------------------------------------------------------------------


async def test_valid_token(
    http: httpx.AsyncClient, emulated: Emulated, way: tuple[GoogleCredential, GoogleAuthMode]
) -> None:
    cred, mode = way
    client = gate_client(http, emulated, mode)
    before = datetime.now(UTC)

    event = emulated.event(emulated.token(), userIpAddress="203.0.113.7", userAgent="Mozilla/5.0")
    assessment = await client.create_assessment(cred, PROJECT, event)

    assert assessment.valid
    assert assessment.invalid_reason == "INVALID_REASON_UNSPECIFIED"
    # Google's float32: 0.9 arrives as 0.8999999761581421, and rounds back to 0.9.
    assert assessment.score == 0.8999999761581421 == f32(0.9)
    assert assessment.score != 0.9
    assert round(assessment.score, 1) == 0.9
    assert (assessment.action, assessment.hostname) == (ACTION, HOSTNAME)
    assert assessment.create_time is not None
    assert before.timestamp() - 1 <= assessment.create_time.timestamp() <= time.time()
    assert re.fullmatch(rf"projects/{PROJECT_NUMBER}/assessments/[0-9a-f]{{16}}", assessment.name)
    assert assessment.reasons == ()


async def test_project_number_in_the_path(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client = gate_client(http, emulated)
    assessment = await client.create_assessment(
        sa_credential(key_file), PROJECT_NUMBER, emulated.event(emulated.token())
    )
    assert assessment.valid


async def test_score_and_reasons_as_minted(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    token = emulated.token(score=0.3, reasons=["AUTOMATION", "TOO_MUCH_TRAFFIC"])
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(token)
    )
    assert assessment.score == f32(0.3) == 0.30000001192092896
    assert assessment.reasons == ("AUTOMATION", "TOO_MUCH_TRAFFIC")


async def test_second_assessment_of_a_token_is_dupe(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred, token = gate_client(http, emulated), sa_credential(key_file), emulated.token()
    first = await client.create_assessment(cred, PROJECT, emulated.event(token))
    second = await client.create_assessment(cred, PROJECT, emulated.event(token))

    assert first.valid
    assert (second.valid, second.invalid_reason, second.score) == (False, "DUPE", 0.0)
    assert second.name != first.name


@pytest.mark.parametrize(("age", "valid", "reason"), [(119, True, None), (121, False, "EXPIRED")])
async def test_tokens_expire_after_two_minutes(
    http: httpx.AsyncClient,
    emulated: Emulated,
    key_file: dict[str, str],
    age: int,
    valid: bool,
    reason: str | None,
) -> None:
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(emulated.token(age_seconds=age))
    )
    assert assessment.valid is valid
    assert assessment.invalid_reason == (reason or "INVALID_REASON_UNSPECIFIED")
    assert assessment.create_time is not None
    assert abs(time.time() - age - assessment.create_time.timestamp()) < 5


@pytest.mark.parametrize("emit_defaults", [True, False])
async def test_garbage_token_is_malformed(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str], emit_defaults: bool
) -> None:
    emulated.state.emit_defaults = emit_defaults
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event("not-a-token")
    )
    assert (assessment.valid, assessment.invalid_reason) == (False, "MALFORMED")
    assert assessment.create_time == datetime(1970, 1, 1, tzinfo=UTC)
    assert (assessment.hostname, assessment.action) == ("", "")
    # Google prints "score": 0; canonical proto3 JSON leaves it out.
    assert assessment.score == (0.0 if emit_defaults else None)


async def test_token_of_another_site_key(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    other_key = emulated.state.add_key(PROJECT)
    client, cred = gate_client(http, emulated), sa_credential(key_file)

    mismatch = await client.create_assessment(
        cred, PROJECT, emulated.event(emulated.token(site_key=other_key))
    )
    emulated.state.key_mismatch_reason = "INVALID_REASON_UNSPECIFIED"  # the older reading
    older = await client.create_assessment(
        cred, PROJECT, emulated.event(emulated.token(site_key=other_key))
    )

    assert (mismatch.valid, mismatch.invalid_reason) == (False, "KEY_MISMATCH")
    assert (older.valid, older.invalid_reason) == (False, "INVALID_REASON_UNSPECIFIED")
    assert mismatch.hostname == HOSTNAME  # the token itself could be read


async def test_hostname_outside_the_keys_domains(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(emulated.token(hostname="evil.example"))
    )
    assert (assessment.valid, assessment.invalid_reason) == (False, "DOMAIN_MISMATCH")


async def test_wrong_expected_action_is_echoed_not_judged(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    # Score keys never answer UNEXPECTED_ACTION: comparing actions is the gate's job.
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(emulated.token(action="login"))
    )
    assert assessment.valid
    assert assessment.action == "login"


# --- credentials --------------------------------------------------------------------------


async def test_token_exchange_happens_once_and_is_counted(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred = gate_client(http, emulated, EXCHANGE), sa_credential(key_file)
    for _ in range(3):
        assert (
            await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))
        ).valid

    stats = httpx.get(f"{emulated.url}/emulator/stats").json()
    assert emulated.state.token_exchanges == stats["token_exchanges"] == 1
    assert len(emulated.state.access_tokens) == 1


async def test_self_signed_jwt_needs_no_exchange(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred = gate_client(http, emulated, SELF_SIGNED), sa_credential(key_file)
    assert (await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))).valid
    assert emulated.state.token_exchanges == 0


@pytest.mark.parametrize(("mode", "status"), [(SELF_SIGNED, 401), (EXCHANGE, 400)])
async def test_unknown_service_account_is_rejected(
    http: httpx.AsyncClient, emulated: Emulated, mode: GoogleAuthMode, status: int
) -> None:
    # A well-formed key file Google never issued (another emulator's).
    foreign = EmulatorState()
    foreign.add_project(PROJECT)
    key_file = foreign.create_service_account(PROJECT, token_uri=emulated.state.token_uri)

    error = await failure(
        gate_client(http, emulated, mode).create_assessment(
            sa_credential(key_file), PROJECT, emulated.event(emulated.token())
        )
    )
    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    assert error.failure.status == status
    assert emulated.state.token_exchanges == 0


@pytest.mark.parametrize(("mode", "status"), [(SELF_SIGNED, 401), (EXCHANGE, 400)])
async def test_key_file_with_a_wrong_private_key_is_rejected(
    http: httpx.AsyncClient,
    emulated: Emulated,
    key_file: dict[str, str],
    mode: GoogleAuthMode,
    status: int,
) -> None:
    other = emulated.state.create_service_account(PROJECT)
    tampered = {**key_file, "private_key": other["private_key"]}

    error = await failure(
        gate_client(http, emulated, mode).create_assessment(
            sa_credential(tampered), PROJECT, emulated.event(emulated.token())
        )
    )
    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    assert error.failure.status == status


async def test_credentials_of_another_project_are_denied(
    http: httpx.AsyncClient, emulated: Emulated, way: tuple[GoogleCredential, GoogleAuthMode]
) -> None:
    cred, mode = way
    emulated.state.add_project("other-project")
    other_key = emulated.state.add_key("other-project")
    token = emulated.token(site_key=other_key)

    error = await failure(
        gate_client(http, emulated, mode).create_assessment(
            cred, "other-project", {"token": token, "siteKey": other_key}
        )
    )
    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED
    assert (error.failure.status, error.failure.detail) == (403, "HTTP 403 PERMISSION_DENIED")


async def test_unknown_project_is_denied_like_a_foreign_one(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    error = await failure(
        gate_client(http, emulated).create_assessment(
            sa_credential(key_file), "no-such-project", emulated.event(emulated.token())
        )
    )
    assert (error.failure.status, error.failure.detail) == (403, "HTTP 403 PERMISSION_DENIED")


async def test_wrong_api_key_is_credentials_rejected(
    http: httpx.AsyncClient, emulated: Emulated
) -> None:
    error = await failure(
        gate_client(http, emulated).create_assessment(
            api_credential("AIzaNotAKeyGoogleKnows00000000000000000"),
            PROJECT,
            emulated.event(emulated.token()),
        )
    )
    assert error.failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED


async def test_wrong_api_key_is_answered_400_api_key_invalid(
    http: httpx.AsyncClient, emulated: Emulated
) -> None:
    error = await failure(
        gate_client(http, emulated).create_assessment(
            api_credential("AIzaNotAKeyGoogleKnows00000000000000000"),
            PROJECT,
            emulated.event(emulated.token()),
        )
    )
    assert (error.failure.status, error.failure.detail) == (400, "HTTP 400 INVALID_ARGUMENT")


# --- faults -------------------------------------------------------------------------------

FAULTS = [
    pytest.param(FaultKind.STATUS, 429, UpstreamErrorKind.RATE_LIMITED, 429, id="429"),
    pytest.param(FaultKind.STATUS, 500, UpstreamErrorKind.SERVER_ERROR, 500, id="500"),
    pytest.param(FaultKind.STATUS, 503, UpstreamErrorKind.SERVER_ERROR, 503, id="503"),
    pytest.param(FaultKind.BROKEN_JSON, 0, UpstreamErrorKind.BAD_RESPONSE, 200, id="broken-json"),
    pytest.param(FaultKind.DROP, 0, UpstreamErrorKind.UNREACHABLE, None, id="drop"),
    pytest.param(FaultKind.DELAY, 0, UpstreamErrorKind.TIMEOUT, None, id="delay"),
]


@pytest.mark.parametrize(("kind", "status", "expected", "http_status"), FAULTS)
@pytest.mark.parametrize("mode", [SELF_SIGNED, EXCHANGE])
async def test_fault_is_classified_by_the_gate(
    http: httpx.AsyncClient,
    emulated: Emulated,
    key_file: dict[str, str],
    mode: GoogleAuthMode,
    kind: FaultKind,
    status: int,
    expected: UpstreamErrorKind,
    http_status: int | None,
) -> None:
    client, cred = gate_client(http, emulated, mode, timeout=0.5), sa_credential(key_file)
    emulated.state.add_fault(PROJECT, kind, status=status or 503, delay_ms=1000)

    error = await failure(client.create_assessment(cred, PROJECT, emulated.event(emulated.token())))

    assert error.failure.kind is expected
    assert error.failure.status == http_status
    if kind is FaultKind.DROP:
        assert error.failure.detail == "connection failed (ServerDisconnectedError)"
    assert emulated.state.faults == []  # used up: the request did reach the emulator
    # The plan was for one call: the next one is answered.
    assert (await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))).valid


async def test_dropped_answer_still_used_up_the_token(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred, token = gate_client(http, emulated), sa_credential(key_file), emulated.token()
    emulated.state.add_fault(PROJECT, FaultKind.DROP)

    await failure(client.create_assessment(cred, PROJECT, emulated.event(token)))
    resent = await client.create_assessment(cred, PROJECT, emulated.event(token))

    # Why the gate must never resend after a drop: Google may have seen the token.
    assert (resent.valid, resent.invalid_reason) == (False, "DUPE")


async def test_delay_within_the_deadline_is_only_slow(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    emulated.state.add_fault(PROJECT, FaultKind.DELAY, delay_ms=300)
    started = time.monotonic()
    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(emulated.token())
    )
    assert assessment.valid
    assert time.monotonic() - started >= 0.3


async def test_fault_count_and_project_scope(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred = gate_client(http, emulated), sa_credential(key_file)
    emulated.state.add_project("other-project")
    emulated.state.add_fault("other-project", FaultKind.STATUS, status=500, count=None)
    emulated.state.add_fault(PROJECT, FaultKind.STATUS, status=503, count=2)

    for _ in range(2):
        error = await failure(
            client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))
        )
        assert error.failure.status == 503
    assert (await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))).valid
    assert [plan.project_id for plan in emulated.state.faults] == ["other-project"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FaultKind.STATUS, UpstreamErrorKind.SERVER_ERROR),
        (FaultKind.DROP, UpstreamErrorKind.UNREACHABLE),
    ],
)
async def test_token_endpoint_faults(
    http: httpx.AsyncClient,
    emulated: Emulated,
    key_file: dict[str, str],
    kind: FaultKind,
    expected: UpstreamErrorKind,
) -> None:
    emulated.state.add_fault(PROJECT, kind, status=503, target=FaultTarget.TOKEN)
    client, cred = gate_client(http, emulated, EXCHANGE), sa_credential(key_file)

    error = await failure(client.create_assessment(cred, PROJECT, emulated.event(emulated.token())))

    assert error.failure.kind is expected
    assert error.failure.detail.startswith("token endpoint")
    # API faults are not token faults and vice versa: the next call goes through.
    assert (await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))).valid


async def test_faults_set_over_http(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    answer = httpx.post(
        f"{emulated.url}/emulator/faults",
        json={"project_id": PROJECT, "kind": "status", "status": 429, "count": 1},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["remaining"] == 1

    error = await failure(
        gate_client(http, emulated).create_assessment(
            sa_credential(key_file), PROJECT, emulated.event(emulated.token())
        )
    )
    assert error.failure.kind is UpstreamErrorKind.RATE_LIMITED


# --- annotate and keys --------------------------------------------------------------------


async def test_annotate(
    http: httpx.AsyncClient, emulated: Emulated, way: tuple[GoogleCredential, GoogleAuthMode]
) -> None:
    cred, mode = way
    client = gate_client(http, emulated, mode)
    assessment = await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))

    await client.annotate(cred, assessment.name, "FRAUDULENT", ["CHARGEBACK", "REFUND_FRAUD"])

    [annotation] = emulated.state.annotations
    assert annotation.assessment_name == assessment.name
    assert (annotation.annotation, annotation.reasons) == (
        "FRAUDULENT",
        ("CHARGEBACK", "REFUND_FRAUD"),
    )
    listed = httpx.get(f"{emulated.url}/emulator/annotations").json()
    assert listed == [
        {
            "assessment_name": assessment.name,
            "annotation": "FRAUDULENT",
            "reasons": ["CHARGEBACK", "REFUND_FRAUD"],
        }
    ]


async def test_annotate_unknown_assessment_is_404(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    error = await failure(
        gate_client(http, emulated).annotate(
            sa_credential(key_file),
            f"projects/{PROJECT_NUMBER}/assessments/0123456789abcdef",
            "LEGITIMATE",
            [],
        )
    )
    assert error.failure.kind is UpstreamErrorKind.BAD_REQUEST
    assert (error.failure.status, error.failure.detail) == (404, "HTTP 404 NOT_FOUND")


async def test_annotate_with_an_unknown_enum_value_is_400(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    client, cred = gate_client(http, emulated), sa_credential(key_file)
    assessment = await client.create_assessment(cred, PROJECT, emulated.event(emulated.token()))
    error = await failure(client.annotate(cred, assessment.name, "LEGITIMATE", ["SHRUG"]))
    assert (error.failure.status, error.failure.detail) == (400, "HTTP 400 INVALID_ARGUMENT")
    assert emulated.state.annotations == []


async def test_get_key(
    http: httpx.AsyncClient, emulated: Emulated, way: tuple[GoogleCredential, GoogleAuthMode]
) -> None:
    cred, mode = way
    checkbox = emulated.state.add_key(
        PROJECT, integration_type="CHECKBOX", display_name="Portal v2"
    )
    client = gate_client(http, emulated, mode)

    score_key = await client.get_key(cred, PROJECT, emulated.site_key)
    checkbox_key = await client.get_key(cred, PROJECT, checkbox)

    assert score_key["name"] == f"projects/{PROJECT_NUMBER}/keys/{emulated.site_key}"
    assert score_key["webSettings"]["integrationType"] == "SCORE"
    assert score_key["webSettings"]["allowedDomains"] == ["acme.example"]
    assert score_key["webSettings"]["allowAllDomains"] is False
    assert checkbox_key["webSettings"]["integrationType"] == "CHECKBOX"
    assert checkbox_key["displayName"] == "Portal v2"
    assert checkbox_key["webSettings"]["allowAllDomains"] is True


async def test_get_unknown_key_is_404(
    http: httpx.AsyncClient, emulated: Emulated, key_file: dict[str, str]
) -> None:
    error = await failure(
        gate_client(http, emulated).get_key(sa_credential(key_file), PROJECT, "6LcNoSuchKey")
    )
    assert error.failure.kind is UpstreamErrorKind.BAD_REQUEST
    assert error.failure.status == 404
