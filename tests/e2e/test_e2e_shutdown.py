"""SIGTERM while authorize calls are in flight: every one of them is answered, and the process
is gone within CHARGEGATE_SHUTDOWN_GRACE_SECONDS. (bench/sigterm.py does the same under
continuous load.)"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from app.recaptcha.emulator import EmulatorServer, FaultKind
from tests.e2e.conftest import Launcher, client_for, create_tenant, wait_for

GRACE_SECONDS = 5.0
IN_FLIGHT = 40
GOOGLE_DELAY_MS = 800  # each call is still waiting on Google when the signal comes


async def test_sigterm_finishes_every_call_in_flight_and_exits_within_the_grace(
    launch: Launcher, emulator: EmulatorServer, database: str
) -> None:
    server = launch.start(CHARGEGATE_SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS))
    assert server.process is not None
    async with client_for(server.url) as http:
        tenant = await create_tenant(http, emulator)
        assert (await tenant.decide(tenant.token()))["reason"] == "score_ok"
        tenant.fault(FaultKind.DELAY, delay_ms=GOOGLE_DELAY_MS, count=IN_FLIGHT)
        calls = [asyncio.create_task(tenant.authorize(tenant.token())) for _ in range(IN_FLIGHT)]
        # Signal once every call has reached Google (the emulator has counted them all).
        await wait_for(lambda: tenant.faults_left() == 0, 5.0, interval=0.01)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*calls, return_exceptions=True)

    failed = [a for a in answers if not isinstance(a, httpx.Response) or a.status_code != 200]
    assert failed == [], failed
    assert all(a.json()["reason"] == "score_ok" for a in answers if isinstance(a, httpx.Response))
    code = await asyncio.to_thread(server.process.wait, GRACE_SECONDS + 2)
    exited_after = time.monotonic() - signalled
    assert code in (0, -signal.SIGTERM), server.log_tail()
    assert exited_after <= GRACE_SECONDS, exited_after
    assert "Application shutdown complete." in server.log()
