"""Abuse controls on authorize: per-key token bucket, per-operator minute, concurrency cap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import REGISTRY
from sqlalchemy import event

from app.cli import migrate
from app.db import create_engine
from app.errors import TooManyRequests
from app.main import create_app
from app.ratelimit import RateLimiter
from app.settings import Settings
from tests.conftest import (
    ADMIN,
    BOOTSTRAP_KEY,
    GOOGLE,
    PROJECT,
    Gate,
    assessment_json,
    bearer,
    count_rows,
    running,
)

AUTHORIZE = "/sessions/authorize"
POLICY = "/operators/acme/policy"

Launch = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def launch(make_settings: Any) -> Launch:
    """An app on the test database with the given setting overrides, started."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return running(create_app(make_settings(**overrides)))

    return factory


@pytest.fixture
def google_route(google: respx.MockRouter) -> respx.Route:
    return google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(
        side_effect=lambda request: httpx.Response(200, json=assessment_json())
    )


def refused(metric_scope: str) -> float:
    value = REGISTRY.get_sample_value("chargegate_rate_limited_total", {"scope": metric_scope})
    return value or 0.0


def assert_429(response: httpx.Response, names: str) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 429
    assert body["type"].endswith("/too-many-requests")
    assert names in body["detail"]
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


async def authorize(
    client: httpx.AsyncClient, headers: dict[str, str], token: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        AUTHORIZE, json={"operator_id": "acme", "token": token, **extra}, headers=headers
    )


async def within_one_minute(margin: float = 3.0) -> None:
    """Waits past the next minute boundary when it is under `margin` seconds away."""
    now = datetime.now(UTC)
    second = now.second + now.microsecond / 1e6
    if second > 60 - margin:
        await asyncio.sleep(60 - second + 0.05)


async def set_up(client: httpx.AsyncClient, service_account: dict[str, str], **policy: Any) -> Gate:
    gate = Gate(client)
    await gate.protected_operator(service_account, **policy)
    return gate


# ---------------------------------------------------------------------------
# Per API key: a token bucket of 2r, refilled at r per second.


