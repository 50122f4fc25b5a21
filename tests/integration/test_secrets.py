"""After a full scenario, no secret is in a response, a log line or the database."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import httpx
import pytest
import respx

from app.logging import JsonFormatter
from tests.conftest import (
    ADMIN,
    BOOTSTRAP_KEY,
    GOOGLE,
    PROJECT,
    SITE_KEY,
    Gate,
    assessment_json,
    bearer,
    eventually,
)

GOOGLE_API_KEY = "AIzaSyD-this-is-a-google-api-key-000000"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line at DEBUG level, formatted exactly as production writes them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous)


async def pg_dump(database_url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "pg_dump", "--data-only", "--no-owner", database_url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


async def test_no_secret_leaks_anywhere(
    gate: Gate,
    google: respx.MockRouter,
    service_account: dict[str, str],
    captured_logs: io.StringIO,
    database: str,
) -> None:
    responses: list[httpx.Response] = []

    async def call(method: str, url: str, **kwargs: object) -> httpx.Response:
        response = await gate.client.request(method, url, **kwargs)  # type: ignore[arg-type]
        responses.append(response)
        return response

    assessments = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").mock(
        side_effect=[
            httpx.Response(200, json=assessment_json(name="projects/1/assessments/a1")),
            httpx.Response(200, json=assessment_json(valid=False, invalid_reason="MALFORMED")),
            httpx.Response(
                503, json={"error": {"code": 503, "message": "x", "status": "UNAVAILABLE"}}
            ),
        ]
    )
    annotate = google.post(f"{GOOGLE}/v1/projects/1/assessments/a1:annotate").respond(json={})
    google.get(f"{GOOGLE}/v1/projects/{PROJECT}/keys/{SITE_KEY}").respond(
        json={"name": "k", "webSettings": {"integrationType": "SCORE"}}
    )

    # The CPO configures two operators, one with a service account, one with an API key.
    await gate.protected_operator(service_account)
    await gate.create_operator("beta")
    await call(
        "PUT",
        "/operators/beta/credentials",
        json={"type": "api_key", "api_key": GOOGLE_API_KEY},
        headers=ADMIN,
    )
    await call(
        "PUT",
        "/operators/acme/credentials",
        json={**service_account, "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key"},
        headers=ADMIN,
    )
    await call("GET", "/operators/acme/credentials", headers=ADMIN)
    await call("GET", "/operators/beta/credentials", headers=ADMIN)
    await call("POST", "/operators/acme/credentials/verify", headers=ADMIN)
    backend = await gate.create_key("backend", ["acme"])
    admin = await gate.create_key("operator_admin", ["acme", "beta"])
    raw_keys = [backend["key"], admin["key"], BOOTSTRAP_KEY]

    # The backend authorizes: allow, invalid, upstream failure, replay, bad input.
    tokens = [f"03AFcWeA-token-{n}-{'x' * 40}" for n in range(4)]
    headers = {**bearer(backend["key"]), "Idempotency-Key": "idem-1"}
    first = await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[0]},
        headers=headers,
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[0]},
        headers=headers,
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[1]},
        headers=bearer(backend["key"]),
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[2]},
        headers=bearer(backend["key"]),
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[0]},
        headers=bearer(backend["key"]),
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[3], "bogus": 1},
        headers=bearer(backend["key"]),
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[3] + "\u0000"},
        headers=bearer(backend["key"]),
    )
    await call(
        "POST",
        "/sessions/authorize",
        json={"operator_id": "acme", "token": tokens[3]},
        headers=bearer("cg_wrong" + "A" * 40),
    )
    await call(
        "POST",
        f"/sessions/{first.json()['decision_id']}/outcome",
        json={"outcome": "fraudulent", "reasons": ["chargeback"]},
        headers=bearer(backend["key"]),
    )
    await call("GET", "/operators/acme/decisions", headers=bearer(admin["key"]))
    await call("GET", "/operators/acme/audit-log", headers=bearer(admin["key"]))
    await call("GET", "/operators/beta/audit-log", headers=bearer(admin["key"]))

    async def delivered() -> bool:
        return annotate.called

    await eventually(delivered, 5.0)
    assert assessments.call_count == 3
    access_tokens = [
        c.request.headers["authorization"].removeprefix("Bearer ")
        for c in google.calls
        if "authorization" in c.request.headers
    ]
    assert access_tokens

    private_key_lines = [
        line for line in service_account["private_key"].splitlines() if len(line) > 40
    ]
    secrets = {
        **{f"private key line {i}": line for i, line in enumerate(private_key_lines)},
        "google api key": GOOGLE_API_KEY,
        **{f"api key {i}": key for i, key in enumerate(raw_keys)},
        **{f"token {i}": token for i, token in enumerate(tokens)},
        **{f"access token {i}": token for i, token in enumerate(access_tokens)},
    }
    places = {
        "responses": "\n".join(r.text for r in responses),
        "logs": captured_logs.getvalue(),
        "database": await pg_dump(database),
    }
    assert "a1" in places["database"]
    assert "chargeback" in places["database"].lower()
    leaks = [
        f"{name} in {place}"
        for name, secret in secrets.items()
        for place, text in places.items()
        if secret in text
    ]
    assert leaks == []
