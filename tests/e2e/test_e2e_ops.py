"""/healthz, /readyz and /metrics on the real server; request ids on every response and in the
JSON log lines; secrets never in the log."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx

from app.recaptcha.emulator import FaultKind
from tests.conftest import ADMIN, BOOTSTRAP_KEY
from tests.e2e.conftest import (
    REQUEST_ID,
    SEEN,
    Launcher,
    ServerProcess,
    Tenant,
    client_for,
    metric,
    parse_metrics,
    wait_for,
)

REQUIRED_METRICS = {
    "chargegate_authorize_decisions_total": "counter",
    "chargegate_authorize_duration_seconds": "histogram",
    "chargegate_upstream_requests_total": "counter",
    "chargegate_upstream_duration_seconds": "histogram",
    "chargegate_access_token_mints_total": "counter",
}


def log_entries(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's log: one JSON object a line, every line."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    ready = await http.get("/readyz")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert health.headers["content-type"].startswith("application/json")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_metrics_after_decisions(tenant: Tenant, http: httpx.AsyncClient) -> None:
    labels = {"operator": tenant.operator_id, "mode": "enforce"}
    before_ok = await metric(http, "chargegate_upstream_requests_total", outcome="ok")
    before_count = await metric(http, "chargegate_authorize_duration_seconds_count")

    await tenant.decide(tenant.token())
    await tenant.decide(tenant.token())
    await tenant.decide()
    tenant.fault(FaultKind.STATUS, status=503)
    await tenant.decide(tenant.token())

    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name, kind in REQUIRED_METRICS.items():
        assert f"# TYPE {name} {kind}" in response.text, name
    samples = parse_metrics(response.text)
    decisions = "chargegate_authorize_decisions_total"

    def decided(decision: str, reason: str) -> float:
        key = frozenset({**labels, "decision": decision, "reason": reason}.items())
        return samples.get((decisions, key), 0.0)

    assert decided("allow", "score_ok") == 2
    assert decided("deny", "token_missing") == 1
    assert decided("deny", "upstream_unavailable") == 1
    assert await metric(http, "chargegate_upstream_requests_total", outcome="ok") == before_ok + 2
    assert await metric(http, "chargegate_authorize_duration_seconds_count") == before_count + 4
    assert await metric(http, "chargegate_upstream_duration_seconds_count") >= 3
    assert await metric(http, "chargegate_access_token_mints_total") >= 1


async def test_request_ids_on_every_kind_of_response(
    server: ServerProcess, tenant: Tenant, http: httpx.AsyncClient
) -> None:
    answers = [
        await http.get("/healthz"),
        await http.get("/metrics"),
        await http.get("/operators", headers=ADMIN),
        await http.get("/operators", headers={"Authorization": "Bearer cg_nope"}),  # 401
        await http.get(f"/operators/{tenant.operator_id}/policy", headers=tenant.backend),  # 403
        await http.get("/operators/no-such-operator/site-key"),  # 404
        await http.post("/sessions/authorize", json={"nope": 1}, headers=tenant.backend),  # 422
        await http.post(
            "/sessions/authorize", content=b"x" * (65 * 1024), headers=tenant.backend
        ),  # 413
        await http.get("/no/such/path"),  # 404 from the router
        await tenant.authorize(tenant.token()),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 403, 404, 422, 413, 404, 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(REQUEST_ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    for problem in answers[3:9]:
        assert problem.headers["content-type"].startswith("application/problem+json")
        assert problem.json()["status"] == problem.status_code

    # A caller's own id is echoed; one that is not a plain token is replaced.
    echoed = await http.get("/healthz", headers={"X-Request-ID": "backend-trace-42"})
    replaced = await http.get("/healthz", headers={"X-Request-ID": "bad id\twith tab"})
    assert echoed.headers["x-request-id"] == "backend-trace-42"
    assert replaced.headers["x-request-id"] != "bad id\twith tab"

    # The same ids are in the server's JSON access log, one line per request.
    def logged() -> bool:
        return {"backend-trace-42", *ids} <= {e.get("request_id") for e in log_entries(server)}

    await wait_for(logged, 2.0)
    access = {e["request_id"]: e for e in log_entries(server) if e["logger"] == "chargegate.access"}
    assert access["backend-trace-42"]["path"] == "/healthz"
    assert access["backend-trace-42"]["status"] == 200
    assert access[ids[7]]["status"] == 413
    assert access[ids[9]]["path"] == "/sessions/authorize"


async def test_the_log_holds_no_secret(
    server: ServerProcess, tenant: Tenant, http: httpx.AsyncClient
) -> None:
    token = tenant.token()
    await tenant.decide(token)
    await tenant.decide(token)  # a reuse
    tenant.fault(FaultKind.DROP)
    await tenant.decide(tenant.token())
    await http.get("/operators", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}x"})

    log = server.log()
    backend_key = tenant.backend["Authorization"].removeprefix("Bearer ")
    private_key_body = tenant.credentials["private_key"].splitlines()[1]
    for secret in (token, backend_key, BOOTSTRAP_KEY, private_key_body):
        assert secret not in log


async def test_every_response_of_the_run_had_a_request_id(http: httpx.AsyncClient) -> None:
    # Each e2e client checks every response as it arrives; this is the record so far.
    await http.get("/healthz")
    assert SEEN.responses
    missing = [r for r in SEEN.responses if r[3] is None or not REQUEST_ID.match(r[3])]
    assert missing == []


async def test_up_without_a_database(launch: Launcher) -> None:
    # Nothing listens on this port: Postgres is "down".
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    server = launch.start(
        CHARGEGATE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{dead_port}/chargegate"
    )
    async with client_for(server.url) as http:
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        metrics = await http.get("/metrics")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    assert ready.json()["status"] == 503
    assert metrics.status_code == 200
