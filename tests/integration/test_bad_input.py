"""Bad input: a clear 4xx problem+json that changes nothing and never reaches Google."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import Gate, count_rows
from tests.conftest import assert_problem as problem

TOKEN = "secret-token-value-0123456789"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    body = problem(response, status)
    assert TOKEN not in response.text
    return body


async def _nothing_happened(database: str, route: respx.Route) -> None:
    assert await count_rows(database, "decisions") == 0
    assert await count_rows(database, "token_claims") == 0
    assert not route.called


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b'{"operator_id": "acme", "token": ', "malformed JSON"),
        (b'{"operator_id": "acme", "token": 123}', "wrong type"),
        (b'["acme"]', "not an object"),
        (
            b'{"operator_id": "acme", "token": "' + TOKEN.encode() + b'", "extra": 1}',
            "unknown field",
        ),
        (b'{"operator_id": "acme", "token": "a\\u0000b"}', "NUL character"),
        (b'{"operator_id": "acme", "token": "' + b"x" * 8193 + b'"}', "over-long token"),
        (b'{"operator_id": "acme", "session_ref": "' + b"s" * 129 + b'"}', "over-long session_ref"),
        (b'{"operator_id": "acme", "user_ip": "not-an-ip"}', "bad user_ip"),
        (b'{"operator_id": "ACME!"}', "bad operator_id"),
        (b"", "empty body"),
    ],
)
async def test_invalid_authorize_bodies_are_422(
    gate: Gate,
    backend: dict[str, str],
    assessments: respx.Route,
    database: str,
    content: bytes,
    what: str,
) -> None:
    response = await gate.client.post(
        "/sessions/authorize",
        content=content,
        headers={**backend, "content-type": "application/json"},
    )
    body = assert_problem(response, 422)
    assert body["errors"], what
    await _nothing_happened(database, assessments)


async def test_non_utf8_body_is_422(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    response = await gate.client.post(
        "/sessions/authorize",
        content=b'{"operator_id": "acme", "token": "\xff\xfe"}',
        headers={**backend, "content-type": "application/json"},
    )
    assert_problem(response, 422)
    await _nothing_happened(database, assessments)


async def test_body_over_64_kib_is_413(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    content = b'{"operator_id": "acme", "token": "' + b"x" * (64 * 1024) + b'"}'
    response = await gate.client.post(
        "/sessions/authorize",
        content=content,
        headers={**backend, "content-type": "application/json"},
    )
    assert_problem(response, 413)
    await _nothing_happened(database, assessments)


async def test_chunked_body_over_64_kib_is_413(
    gate: Gate, backend: dict[str, str], assessments: respx.Route, database: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"operator_id": "acme", "token": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    request = gate.client.build_request(
        "POST",
        "/sessions/authorize",
        content=chunks(),
        headers={**backend, "content-type": "application/json"},
    )
    assert "content-length" not in request.headers
    response = await gate.client.send(request)
    assert_problem(response, 413)
    await _nothing_happened(database, assessments)


async def test_body_just_under_the_limit_is_parsed(
    gate: Gate, backend: dict[str, str], assessments: respx.Route
) -> None:
    # 64 KiB of whitespace padding keeps the body legal JSON; the limit is on bytes.
    content = b'{"operator_id": "acme", "token": "tok-under-limit"}'
    content += b" " * (64 * 1024 - len(content))
    response = await gate.client.post(
        "/sessions/authorize",
        content=content,
        headers={**backend, "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert assessments.call_count == 1


async def test_oversized_admin_body_is_413_and_changes_nothing(gate: Gate) -> None:
    await gate.create_operator()
    before = (await gate.client.get("/operators/acme/policy", headers=bearer_admin())).json()
    response = await gate.client.put(
        "/operators/acme/policy",
        content=b'{"expected_action": "' + b"a" * (70 * 1024) + b'"}',
        headers={**bearer_admin(), "content-type": "application/json"},
    )
    assert_problem(response, 413)
    after = (await gate.client.get("/operators/acme/policy", headers=bearer_admin())).json()
    assert after == before


def bearer_admin() -> dict[str, str]:
    from tests.conftest import ADMIN

    return ADMIN


async def test_unknown_route_and_method_are_problem_json(gate: Gate) -> None:
    assert_problem(await gate.client.get("/nope"), 404)
    assert_problem(await gate.client.delete("/healthz"), 405)
