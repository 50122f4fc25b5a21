"""Credentials end to end: service-account keys in both auth modes (CHARGEGATE_GOOGLE_AUTH),
an access token minted once and reused by many concurrent calls, and API keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer, FaultKind, FaultTarget
from tests.e2e.conftest import (
    DEADLINE,
    ServerProcess,
    Tenant,
    create_tenant,
    launcher,
    metric,
)

MINTS = "chargegate_access_token_mints_total"
CONCURRENT = 30


@pytest.fixture(scope="module", params=["self_signed_jwt", "token_exchange"])
def server(
    request: pytest.FixtureRequest,
    database_url: str,
    emulator: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with launcher(database_url, emulator, tmp_path_factory) as servers:
        yield servers.start(CHARGEGATE_GOOGLE_AUTH=request.param)


def auth_mode(server: ServerProcess) -> str:
    return server.env["CHARGEGATE_GOOGLE_AUTH"]


async def test_concurrent_first_calls_mint_one_access_token(
    server: ServerProcess, tenant: Tenant, http: httpx.AsyncClient
) -> None:
    before = await metric(http, MINTS)

    answers = await asyncio.gather(*(tenant.decide(tenant.token()) for _ in range(CONCURRENT)))

    assert [a["reason"] for a in answers] == ["score_ok"] * CONCURRENT
    assert len({a["assessment_name"] for a in answers}) == CONCURRENT
    assert len(tenant.assessments()) == CONCURRENT
    assert await metric(http, MINTS) - before == 1
    exchanges = 1 if auth_mode(server) == "token_exchange" else 0
    assert tenant.token_exchanges() == exchanges

    # And later calls keep using it.
    answers = await asyncio.gather(*(tenant.decide(tenant.token()) for _ in range(10)))
    assert [a["reason"] for a in answers] == ["score_ok"] * 10
    assert await metric(http, MINTS) - before == 1
    assert tenant.token_exchanges() == exchanges


async def test_each_service_account_gets_its_own_token(
    server: ServerProcess, http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    before = await metric(http, MINTS)
    first, second = [await create_tenant(http, emulator) for _ in range(2)]

    for tenant in (first, second, first, second):
        assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"

    assert await metric(http, MINTS) - before == 2
    if auth_mode(server) == "token_exchange":
        assert (first.token_exchanges(), second.token_exchanges()) == (1, 1)


async def test_replaced_credentials_are_used_at_once(server: ServerProcess, tenant: Tenant) -> None:
    assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"
    replacement = tenant.state.create_service_account(tenant.project_id, name="rotated")

    await tenant.put_credentials(replacement)
    answer = await tenant.decide(tenant.token())

    assert answer["reason"] == "score_ok"
    if auth_mode(server) == "token_exchange":
        assert tenant.token_exchanges() == 1  # of the new key (counted by its client_email)


async def test_api_key_credentials(
    server: ServerProcess, http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    before = await metric(http, MINTS)
    exchanges_before = emulator.state.token_exchanges
    tenant = await create_tenant(http, emulator, credentials="api_key")

    answers = await asyncio.gather(*(tenant.decide(tenant.token()) for _ in range(5)))

    assert [a["reason"] for a in answers] == ["score_ok"] * 5
    assert len(tenant.assessments()) == 5
    # An API key needs no access token.
    assert await metric(http, MINTS) == before
    assert emulator.state.token_exchanges == exchanges_before


async def test_unknown_api_key_is_credentials_rejected(
    server: ServerProcess, http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    tenant = await create_tenant(http, emulator, credentials="api_key")
    await tenant.put_credentials(
        {"type": "api_key", "api_key": "AIzaNotAKeyTheEmulatorKnows000000000000"}
    )

    closed = await tenant.decide(tenant.token())
    await tenant.set_policy(fail_mode="open")
    opened = await tenant.decide(tenant.token())

    for answer, decision in ((closed, "deny"), (opened, "allow")):
        assert (answer["decision"], answer["verdict"], answer["reason"]) == (
            decision,
            None,
            "upstream_unavailable",
        )
        assert answer["upstream_error"] == "credentials_rejected"
        assert answer["assessment_name"] is None
    assert tenant.assessments() == []


async def test_service_account_google_does_not_know_is_credentials_rejected(
    server: ServerProcess, tenant: Tenant, emulator: EmulatorServer
) -> None:
    # A well-formed key file of the right project that the emulator never issued.
    stranger = {**tenant.credentials, "client_email": "nobody@e2e.iam.gserviceaccount.com"}
    await tenant.put_credentials(stranger)
    exchange_failures = emulator.state.token_exchange_failures

    answer = await tenant.decide(tenant.token())

    assert (answer["decision"], answer["reason"], answer["upstream_error"]) == (
        "deny",
        "upstream_unavailable",
        "credentials_rejected",
    )
    assert tenant.assessments() == []
    if auth_mode(server) == "token_exchange":
        assert emulator.state.token_exchange_failures == exchange_failures + 1


async def test_token_endpoint_failure_is_upstream_unavailable(
    server: ServerProcess, tenant: Tenant
) -> None:
    tenant.fault(FaultKind.STATUS, status=503, target=FaultTarget.TOKEN)

    first = await tenant.decide(tenant.token())
    second = await tenant.decide(tenant.token())

    if auth_mode(server) == "token_exchange":
        assert (first["decision"], first["reason"], first["upstream_error"]) == (
            "deny",
            "upstream_unavailable",
            "server_error",
        )
        assert tenant.faults_left() == 0
        assert len(tenant.assessment_requests()) == 1  # the failed call never got that far
        assert tenant.token_exchanges() == 1
    else:
        # A self-signed JWT never goes to the token endpoint: the fault stays unused.
        assert first["reason"] == "score_ok"
        assert tenant.faults_left() == 1
        assert tenant.token_exchanges() == 0
    assert second["reason"] == "score_ok"


async def test_slow_token_endpoint_counts_against_the_deadline(
    server: ServerProcess, tenant: Tenant
) -> None:
    tenant.fault(FaultKind.DELAY, delay_ms=int(DEADLINE * 2000), target=FaultTarget.TOKEN)
    loop = asyncio.get_running_loop()
    started = loop.time()

    answer = await tenant.decide(tenant.token())

    assert loop.time() - started < DEADLINE + 0.5
    if auth_mode(server) == "token_exchange":
        assert (answer["decision"], answer["upstream_error"]) == ("deny", "timeout")
        assert tenant.assessments() == []
    else:
        assert answer["reason"] == "score_ok"
