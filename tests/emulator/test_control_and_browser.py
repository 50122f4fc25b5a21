"""The emulator's own surface: set-up over HTTP, the browser script (run in node when it is
installed), a dropped connection seen from a raw socket, in-process mounting and run()."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer, EmulatorState, FaultKind, create_emulator_app
from app.settings import GoogleAuthMode
from tests.emulator.conftest import (
    ACTION,
    HOSTNAME,
    PROJECT,
    Emulated,
    api_credential,
    gate_client,
    sa_credential,
)

NODE = shutil.which("node")


async def test_set_up_over_http_then_the_gate_works(
    emulator: EmulatorServer, http: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as control:
        project = await control.post("/emulator/projects", json={"project_id": "web-project"})
        key = await control.post(
            "/emulator/projects/web-project/keys",
            json={"integration_type": "SCORE", "allowed_domains": ["acme.example"]},
        )
        account = await control.post("/emulator/projects/web-project/service-accounts", json={})
        api_key = await control.post("/emulator/projects/web-project/api-keys")
        site_key = key.json()["site_key"]
        minted = await control.post(
            "/emulator/tokens",
            json={"site_key": site_key, "action": ACTION, "hostname": HOSTNAME, "score": 0.7},
        )
    assert [a.status_code for a in (project, key, account, api_key, minted)] == [201] * 5
    assert project.json()["project_number"].isdigit()
    key_file = account.json()
    assert key_file["type"] == "service_account"
    assert key_file["token_uri"] == f"{emulator.url}/token"
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert key_file["client_email"].endswith("@web-project.iam.gserviceaccount.com")

    emulated = Emulated(emulator, site_key)
    client = gate_client(http, emulated, GoogleAuthMode.TOKEN_EXCHANGE)
    event = emulated.event(minted.json()["token"])
    assessment = await client.create_assessment(sa_credential(key_file), "web-project", event)
    assert assessment.valid
    assert round(assessment.score or 0, 1) == 0.7
    key_answer = await client.get_key(
        api_credential(api_key.json()["api_key"]), "web-project", site_key
    )
    assert key_answer["webSettings"]["integrationType"] == "SCORE"


async def test_control_errors(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as control:
        unknown_key = await control.post("/emulator/tokens", json={"site_key": "6LcNope"})
        bad_score = await control.post(
            "/emulator/tokens", json={"site_key": emulated.site_key, "score": 2}
        )
        unknown_project = await control.post("/emulator/projects/nope/api-keys")
        bad_fault = await control.post(
            "/emulator/faults", json={"project_id": PROJECT, "kind": "status", "status": 418}
        )
        bad_kind = await control.post(
            "/emulator/faults", json={"project_id": PROJECT, "kind": "explode"}
        )
    assert [
        a.status_code for a in (unknown_key, bad_score, unknown_project, bad_fault, bad_kind)
    ] == [
        404,
        400,
        404,
        400,
        400,
    ]
    assert unknown_key.json()["error"]["message"] == "unknown site key"


async def test_faults_listed_and_cleared_over_http(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as control:
        await control.post(
            "/emulator/faults",
            json={"project_id": PROJECT, "kind": "delay", "delay_ms": 50, "count": None},
        )
        listed = (await control.get("/emulator/faults")).json()
        cleared = await control.delete("/emulator/faults")
        stats = (await control.get("/emulator/stats")).json()
    assert listed == [
        {
            "project_id": PROJECT,
            "kind": "delay",
            "remaining": None,
            "delay_ms": 50,
            "status": 503,
            "target": "api",
        }
    ]
    assert cleared.status_code == 204
    assert stats["faults"] == []


async def test_token_minting_allows_any_origin(emulated: Emulated) -> None:
    origin = {"Origin": "http://localhost:5173"}
    async with httpx.AsyncClient(base_url=emulated.url) as page:
        preflight = await page.options(
            "/emulator/tokens",
            headers={**origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        )  # fmt: skip
        minted = await page.post(
            "/emulator/tokens",
            json={"site_key": emulated.site_key, "action": ACTION, "hostname": "localhost"},
            headers=origin,
        )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
    assert minted.status_code == 201
    assert minted.headers["access-control-allow-origin"] == "*"
    assert minted.json()["token"].startswith("03A")


async def test_enterprise_js_is_served(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as browser:
        script = await browser.get(
            "/recaptcha/enterprise.js",
            params={"render": emulated.site_key, "onload": "</script><b>"},
        )
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert f'"{emulated.url}/emulator/tokens"' in script.text
    assert f'"{emulated.site_key}"' in script.text
    assert "</script>" not in script.text  # parameters are embedded as escaped literals
    assert "grecaptcha.enterprise" in script.text


# The page's side, as a browser would run it: node provides fetch; the DOM bits are stubs.
_PAGE = """
globalThis.window = globalThis;
globalThis.location = {hostname: %(hostname)s};
globalThis.document = {currentScript: {dataset: {score: "0.3"}}};
window.CHARGEGATE_EMULATOR_SCORE = %(score)s;
window.onRecaptchaLoaded = () => { window.loadedCalled = true; };
eval(%(script)s);
grecaptcha.enterprise.ready(async () => {
  const token = await grecaptcha.enterprise.execute(%(site_key)s, {action: %(action)s});
  let refused = "";
  try { await grecaptcha.enterprise.execute("6LcOtherKey", {action: "x"}); }
  catch (error) { refused = error.message; }
  console.log(JSON.stringify({token, refused, loaded: window.loadedCalled === true}));
});
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize(("chosen", "expected"), [("undefined", 0.3), ("0.1", 0.1)])
async def test_enterprise_js_mints_a_token_the_api_accepts(
    emulated: Emulated,
    key_file: dict[str, str],
    http: httpx.AsyncClient,
    chosen: str,
    expected: float,
) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as browser:
        script = await browser.get(
            "/recaptcha/enterprise.js",
            params={"render": emulated.site_key, "onload": "onRecaptchaLoaded"},
        )
    page = _PAGE % {
        "hostname": json.dumps(HOSTNAME),
        "score": chosen,
        "script": json.dumps(script.text),
        "site_key": json.dumps(emulated.site_key),
        "action": json.dumps(ACTION),
    }
    assert NODE is not None
    run = await asyncio.to_thread(
        subprocess.run, [NODE, "-e", page], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["loaded"] is True
    assert result["refused"] == "Invalid site key or not loaded in api.js: 6LcOtherKey"

    assessment = await gate_client(http, emulated).create_assessment(
        sa_credential(key_file), PROJECT, emulated.event(result["token"])
    )
    assert assessment.valid
    assert (assessment.hostname, assessment.action) == (HOSTNAME, ACTION)
    assert round(assessment.score or 0, 1) == expected


async def test_a_dropped_connection_sends_not_one_byte(emulated: Emulated) -> None:
    """Seen from a raw socket: the request goes out, the connection ends, no HTTP answer."""
    api_key = emulated.state.create_api_key(PROJECT)
    emulated.state.add_fault(PROJECT, FaultKind.DROP)
    body = json.dumps({"event": emulated.event(emulated.token())}).encode()
    request = (
        f"POST /v1/projects/{PROJECT}/assessments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-goog-api-key: {api_key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body

    reader, writer = await asyncio.open_connection("127.0.0.1", emulated.server.port)
    writer.write(request)
    await writer.drain()
    try:
        received = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:
        received = b""
    writer.close()

    assert received == b""
    assert emulated.state.faults == []
    assert len(emulated.state.assessments) == 1  # Google did the work; the answer was lost


async def test_missing_credentials_and_unknown_paths(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as caller:
        anonymous = await caller.post(
            f"/v1/projects/{PROJECT}/assessments", json={"event": emulated.event("t")}
        )
        unknown = await caller.get("/v2/whatever")
        wrong_verb = await caller.get(f"/v1/projects/{PROJECT}/assessments")
    assert anonymous.status_code == 403
    assert anonymous.json()["error"]["status"] == "PERMISSION_DENIED"
    assert anonymous.json()["error"]["message"].startswith("Method doesn't allow unregistered")
    assert (unknown.status_code, wrong_verb.status_code) == (404, 404)
    assert unknown.json()["error"]["status"] == "NOT_FOUND"


async def test_token_endpoint_speaks_oauth(emulated: Emulated) -> None:
    async with httpx.AsyncClient(base_url=emulated.url) as caller:
        wrong_grant = await caller.post("/token", data={"grant_type": "password"})
        no_assertion = await caller.post(
            "/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
        )
        garbage = await caller.post(
            "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": "x.y.z",
            },
        )
    assert wrong_grant.json() == {
        "error": "unsupported_grant_type",
        "error_description": "Invalid grant_type: password",
    }
    assert no_assertion.json()["error"] == "invalid_request"
    assert garbage.json()["error"] == "invalid_grant"
    assert {a.status_code for a in (wrong_grant, no_assertion, garbage)} == {400}
    assert emulated.state.token_exchange_failures == 3


async def test_mounted_in_process() -> None:
    """Without a socket, a drop fault surfaces as ConnectionAbortedError."""
    state = EmulatorState()
    state.add_project(PROJECT)
    site_key = state.add_key(PROJECT)
    api_key = state.create_api_key(PROJECT)
    transport = httpx.ASGITransport(app=create_emulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test") as client:
        event = {"token": state.issue_token(site_key, ACTION, HOSTNAME), "siteKey": site_key}
        answer = await client.post(
            f"/v1/projects/{PROJECT}/assessments",
            json={"event": event},
            headers={"x-goog-api-key": api_key},
        )
        state.add_fault(PROJECT, FaultKind.DROP)
        with pytest.raises(ConnectionAbortedError):
            await client.post(
                f"/v1/projects/{PROJECT}/assessments",
                json={"event": event},
                headers={"x-goog-api-key": api_key},
            )
    assert answer.json()["tokenProperties"]["valid"] is True


def test_unknown_token_is_malformed_even_with_our_prefix() -> None:
    state = EmulatorState()
    state.add_project(PROJECT)
    site_key = state.add_key(PROJECT)
    token = state.issue_token(site_key, ACTION, HOSTNAME)
    assert state.read_token(token) is not None
    assert state.read_token(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    assert EmulatorState().read_token(token) is None  # another emulator's secret


def test_run_serves_until_stopped() -> None:
    """run() as `chargegate emulator` would call it, in a child process of this test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = f"from app.recaptcha.emulator import run; run('127.0.0.1', {port})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/emulator/projects", json={"project_id": "cli"}
                )
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        account = httpx.post(f"http://127.0.0.1:{port}/emulator/projects/cli/service-accounts")
    finally:
        process.terminate()
        process.wait(10)
    assert answer.status_code == 201
    assert account.json()["token_uri"] == f"http://127.0.0.1:{port}/token"
