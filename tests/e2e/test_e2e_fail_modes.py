"""Google unavailable, end to end: faults injected at the emulator's real socket, each under
fail_mode open and closed. The decision follows fail_mode, the answer arrives within the
upstream deadline (+ 0.5 s), and a request that may have reached Google is never resent."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer, FaultKind
from tests.e2e.conftest import (
    DEADLINE,
    Launcher,
    Tenant,
    client_for,
    create_tenant,
    metric,
    wait_for,
)

FAULTS = [
    pytest.param(FaultKind.DELAY, {"delay_ms": int(DEADLINE * 1500)}, "timeout", id="delay"),
    pytest.param(FaultKind.STATUS, {"status": 429}, "rate_limited", id="429"),
    pytest.param(FaultKind.STATUS, {"status": 500}, "server_error", id="500"),
    pytest.param(FaultKind.STATUS, {"status": 503}, "server_error", id="503"),
    pytest.param(FaultKind.DROP, {}, "unreachable", id="drop"),
    pytest.param(FaultKind.BROKEN_JSON, {}, "bad_response", id="broken-json"),
]


def sent(tenant: Tenant, token: str) -> int:
    """How many assessment requests with `token` reached the emulator's handler."""
    return [body["event"]["token"] for body in tenant.assessment_requests()].count(token)


async def timed(tenant: Tenant, token: str) -> tuple[dict[str, Any], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await tenant.decide(token)
    return answer, loop.time() - started


@pytest.mark.parametrize(("fail_mode", "decision"), [("closed", "deny"), ("open", "allow")])
@pytest.mark.parametrize(("kind", "options", "upstream_error"), FAULTS)
async def test_fault_decides_per_fail_mode(
    tenant: Tenant,
    http: httpx.AsyncClient,
    fail_mode: str,
    decision: str,
    kind: FaultKind,
    options: dict[str, Any],
    upstream_error: str,
) -> None:
    await tenant.set_policy(fail_mode=fail_mode)
    # Warm up (access token minted, connection pooled): only the fault is timed below.
    assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"
    outcomes_before = await metric(
        http, "chargegate_upstream_requests_total", outcome=upstream_error
    )
    tenant.fault(kind, **options)
    token = tenant.token()

    answer, elapsed = await timed(tenant, token)

    assert elapsed < DEADLINE + 0.5, f"answered after {elapsed:.2f} s"
    assert (answer["decision"], answer["verdict"], answer["reason"], answer["mode"]) == (
        decision,
        None,
        "upstream_unavailable",
        "enforce",
    )
    assert answer["upstream_error"] == upstream_error
    assert answer["score"] is None
    assert answer["assessment_name"] is None
    assert answer["threshold"] == 0.5
    # The call reached the emulator exactly once (the fault plan is used up), and was not
    # sent again: Google would answer a resent token DUPE.
    assert tenant.faults_left() == 0
    if kind in (FaultKind.DROP, FaultKind.DELAY):
        # Google got the request and did the work (the slow answer comes after the gate gave
        # up); a resend would show up as a second request with the same token.
        await wait_for(lambda: sent(tenant, token) >= 1, within=DEADLINE * 2)
        assert sent(tenant, token) == 1
    else:
        # The fault answered for Google: a resend would have reached the handler.
        assert sent(tenant, token) == 0
    assert (
        await metric(http, "chargegate_upstream_requests_total", outcome=upstream_error)
        == outcomes_before + 1
    )
    # The token is spent at the gate too: presenting it again is a reuse, not a new call.
    again = await tenant.decide(token)
    assert again["reason"] == "token_reused"
    assert tenant.faults_left() == 0
    # The fault was for one call: Google answers again.
    assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"


async def test_dropped_connection_is_never_resent(tenant: Tenant) -> None:
    tenant.fault(FaultKind.DROP)
    token = tenant.token()

    answer = await tenant.decide(token)

    assert (answer["decision"], answer["upstream_error"]) == ("deny", "unreachable")
    # The emulator read the request (and used the token up) before it dropped the connection.
    [sent] = tenant.assessment_requests()
    assert sent["event"]["token"] == token
    assert len(tenant.assessments()) == 1
    claims = tenant.state.read_token(token)
    assert claims is not None
    assert claims.nonce in tenant.state.used_tokens


async def test_faults_for_the_whole_deadline_in_monitor_mode_allow(tenant: Tenant) -> None:
    await tenant.set_policy(mode="monitor", fail_mode="closed")
    tenant.fault(FaultKind.STATUS, status=503)

    answer = await tenant.decide(tenant.token())

    assert (answer["decision"], answer["reason"], answer["mode"]) == (
        "allow",
        "upstream_unavailable",
        "monitor",
    )
    assert answer["upstream_error"] == "server_error"


async def test_delay_within_the_deadline_is_only_slow(tenant: Tenant) -> None:
    assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"
    tenant.fault(FaultKind.DELAY, delay_ms=int(DEADLINE * 400))

    answer, elapsed = await timed(tenant, tenant.token())

    assert answer["reason"] == "score_ok"
    assert DEADLINE * 0.4 <= elapsed < DEADLINE + 0.5


async def test_refused_connection_is_unreachable_within_the_deadline(
    launch: Launcher, emulator: EmulatorServer, database: str
) -> None:
    # Nothing listens at this address: every attempt is refused (and may be retried, since
    # such a request never left), until the deadline.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    server = launch.start(CHARGEGATE_RECAPTCHA_BASE_URL=f"http://127.0.0.1:{dead_port}")
    async with client_for(server.url) as http:
        tenant = await create_tenant(http, emulator)
        closed, closed_elapsed = await timed(tenant, tenant.token())
        await tenant.set_policy(fail_mode="open")
        opened, open_elapsed = await timed(tenant, tenant.token())

    for answer, decision in ((closed, "deny"), (opened, "allow")):
        assert (answer["decision"], answer["reason"], answer["upstream_error"]) == (
            decision,
            "upstream_unavailable",
            "unreachable",
        )
    assert max(closed_elapsed, open_elapsed) < DEADLINE + 0.5
    assert tenant.assessment_requests() == []
