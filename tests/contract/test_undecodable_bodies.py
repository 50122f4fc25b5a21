"""Bodies that are not UTF-8 JSON text get the documented 422 problem+json on every route that
reads a body (FastAPI alone would answer a bare 400, which the OpenAPI document does not list;
the fuzzer found it)."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN, Gate

ROUTES = [
    ("POST", "/operators"),
    ("POST", "/api-keys"),
    ("PUT", "/operators/acme/policy"),
    ("PATCH", "/operators/acme/policy"),
    ("PUT", "/operators/acme/credentials"),
    ("POST", "/sessions/authorize"),
    ("POST", "/sessions/dec_unknown/outcome"),
]
BODIES = {
    "latin-1": b'{"name": "Caf\xe9"}',
    "UTF-16 with BOM": '{"name": "x"}'.encode("utf-16"),
    "leading NUL": b'\x00{"name": "x"}',
    "lone continuation byte": b"\x80",
}


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_json_body_that_is_not_utf8_is_422(gate: Gate, method: str, path: str) -> None:
    await gate.create_operator("acme")
    for what, body in BODIES.items():
        for content_type in ("application/json", "application/merge-patch+json", None):
            headers = dict(ADMIN)
            if content_type is not None:
                headers["content-type"] = content_type
            response = await gate.client.request(method, path, content=body, headers=headers)
            where = f"{what} as {content_type}: {response.text}"
            assert response.status_code == 422, where
            assert response.headers["content-type"] == "application/problem+json", where
            problem = response.json()
            assert problem["status"] == 422, where
            assert problem["errors"] == [
                {"loc": ["body"], "msg": "JSON text must be UTF-8", "type": "json_invalid"}
            ], where


async def test_utf8_json_still_reaches_the_route(gate: Gate) -> None:
    response = await gate.client.post(
        "/operators",
        content='{"operator_id": "cafe", "name": "Café ☕"}'.encode(),
        headers={**ADMIN, "content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "Café ☕"
