"""Health, readiness, metrics, request ids and the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import respx
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import GOOGLE, PROJECT, Gate, assessment_json, bearer, running

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"

CONTRACT_OPERATIONS = {
    ("get", "/operators/{operator_id}/site-key"): "200",
    ("get", "/healthz"): "200",
    ("get", "/readyz"): "200",
    ("get", "/metrics"): "200",
    ("post", "/sessions/authorize"): "200",
    ("post", "/sessions/{decision_id}/outcome"): "202",
    ("get", "/operators/{operator_id}/policy"): "200",
    ("put", "/operators/{operator_id}/policy"): "200",
    ("patch", "/operators/{operator_id}/policy"): "200",
    ("put", "/operators/{operator_id}/credentials"): "200",
    ("get", "/operators/{operator_id}/credentials"): "200",
    ("delete", "/operators/{operator_id}/credentials"): "204",
    ("post", "/operators/{operator_id}/credentials/verify"): "200",
    ("get", "/operators/{operator_id}/decisions"): "200",
    ("get", "/operators/{operator_id}/audit-log"): "200",
    ("post", "/operators"): "201",
    ("get", "/operators"): "200",
    ("post", "/api-keys"): "201",
    ("delete", "/api-keys/{key_id}"): "204",
}


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200


async def test_starts_and_stays_healthy_while_the_database_is_down(make_settings: Any) -> None:
    # Nothing listens on port 1: the database is "down" from the start.
    app = create_app(make_settings(database_url="postgresql://postgres@127.0.0.1:1/none"))
    async with running(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"


async def test_request_id_is_generated_or_echoed(client: httpx.AsyncClient) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) >= 8
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"


async def test_metrics_expose_the_contract_names(
    gate: Gate, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    await gate.protected_operator(service_account)
    backend = await gate.create_key("backend", ["acme"])
    google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(json=assessment_json())
    response = await gate.client.post(
        "/sessions/authorize",
        json={"operator_id": "acme", "token": "tok-metrics"},
        headers=bearer(backend["key"]),
    )
    assert response.status_code == 200
    text = (await gate.client.get("/metrics")).text
    assert (
        'chargegate_authorize_decisions_total{decision="allow",mode="enforce",operator="acme",reason="score_ok"}'
        in text
    )
    for name in (
        "chargegate_authorize_duration_seconds_bucket",
        'chargegate_upstream_requests_total{outcome="ok"}',
        "chargegate_upstream_duration_seconds_bucket",
        "chargegate_access_token_mints_total",
    ):
        assert name in text


async def test_committed_openapi_matches_the_app(app: FastAPI, client: httpx.AsyncClient) -> None:
    committed = json.loads(OPENAPI_FILE.read_text())
    assert committed == app.openapi(), "run `make openapi` and commit openapi/openapi.json"
    served = await client.get("/openapi.json")
    assert served.json() == committed


def test_openapi_has_every_contract_operation_with_its_success_status() -> None:
    document = json.loads(OPENAPI_FILE.read_text())
    for (method, path), status in CONTRACT_OPERATIONS.items():
        operation = document["paths"][path][method]
        assert status in operation["responses"], (method, path)
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                assert "application/problem+json" in response["content"], (method, path, code)
