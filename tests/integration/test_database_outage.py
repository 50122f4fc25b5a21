"""The database goes away (a TCP proxy in front of Postgres is cut) and comes back.

Authorize keeps answering from the last known state, decisions wait in memory and are all
written once the database answers again; replay protection holds in-process; admin writes,
unknown keys and /readyz answer 503; past the buffer or the stale limit authorize answers
503 rather than a decision it cannot record. Nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import respx

from app.main import create_app
from bench.tcp_proxy import TcpProxy
from tests.conftest import ADMIN, Gate, bearer, count_rows, eventually, running


@pytest.fixture
async def proxy(database: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(database)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as p:
        yield p


def through(database: str, proxy: TcpProxy) -> str:
    parts = urlsplit(database)
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    return urlunsplit(parts._replace(netloc=netloc))


async def authorize(
    client: httpx.AsyncClient, headers: dict[str, str], token: str | None = None, **extra: Any
) -> httpx.Response:
    body = {"operator_id": "acme", "token": token or secrets.token_urlsafe(24), **extra}
    return await client.post("/sessions/authorize", json=body, headers=headers)


@contextlib.asynccontextmanager
async def gate_through(
    proxy: TcpProxy,
    make_settings: Any,
    database: str,
    service_account: dict[str, str],
    **overrides: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A running app whose database connections go through `proxy`, with a protected
    operator, a backend key, and the last known state read once before any outage."""
    settings = make_settings(database_url=through(database, proxy), **overrides)
    async with running(create_app(settings)) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        headers = bearer((await gate.create_key("backend", ["acme"]))["key"])
        assert (await authorize(client, headers)).json()["reason"] == "score_ok"
        yield client, headers


