"""The fault matrix, end to end (issue 5): the real service on a real port against the
emulator on its own real port, every fault under either fail_mode. The decision follows the
policy every time and the answer comes within the upstream deadline + 0.5 s; an answer just
under the deadline is still Google's, one just over it is a timeout. The circuit breaker of a
Google project opens after CHARGEGATE_BREAKER_FAILURES consecutive failures, then fails fast
without calling Google, lets exactly one probe through after the cool-down (or after Google's
Retry-After, when longer), closes when the probe succeeds and reopens when it fails.

The module's server: 1 s deadline, breaker at 3 failures, 1 s cool-down. Each test has a
Google project of its own, so the matrix (one failure per project) never trips a breaker."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer, FaultKind
from tests.e2e.conftest import DEADLINE, ServerProcess, Tenant, launcher, metric

BREAKER_FAILURES = 3
COOLDOWN = 1.0
# What API.md promises of an answer when Google fails: within the deadline plus this.
SLACK = 0.5
# An answer refused by an open breaker makes no call at all: "immediately".
FAST = 0.1

CLOSED, OPEN = ("closed", "deny"), ("open", "allow")
FAIL_MODES = pytest.mark.parametrize(("fail_mode", "decision"), [CLOSED, OPEN])

FAULTS = [
    pytest.param(FaultKind.DELAY, {"delay_ms": int(DEADLINE * 3000)}, "timeout", id="timeout"),
    pytest.param(
        FaultKind.DELAY, {"delay_ms": int((DEADLINE + 0.3) * 1000)}, "timeout", id="just-over"
    ),
    pytest.param(FaultKind.STATUS, {"status": 429}, "rate_limited", id="429"),
    pytest.param(FaultKind.STATUS, {"status": 500}, "server_error", id="500"),
    pytest.param(FaultKind.STATUS, {"status": 503}, "server_error", id="503"),
    pytest.param(FaultKind.DROP, {}, "unreachable", id="dropped-connection"),
    pytest.param(FaultKind.BROKEN_JSON, {}, "bad_response", id="broken-json"),
]


@pytest.fixture(scope="module")
def server(
    database_url: str, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """This module's server (overrides conftest's): a short breaker cool-down."""
    with launcher(database_url, emulator, tmp_path_factory) as result:
        yield result.start(
            CHARGEGATE_UPSTREAM_TIMEOUT_SECONDS=str(DEADLINE),
            CHARGEGATE_BREAKER_FAILURES=str(BREAKER_FAILURES),
            CHARGEGATE_BREAKER_COOLDOWN_SECONDS=str(COOLDOWN),
        )


async def timed(tenant: Tenant, token: str | None = None) -> tuple[dict[str, Any], float]:
    """The 200 answer of one authorize call (a fresh token by default) and its wall time."""
    started = time.monotonic()
    answer = await tenant.decide(token or tenant.token())
    return answer, time.monotonic() - started


def unavailable(answer: dict[str, Any]) -> tuple[Any, ...]:
    return (
        answer["decision"],
        answer["verdict"],
        answer["reason"],
        answer["upstream_error"],
        answer["score"],
        answer["assessment_name"],
    )


def failed_as(decision: str, upstream_error: str) -> tuple[Any, ...]:
    return (decision, None, "upstream_unavailable", upstream_error, None, None)


def assessed(answer: dict[str, Any]) -> tuple[Any, ...]:
    """A real assessment by the emulator, score 0.9 ≥ 0.5."""
    assert answer["assessment_name"], answer
    return answer["decision"], answer["verdict"], answer["reason"], answer["upstream_error"]


SCORE_OK = ("allow", "pass", "score_ok", None)


async def breaker_open(http: httpx.AsyncClient, tenant: Tenant) -> float:
    return await metric(http, "chargegate_breaker_open", project=tenant.project_id)


async def warm_up(tenant: Tenant, fail_mode: str = "closed") -> None:
    """Policy set, access token minted, connection pooled: only the fault is timed."""
    await tenant.set_policy(fail_mode=fail_mode)
    answer, _ = await timed(tenant)
    assert assessed(answer) == SCORE_OK


async def open_with_503s(tenant: Tenant, decision: str) -> float:
    """BREAKER_FAILURES consecutive 503s; the monotonic time the breaker opened (at the
    latest)."""
    tenant.fault(FaultKind.STATUS, status=503, count=BREAKER_FAILURES)
    for _ in range(BREAKER_FAILURES):
        answer, elapsed = await timed(tenant)
        assert unavailable(answer) == failed_as(decision, "server_error")
        assert elapsed < DEADLINE + SLACK
    assert tenant.faults_left() == 0  # every one of them reached the emulator
    return time.monotonic()


async def refused_fast(tenant: Tenant, decision: str, calls: int = 3) -> None:
    """`calls` authorize calls answered by the open breaker: no request to the emulator."""
    requests_before = len(tenant.assessment_requests())
    elapsed = []
    for _ in range(calls):
        answer, seconds = await timed(tenant)
        assert unavailable(answer) == failed_as(decision, "circuit_open")
        elapsed.append(seconds)
    # Nothing reached Google: no fault is pending, so a request would have been recorded.
    assert len(tenant.assessment_requests()) == requests_before
    # No waiting for Google at all (the median, so one GC pause is no failure).
    assert statistics.median(elapsed) < FAST, elapsed
    assert max(elapsed) < DEADLINE / 2, elapsed


async def sleep_until(instant: float) -> None:
    await asyncio.sleep(max(instant - time.monotonic(), 0))


# ---------------------------------------------------------------------------
# The matrix.


@FAIL_MODES
@pytest.mark.parametrize(("kind", "options", "upstream_error"), FAULTS)
async def test_fault_matrix(
    tenant: Tenant,
    http: httpx.AsyncClient,
    fail_mode: str,
    decision: str,
    kind: FaultKind,
    options: dict[str, Any],
    upstream_error: str,
) -> None:
    await warm_up(tenant, fail_mode)
    tenant.fault(kind, **options)

    answer, elapsed = await timed(tenant)

    assert unavailable(answer) == failed_as(decision, upstream_error)
    assert (answer["mode"], answer["threshold"]) == ("enforce", 0.5)
    assert elapsed <= DEADLINE + SLACK, f"answered after {elapsed:.2f} s"
    assert tenant.faults_left() == 0  # the fault struck: the call did reach the emulator
    # One failure is not a breaker's worth: the next call is Google's answer again.
    answer, elapsed = await timed(tenant)
    assert assessed(answer) == SCORE_OK
    assert elapsed <= DEADLINE + SLACK
    assert await breaker_open(http, tenant) == 0


@FAIL_MODES
async def test_answer_just_under_the_deadline_is_googles(
    tenant: Tenant, fail_mode: str, decision: str
) -> None:
    await warm_up(tenant, fail_mode)
    delay = DEADLINE - 0.3
    tenant.fault(FaultKind.DELAY, delay_ms=int(delay * 1000))

    answer, elapsed = await timed(tenant)

    # Slow, but in time: the real assessment decides, whatever the fail_mode.
    assert assessed(answer) == SCORE_OK
    assert answer["score"] == 0.9
    assert delay <= elapsed <= DEADLINE + SLACK
    assert tenant.faults_left() == 0


# ---------------------------------------------------------------------------
# The circuit breaker.


@FAIL_MODES
async def test_breaker_opens_fails_fast_probes_and_closes(
    tenant: Tenant, http: httpx.AsyncClient, fail_mode: str, decision: str
) -> None:
    await warm_up(tenant, fail_mode)
    assert await breaker_open(http, tenant) == 0

    opened_at = await open_with_503s(tenant, decision)

    await refused_fast(tenant, decision)
    assert await breaker_open(http, tenant) == 1
    assert time.monotonic() - opened_at < COOLDOWN, "too slow to see the breaker open"

    # After the cool-down one probe goes to Google; the fault is gone, so it succeeds.
    await sleep_until(opened_at + COOLDOWN + 0.05)
    requests_before = len(tenant.assessment_requests())
    answer, elapsed = await timed(tenant)
    assert assessed(answer) == SCORE_OK
    assert elapsed <= DEADLINE + SLACK
    assert len(tenant.assessment_requests()) == requests_before + 1
    assert await breaker_open(http, tenant) == 0
    # Closed: calls flow again.
    for _ in range(3):
        answer, _ = await timed(tenant)
        assert assessed(answer) == SCORE_OK
    assert len(tenant.assessment_requests()) == requests_before + 4


async def test_failed_probe_reopens_for_another_cooldown(
    tenant: Tenant, http: httpx.AsyncClient
) -> None:
    await warm_up(tenant)
    # One 503 more than it takes to open: that one is for the probe.
    tenant.fault(FaultKind.STATUS, status=503, count=BREAKER_FAILURES + 1)
    for _ in range(BREAKER_FAILURES):
        answer, _ = await timed(tenant)
        assert unavailable(answer) == failed_as("deny", "server_error")
    opened_at = time.monotonic()
    answer, elapsed = await timed(tenant)
    assert unavailable(answer) == failed_as("deny", "circuit_open")
    assert elapsed < DEADLINE / 2
    assert tenant.faults_left() == 1  # the refused call did not reach the emulator

    await sleep_until(opened_at + COOLDOWN + 0.05)
    probe, elapsed = await timed(tenant)
    assert unavailable(probe) == failed_as("deny", "server_error")
    assert elapsed < DEADLINE + SLACK
    assert tenant.faults_left() == 0  # the probe reached the emulator
    reopened_at = time.monotonic()

    # Open again, for a whole cool-down.
    await refused_fast(tenant, "deny", calls=2)
    assert await breaker_open(http, tenant) == 1
    assert time.monotonic() - reopened_at < COOLDOWN, "too slow to see the breaker reopen"

    await sleep_until(reopened_at + COOLDOWN + 0.05)
    answer, _ = await timed(tenant)
    assert assessed(answer) == SCORE_OK
    assert await breaker_open(http, tenant) == 0


async def test_exactly_one_probe_at_a_time(tenant: Tenant, http: httpx.AsyncClient) -> None:
    await warm_up(tenant, "open")
    opened_at = await open_with_503s(tenant, "allow")
    await sleep_until(opened_at + COOLDOWN + 0.05)
    # The probe is slow (but in time); the calls arriving meanwhile are refused at once.
    tenant.fault(FaultKind.DELAY, delay_ms=int(DEADLINE * 600))
    requests_before = len(tenant.assessment_requests())

    answers = await asyncio.gather(*(timed(tenant) for _ in range(4)))

    probes = [answer for answer, _ in answers if answer["upstream_error"] is None]
    refused = [(answer, seconds) for answer, seconds in answers if answer not in probes]
    assert len(probes) == 1, [answer["upstream_error"] for answer, _ in answers]
    assert assessed(probes[0]) == SCORE_OK
    for answer, seconds in refused:
        assert unavailable(answer) == failed_as("allow", "circuit_open")
        assert seconds < DEADLINE * 0.6  # not held back behind the probe
    assert len(tenant.assessment_requests()) == requests_before + 1
    assert await breaker_open(http, tenant) == 0


async def test_retry_after_opens_the_breaker_for_that_long(
    tenant: Tenant, http: httpx.AsyncClient
) -> None:
    await warm_up(tenant)
    retry_after = 2  # seconds, longer than the cool-down
    assert retry_after > COOLDOWN
    # One 429 only, below the breaker's threshold: Google said when to come back.
    tenant.fault(FaultKind.STATUS, status=429, retry_after=retry_after)

    answer, _ = await timed(tenant)
    assert unavailable(answer) == failed_as("deny", "rate_limited")
    answered_at = time.monotonic()  # the 429 arrived before this

    await refused_fast(tenant, "deny", calls=2)
    assert await breaker_open(http, tenant) == 1
    # Past the cool-down, still before Retry-After: still refused, Google not called.
    await sleep_until(answered_at + COOLDOWN + 0.3)
    await refused_fast(tenant, "deny", calls=1)
    assert time.monotonic() < answered_at + retry_after - 0.2, "too slow to test Retry-After"

    await sleep_until(answered_at + retry_after + 0.05)
    answer, _ = await timed(tenant)
    assert assessed(answer) == SCORE_OK
    assert await breaker_open(http, tenant) == 0
