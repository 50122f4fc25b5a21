"""Annotation delivery survives a restart: the service is stopped (SIGTERM) while Google keeps
refusing the annotation, a new process on the same database delivers it once Google recovers.

No other server may run on the database meanwhile (it would deliver the annotation itself),
so this module starts its own servers only."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.recaptcha.emulator import EmulatorServer, FaultKind, FaultTarget
from tests.conftest import ADMIN
from tests.e2e.conftest import (
    Launcher,
    ServerProcess,
    client_for,
    create_tenant,
    metric,
    wait_for,
)

FAILING = 1000  # "until cleared", but counted, so the attempts that reached Google are known
HANGING_MS = 6000  # an annotate call that is still in flight when the service stops


def stopped_gracefully(server: ServerProcess) -> bool:
    """SIGTERM ended the process after its lifespan shut down (uvicorn re-raises the signal
    once it is done, so the exit status is the signal's)."""
    code = server.stop()
    assert code in (0, -signal.SIGTERM), (code, server.log_tail())
    assert "Application shutdown complete." in server.log(), server.log_tail()
    return True


async def outbox_rows(database: str) -> list[dict[str, Any]]:
    """The annotation outbox, read straight from the database (to observe, never to change)."""
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT * FROM annotation_outbox ORDER BY id")
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def annotate_attempts(emulator: EmulatorServer, project_id: str) -> int:
    plans = [p for p in list(emulator.state.faults) if p.project_id == project_id]
    return sum(FAILING - (p.remaining or 0) for p in plans)


async def test_delivery_in_flight_at_sigterm_is_handed_back(
    launch: Launcher, emulator: EmulatorServer, database: str
) -> None:
    # The annotate call hangs at Google when SIGTERM comes: the stopping process must give
    # its lease back, so the next one delivers at once rather than after the lease expires.
    first = launch.start()
    async with client_for(first.url) as http:
        tenant = await create_tenant(http, emulator)
        decision: dict[str, Any] = await tenant.decide(tenant.token())
        tenant.fault(FaultKind.DELAY, delay_ms=HANGING_MS, target=FaultTarget.ANNOTATE)
        response = await http.post(
            f"/sessions/{decision['decision_id']}/outcome",
            json={"outcome": "legitimate", "reasons": ["passed_two_factor"]},
            headers=tenant.backend,
        )
        assert response.status_code == 202
        await wait_for(lambda: tenant.faults_left() == 0, 5.0, interval=0.01)  # in flight

    assert stopped_gracefully(first)
    # Handed back untried (not timed out and rescheduled, which would also count an attempt).
    [row] = await outbox_rows(database)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, None)
    assert row["next_attempt_at"] <= datetime.now(UTC)
    second = launch.start()
    async with client_for(second.url) as http:
        # Well before the hanging call completes at the emulator (and the 60 s lease).
        await wait_for(
            lambda: _at_least(http, "chargegate_annotations_total", 1, result="delivered"),
            HANGING_MS / 1000 - 2.5,
        )
        assert tenant.annotations()[0] == (
            decision["assessment_name"],
            "LEGITIMATE",
            ("PASSED_TWO_FACTOR",),
        )


async def test_delivery_survives_a_restart(
    launch: Launcher, emulator: EmulatorServer, database: str
) -> None:
    first = launch.start()
    async with client_for(first.url) as http:
        tenant = await create_tenant(http, emulator)
        decision: dict[str, Any] = await tenant.decide(tenant.token())
        tenant.fault(FaultKind.STATUS, status=503, count=FAILING, target=FaultTarget.ANNOTATE)

        response = await http.post(
            f"/sessions/{decision['decision_id']}/outcome",
            json={"outcome": "fraudulent", "reasons": ["chargeback"]},
            headers=tenant.backend,
        )
        assert response.status_code == 202, response.text
        # Google refused it at least once, and the gate scheduled a retry.
        await wait_for(lambda: annotate_attempts(emulator, tenant.project_id) >= 1, 5.0)
        await wait_for(
            lambda: _at_least(http, "chargegate_annotations_total", 1, result="retry"), 5.0
        )

    assert stopped_gracefully(first)
    attempts = annotate_attempts(emulator, tenant.project_id)
    assert tenant.annotations() == []
    [row] = await outbox_rows(database)
    assert (row["status"], row["last_error"]) == ("pending", "server_error")
    # One more attempt may have been cut short by the stop (and handed back uncounted).
    failed_attempts = row["attempts"]
    assert 1 <= failed_attempts <= attempts

    second = launch.start()
    async with client_for(second.url) as http:
        tenant.http = http
        assert await metric(http, "chargegate_annotations_total", result="delivered") == 0
        # (The new process may well have been refused once more before this.)
        plans = [p for p in list(emulator.state.faults) if p.project_id == tenant.project_id]
        tenant.clear_faults()
        refused = sum(FAILING - (p.remaining or 0) for p in plans)

        await wait_for(lambda: len(tenant.annotations()) == 1, 5.0)

        assert tenant.annotations() == [
            (decision["assessment_name"], "FRAUDULENT", ("CHARGEBACK",))
        ]
        # Delivered by the new process, whose counters started at zero.
        await wait_for(
            lambda: _at_least(http, "chargegate_annotations_total", 1, result="delivered"), 2.0
        )
        assert await metric(http, "chargegate_annotations_total", result="delivered") == 1
        listed = await http.get(f"/operators/{tenant.operator_id}/decisions", headers=ADMIN)
        [item] = listed.json()["items"]
        assert item["outcome"] == "fraudulent"
    [row] = await outbox_rows(database)
    assert (row["status"], row["last_error"]) == ("delivered", None)
    assert failed_attempts + 1 <= row["attempts"] <= refused + 1


async def test_sigterm_is_a_clean_exit(
    launch: Launcher, emulator: EmulatorServer, database: str
) -> None:
    server = launch.start()
    async with client_for(server.url) as http:
        tenant = await create_tenant(http, emulator)
        assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"

    assert stopped_gracefully(server)
    lines = server.log().splitlines()
    assert lines
    # Every log line is JSON, to the last one, and none has a traceback.
    for line in lines:
        entry = json.loads(line)
        assert entry["level"] in ("debug", "info", "warning"), line
    assert "Traceback" not in server.log()


async def _at_least(http: Any, name: str, value: float, **labels: str) -> bool:
    return await metric(http, name, **labels) >= value