@pytest.fixture
async def gated(
    make_settings: Any,
    database: str,
    proxy: TcpProxy,
    service_account: dict[str, str],
    assessments: respx.Route,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    overrides = getattr(request, "param", {})
    async with gate_through(proxy, make_settings, database, service_account, **overrides) as g:
        yield g


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_authorize_answers_through_an_outage_and_every_decision_is_written_after(
    gated: tuple[httpx.AsyncClient, dict[str, str]],
    proxy: TcpProxy,
    database: str,
    assessments: respx.Route,
) -> None:
    client, headers = gated
    await proxy.cut()
    answers = await asyncio.gather(*(authorize(client, headers) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert {(a.json()["decision"], a.json()["reason"]) for a in answers} == {("allow", "score_ok")}
    assert await metric(client, "chargegate_decision_buffer_size") == 20
    assert (await client.get("/readyz")).status_code == 503
    assert await count_rows(database, "decisions") == 1  # only the one before the outage

    await proxy.restore()

    async def all_written() -> bool:
        return await count_rows(database, "decisions") == 21

    await eventually(all_written, within=10)
    assert await metric(client, "chargegate_decision_buffer_size") == 0
    ids = {a.json()["decision_id"] for a in answers}
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT decision_id, decision, reason FROM decisions")
    finally:
        await conn.close()
    written = {r["decision_id"]: (r["decision"], r["reason"]) for r in rows}
    assert ids <= written.keys()
    assert {written[i] for i in ids} == {("allow", "score_ok")}
    assert (await client.get("/readyz")).status_code == 200


async def test_replays_are_caught_in_process_during_the_outage_and_service_wide_after(
    gated: tuple[httpx.AsyncClient, dict[str, str]],
    proxy: TcpProxy,
    database: str,
    assessments: respx.Route,
) -> None:
    client, headers = gated
    await proxy.cut()
    token = secrets.token_urlsafe(24)
    first = await authorize(client, headers, token)
    again = await authorize(client, headers, token)
    assert first.json()["reason"] == "score_ok"
    assert again.json()["reason"] == "token_reused"
    calls = assessments.call_count
    await proxy.restore()

    async def claims_written() -> bool:
        return await count_rows(database, "decisions") == 3

    await eventually(claims_written, within=10)
    # The token claimed during the outage is now claimed in the database, for every replica.
    after = await authorize(client, headers, token)
    assert after.json()["reason"] == "token_reused"
    assert assessments.call_count == calls


async def test_admin_writes_and_unknown_keys_get_503_problems_while_the_database_is_away(
    gated: tuple[httpx.AsyncClient, dict[str, str]], proxy: TcpProxy
) -> None:
    client, _ = gated
    await proxy.cut()
    write = await client.patch(
        "/operators/acme/policy", json={"score_threshold": 0.9}, headers=ADMIN
    )
    assert write.status_code == 503
    assert write.headers["content-type"] == "application/problem+json"
    assert write.json()["status"] == 503
    stranger = await authorize(client, bearer("cg_" + secrets.token_urlsafe(32)))
    assert stranger.status_code == 503  # cannot tell unknown from not-yet-read: not a 401
    await proxy.restore()

    async def writable() -> bool:
        response = await client.patch(
            "/operators/acme/policy", json={"score_threshold": 0.9}, headers=ADMIN
        )
        return response.status_code == 200

    await eventually(writable, within=10)


@pytest.mark.parametrize("gated", [{"decision_buffer": 3}], indirect=True)
async def test_a_full_buffer_answers_503_without_calling_google(
    gated: tuple[httpx.AsyncClient, dict[str, str]],
    proxy: TcpProxy,
    database: str,
    assessments: respx.Route,
) -> None:
    client, headers = gated
    await proxy.cut()
    for _ in range(3):
        assert (await authorize(client, headers)).status_code == 200
    calls = assessments.call_count
    full = await authorize(client, headers)
    assert full.status_code == 503
    assert full.headers["content-type"] == "application/problem+json"
    assert "Retry-After" in full.headers
    assert assessments.call_count == calls
    await proxy.restore()

    async def written() -> bool:
        return await count_rows(database, "decisions") == 4

    await eventually(written, within=10)
    assert (await authorize(client, headers)).status_code == 200


@pytest.mark.parametrize(
    "gated", [{"stale_state_seconds": 1.5, "state_cache_seconds": 0.2}], indirect=True
)
async def test_past_the_stale_limit_authorize_answers_503(
    gated: tuple[httpx.AsyncClient, dict[str, str]], proxy: TcpProxy
) -> None:
    client, headers = gated
    await proxy.cut()
    assert (await authorize(client, headers)).status_code == 200
    await asyncio.sleep(1.6)
    late = await authorize(client, headers)
    assert late.status_code == 503
    assert late.headers["content-type"] == "application/problem+json"
    await proxy.restore()

    async def answering() -> bool:
        return (await authorize(client, headers)).status_code == 200

    await eventually(answering, within=10)


async def test_an_idempotency_key_holds_in_process_during_the_outage(
    gated: tuple[httpx.AsyncClient, dict[str, str]],
    proxy: TcpProxy,
    database: str,
    assessments: respx.Route,
) -> None:
    client, headers = gated
    await proxy.cut()
    keyed = {**headers, "Idempotency-Key": "start-42"}
    token = secrets.token_urlsafe(24)
    first, second = await asyncio.gather(
        authorize(client, keyed, token), authorize(client, keyed, token)
    )
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    other = await authorize(client, keyed, secrets.token_urlsafe(24))
    assert other.status_code == 409
    await proxy.restore()

    async def written() -> bool:
        return await count_rows(database, "idempotency_records") == 1

    await eventually(written, within=10)
    # After the outage the database holds the answer: a retry gets it, wherever it lands.
    retry = await authorize(client, keyed, token)
    assert retry.json() == first.json()
    assert await count_rows(database, "decisions") == 2


async def test_shutdown_writes_the_buffer_when_the_database_is_back(
    make_settings: Any,
    database: str,
    proxy: TcpProxy,
    service_account: dict[str, str],
    assessments: respx.Route,
) -> None:
    async with gate_through(proxy, make_settings, database, service_account) as (client, headers):
        await proxy.cut()
        for _ in range(5):
            assert (await authorize(client, headers)).status_code == 200
        await proxy.restore()
        # The app stops at once, before the background flusher's next try.
    assert await count_rows(database, "decisions") == 6


async def test_shutdown_gives_up_on_an_absent_database_within_the_grace(
    make_settings: Any,
    database: str,
    proxy: TcpProxy,
    service_account: dict[str, str],
    assessments: respx.Route,
    caplog: pytest.LogCaptureFixture,
) -> None:
    grace = 2.0
    async with gate_through(
        proxy, make_settings, database, service_account, shutdown_grace_seconds=grace
    ) as (client, headers):
        await proxy.cut()
        assert (await authorize(client, headers)).status_code == 200
        stopping = asyncio.get_running_loop().time()
    stopped_after = asyncio.get_running_loop().time() - stopping
    assert stopped_after <= grace * 0.3 + 0.5
    assert "decisions lost at shutdown" in caplog.text


async def test_buffered_decisions_are_written_in_the_order_they_were_made(
    gated: tuple[httpx.AsyncClient, dict[str, str]],
    proxy: TcpProxy,
    database: str,
    assessments: respx.Route,
) -> None:
    client, headers = gated
    await proxy.cut()
    made = [(await authorize(client, headers)).json()["decision_id"] for _ in range(10)]
    await proxy.restore()

    async def written() -> bool:
        return await count_rows(database, "decisions") == 11

    await eventually(written, within=10)
    conn = await asyncpg.connect(database)
    try:
        # The table is emptied before each test and only ever appended to: its physical
        # order is the order of insertion.
        stored = [
            r["decision_id"]
            for r in await conn.fetch("SELECT decision_id FROM decisions ORDER BY ctid")
        ]
    finally:
        await conn.close()
    assert stored[1:] == made
