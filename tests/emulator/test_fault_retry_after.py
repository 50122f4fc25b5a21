"""The emulator's 429/5xx faults can carry a Retry-After header, as Google's answers may:
set over the control API or in Python, seen by the gate's client as `retry_after_seconds`."""

from __future__ import annotations

import httpx
import pytest

from app.recaptcha.emulator import FaultKind
from app.recaptcha.types import UpstreamError, UpstreamErrorKind
from tests.emulator.conftest import PROJECT, Emulated, gate_client, sa_credential


async def test_retry_after_over_the_control_api(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as control:
        added = await control.post(
            "/emulator/faults",
            json={"project_id": PROJECT, "kind": "status", "status": 429, "retry_after": 7},
        )
        listed = (await control.get("/emulator/faults")).json()
        wrong_type = await control.post(
            "/emulator/faults",
            json={"project_id": PROJECT, "kind": "status", "status": 429, "retry_after": "7"},
        )
        negative = await control.post(
            "/emulator/faults",
            json={"project_id": PROJECT, "kind": "status", "status": 503, "retry_after": -1},
        )
        not_a_status = await control.post(
            "/emulator/faults",
            json={"project_id": PROJECT, "kind": "delay", "delay_ms": 5, "retry_after": 1},
        )
        answer = await control.post(
            f"/v1/projects/{PROJECT}/assessments",
            json={"event": emulated.event(emulated.token())},
            headers={"x-goog-api-key": emulated.state.create_api_key(PROJECT)},
        )
    assert added.status_code == 201
    assert added.json()["retry_after"] == 7
    assert [plan.get("retry_after") for plan in listed] == [7]
    assert [r.status_code for r in (wrong_type, negative, not_a_status)] == [400, 400, 400]
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert emulated.state.faults == []


async def test_without_retry_after_no_header(emulated: Emulated) -> None:
    emulated.state.add_fault(PROJECT, FaultKind.STATUS, status=503)
    async with httpx.AsyncClient(base_url=emulated.url) as caller:
        answer = await caller.post(
            f"/v1/projects/{PROJECT}/assessments",
            json={"event": emulated.event(emulated.token())},
            headers={"x-goog-api-key": emulated.state.create_api_key(PROJECT)},
        )
    assert answer.status_code == 503
    assert "retry-after" not in answer.headers


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limited"), (503, "server_error")])
async def test_the_gate_client_reads_it(
    emulated: Emulated, key_file: dict[str, str], http: httpx.AsyncClient, status: int, kind: str
) -> None:
    client = gate_client(http, emulated)
    emulated.state.add_fault(PROJECT, FaultKind.STATUS, status=status, retry_after=30)

    with pytest.raises(UpstreamError) as raised:
        await client.create_assessment(
            sa_credential(key_file), PROJECT, emulated.event(emulated.token())
        )

    failure = raised.value.failure
    assert (failure.kind, failure.status, failure.retry_after_seconds) == (
        UpstreamErrorKind(kind),
        status,
        30.0,
    )
    # One failure, below the breaker's threshold, yet Google said when to come back.
    assert client.breaker.is_open(PROJECT)