async def test_key_bucket_allows_twice_the_rate_then_answers_429_and_refills(
    launch: Launch, google_route: respx.Route, service_account: dict[str, str]
) -> None:
    async with launch(key_rate_limit=2.0) as client:
        gate = await set_up(client, service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        before = refused("key")
        for n in range(4):
            answer = await authorize(client, backend, f"tok-{n}")
            assert answer.status_code == 200, answer.text
        over = await authorize(client, backend, "tok-over")
        assert assert_429(over, "CHARGEGATE_KEY_RATE_LIMIT") == 1
        assert backend["Authorization"].removeprefix("Bearer ") not in over.text
        assert refused("key") == before + 1
        assert google_route.call_count == 4

        await asyncio.sleep(1.0)
        # The refused call claimed nothing: its token is still good.
        again = await authorize(client, backend, "tok-over")
        assert again.status_code == 200, again.text
        assert again.json()["reason"] == "score_ok"
        assert google_route.call_count == 5


async def test_key_bucket_is_per_key_and_shared_by_replicas(
    launch: Launch, google_route: respx.Route, service_account: dict[str, str], database: str
) -> None:
    async with launch(key_rate_limit=1.0) as one, launch(key_rate_limit=1.0) as two:
        gate = await set_up(one, service_account)
        first = bearer((await gate.create_key("backend", ["acme"]))["key"])
        other = bearer((await gate.create_key("backend", None))["key"])
        answers = await asyncio.gather(
            *(authorize(client, first, f"tok-{n}") for n, client in enumerate([one, two] * 2))
        )
        assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
        assert (await authorize(two, other, "tok-other")).status_code == 200
        assert google_route.call_count == 3
        assert await count_rows(database, "rate_limits") == 2


async def test_an_idempotent_retry_counts_as_a_call(
    launch: Launch, google_route: respx.Route, service_account: dict[str, str]
) -> None:
    async with launch(key_rate_limit=1.0) as client:
        gate = await set_up(client, service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        headers = {**backend, "Idempotency-Key": "retry-1"}
        first = await authorize(client, headers, "tok-idem")
        second = await authorize(client, headers, "tok-idem")
        assert first.json() == second.json()
        assert_429(await authorize(client, headers, "tok-idem"), "rate limit")
        assert google_route.call_count == 1


# ---------------------------------------------------------------------------
# Per operator: max_authorize_per_minute, per UTC minute, across replicas.


async def test_operator_limit_is_exact_across_two_replicas(
    launch: Launch, google_route: respx.Route, service_account: dict[str, str]
) -> None:
    limit = 7
    async with launch() as one, launch() as two:
        gate = await set_up(one, service_account, max_authorize_per_minute=limit)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        before = refused("operator")
        await within_one_minute()
        answers = await asyncio.gather(
            *(authorize(client, backend, f"tok-{n}") for n, client in enumerate([one, two] * 10))
        )
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == limit
        assert statuses.count(429) == 20 - limit
        assert google_route.call_count == limit
        assert refused("operator") == before + 20 - limit
        denial = next(a for a in answers if a.status_code == 429)
        retry_after = assert_429(denial, "max_authorize_per_minute")
        assert retry_after <= 60
        assert "acme" in denial.json()["detail"]

        # Lifting the limit lets the refused tokens through: none of them was claimed.
        await gate.set_policy("acme", max_authorize_per_minute=None)
        token = next(f"tok-{n}" for n, a in enumerate(answers) if a.status_code == 429)
        retried = await authorize(one, backend, token)
        assert retried.status_code == 200, retried.text
        assert retried.json()["reason"] == "score_ok"


async def test_operator_limit_counts_each_operator_on_its_own(
    client: httpx.AsyncClient, google_route: respx.Route, service_account: dict[str, str]
) -> None:
    gate = await set_up(client, service_account, max_authorize_per_minute=1)
    await gate.create_operator("other")
    backend = bearer((await gate.create_key("backend", None))["key"])
    await within_one_minute()
    assert (await authorize(client, backend, "tok-1")).status_code == 200
    assert_429(await authorize(client, backend, "tok-2"), "acme")
    # No limit on `other`, whose protection is off, and an unknown operator is still 404.
    other = await client.post(
        AUTHORIZE, json={"operator_id": "other", "token": "tok-3"}, headers=backend
    )
    assert other.status_code == 200
    unknown = await client.post(
        AUTHORIZE, json={"operator_id": "nobody", "token": "tok-4"}, headers=backend
    )
    assert unknown.status_code == 404


async def test_limits_off_run_no_limiter_statement(
    app: Any,
    client: httpx.AsyncClient,
    google_route: respx.Route,
    service_account: dict[str, str],
    database: str,
) -> None:
    gate = await set_up(client, service_account)
    backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.state.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for n in range(3):
            assert (await authorize(client, backend, f"tok-{n}")).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert not [s for s in statements if "rate_limits" in s]
    assert await count_rows(database, "rate_limits") == 0


# ---------------------------------------------------------------------------
# Concurrent calls per key (per replica).


async def test_concurrent_calls_over_the_cap_are_429(
    launch: Launch, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    async def slow_google(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return httpx.Response(200, json=assessment_json())

    route = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(side_effect=slow_google)
    async with launch(key_max_concurrent_authorize=2) as client:
        gate = await set_up(client, service_account)
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        before = refused("key_concurrency")
        answers = await asyncio.gather(*(authorize(client, backend, f"tok-{n}") for n in range(3)))
        assert sorted(a.status_code for a in answers) == [200, 200, 429]
        denial = next(a for a in answers if a.status_code == 429)
        assert assert_429(denial, "CHARGEGATE_KEY_MAX_CONCURRENT_AUTHORIZE") == 1
        assert refused("key_concurrency") == before + 1
        assert route.call_count == 2
        # Slots are given back: the refused token goes through now.
        token = f"tok-{answers.index(denial)}"
        assert (await authorize(client, backend, token)).json()["reason"] == "score_ok"


# ---------------------------------------------------------------------------
# The policy field.


@pytest.mark.parametrize(
    "value",
    [0, -1, 1.5, "10", True, 1_000_001],
    ids=["zero", "negative", "fraction", "string", "bool", "too-large"],
)
async def test_max_authorize_per_minute_rejects_invalid_values(
    gate: Gate, database: str, value: Any
) -> None:
    await gate.create_operator()
    for method in ("PUT", "PATCH"):
        response = await gate.client.request(
            method, POLICY, json={"max_authorize_per_minute": value}, headers=ADMIN
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert ["body", "max_authorize_per_minute"] in [e["loc"] for e in response.json()["errors"]]
    policy = (await gate.client.get(POLICY, headers=ADMIN)).json()
    assert policy["version"] == 1
    assert policy["max_authorize_per_minute"] is None
    assert await count_rows(database, "audit_log") == 0


async def test_max_authorize_per_minute_is_versioned_audited_and_cleared_by_null(
    gate: Gate,
) -> None:
    await gate.create_operator()
    assert (await gate.client.get(POLICY, headers=ADMIN)).json()["max_authorize_per_minute"] is None
    body = await gate.set_policy("acme", max_authorize_per_minute=1_000_000)
    assert body["max_authorize_per_minute"] == 1_000_000
    assert body["version"] == 2
    body = await gate.set_policy("acme", max_authorize_per_minute=600)
    assert body["version"] == 3
    cleared = await gate.client.patch(
        POLICY,
        content=b'{"max_authorize_per_minute": null}',
        headers={**ADMIN, "content-type": "application/merge-patch+json"},
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["max_authorize_per_minute"] is None
    assert cleared.json()["version"] == 4
    audit = (await gate.client.get("/operators/acme/audit-log", headers=ADMIN)).json()["items"]
    assert [e["changes"] for e in audit] == [
        {"max_authorize_per_minute": {"old": 600, "new": None}},
        {"max_authorize_per_minute": {"old": 1_000_000, "new": 600}},
        {"max_authorize_per_minute": {"old": None, "new": 1_000_000}},
    ]
    # PUT without the field takes the default (no limit).
    await gate.set_policy("acme", max_authorize_per_minute=5)
    put = await gate.client.put(POLICY, json={}, headers=ADMIN)
    assert put.json()["max_authorize_per_minute"] is None


# ---------------------------------------------------------------------------
# The embedded database and database outages.


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=None,
        var_dir=tmp_path / "var",
        recaptcha_base_url=GOOGLE,
        bootstrap_admin_key=BOOTSTRAP_KEY,
        key_rate_limit=1.0,
    )
    await asyncio.to_thread(migrate, settings)
    async with running(create_app(settings)) as client:
        yield client


async def test_limits_on_embedded_sqlite(
    embedded: httpx.AsyncClient, google_route: respx.Route, service_account: dict[str, str]
) -> None:
    gate = await set_up(embedded, service_account)
    first = bearer((await gate.create_key("backend", ["acme"]))["key"])
    assert [(await authorize(embedded, first, f"tok-{n}")).status_code for n in range(2)] == [
        200,
        200,
    ]
    assert_429(await authorize(embedded, first, "tok-2"), "CHARGEGATE_KEY_RATE_LIMIT")

    await gate.set_policy("acme", max_authorize_per_minute=1)
    second = bearer((await gate.create_key("backend", ["acme"]))["key"])
    await within_one_minute()
    assert (await authorize(embedded, second, "tok-3")).status_code == 200
    assert_429(await authorize(embedded, second, "tok-4"), "max_authorize_per_minute")
    assert google_route.call_count == 3


async def test_an_unreachable_database_falls_back_to_counting_in_process(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere",
        var_dir=tmp_path,
        key_rate_limit=1.0,
    )
    engine = create_engine(settings)
    limiter = RateLimiter(engine, settings)
    await within_one_minute()
    try:
        with caplog.at_level(logging.WARNING, logger="chargegate.ratelimit"):
            await limiter.admit("key_a", "acme", 1)
            await limiter.admit("key_a", "other", None)
            with pytest.raises(TooManyRequests) as over_key:
                await limiter.admit("key_a", "other", None)
            with pytest.raises(TooManyRequests) as over_operator:
                await limiter.admit("key_b", "acme", 1)
    finally:
        await engine.dispose()
    assert over_key.value.headers["Retry-After"] == "1"
    assert "max_authorize_per_minute" in over_operator.value.detail
    warnings = [r for r in caplog.records if r.name == "chargegate.ratelimit"]
    assert len(warnings) == 1
