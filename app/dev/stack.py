"""`chargegate dev`: chargegate with the reCAPTCHA Enterprise emulator mounted at /_google and
the demo portal at /demo, one process on 127.0.0.1, embedded SQLite under var/.

The first start creates an operator `demo` the way people would: a platform_admin key
straight in the database (like `chargegate create-admin-key`), everything else over the
public API: the operator, an operator_admin and a backend key, the emulator's
service-account key file through PUT /credentials, and an enabled policy. Later starts
reuse var/ and make the (in-memory) emulator know the same project, key and account again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Awaitable, Callable, Mapping

import httpx
import uvicorn
import uvloop
from fastapi import FastAPI

from app.cli import migrate
from app.dev import portal
from app.dev.files import DevFiles, DevKeys, DevStateError, EmulatorSetup
from app.logging import configure_logging
from app.main import create_app
from app.recaptcha.emulator import EmulatorState, create_emulator_app
from app.recaptcha.emulator.server import DroppableHttpProtocol
from app.settings import Settings

# Never another address: the stack serves a fake Google and its keys are printed in clear.
HOST = "127.0.0.1"
EMULATOR_PREFIX = "/_google"
OPERATOR_ID = "demo"
PROJECT_ID = "chargegate-demo"
# Where a person opens the demo page: the token's hostname must be one of these.
PAGE_HOSTNAMES = ("localhost", "127.0.0.1")


def dev_settings(port: int) -> Settings:
    """The environment's settings, but always embedded SQLite with the key ring under var/
    and Google replaced by the mounted emulator."""
    emulator_url = f"http://{HOST}:{port}{EMULATOR_PREFIX}"
    return Settings(
        database_url=None,
        encryption_keys=None,
        recaptcha_base_url=emulator_url,
        recaptcha_script_url=f"{emulator_url}/recaptcha/enterprise.js",
    )


def build_app(settings: Settings, emulator: EmulatorState, demo: portal.DemoBackend) -> FastAPI:
    app = create_app(settings)
    app.mount(EMULATOR_PREFIX, create_emulator_app(emulator))
    app.include_router(portal.router)
    app.state.demo_backend = demo
    return app


def run(port: int) -> None:
    """Serve the dev stack on 127.0.0.1:`port` until interrupted."""
    settings = dev_settings(port)
    configure_logging(settings.log_level)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        # Bound first, so a port in use fails before anything is created under var/.
        try:
            sock.bind((HOST, port))
        except (OSError, OverflowError) as exc:
            raise SystemExit(f"chargegate dev: cannot listen on {HOST}:{port}: {exc}") from None
        migrate(settings)
        uvloop.run(_serve(settings, sock))
    except DevStateError as exc:
        raise SystemExit(f"chargegate dev: {exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


Bootstrap = Callable[[httpx.AsyncClient], Awaitable[DevKeys]]


async def _serve(settings: Settings, sock: socket.socket) -> None:
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    emulator = EmulatorState(base_url=settings.recaptcha_base_url)
    files = DevFiles(settings.var_dir)
    setup, bootstrap = await _prepare(settings, emulator, files)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        demo = portal.DemoBackend(client, OPERATOR_ID)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(settings, emulator, demo),
                http=DroppableHttpProtocol,  # lets the emulator's "drop" fault work here too
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            )
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                await serving
                raise DevStateError("the server did not start (see the log above)")
            await asyncio.sleep(0.02)
        try:
            keys = await bootstrap(client)
            files.write_keys(keys, _shell_values(url, setup.site_key))
            await _verify(client, keys.operator)
        except Exception:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            raise
        demo.backend_key = keys.backend
        _print_ready(url, files)
        await serving


async def _prepare(
    settings: Settings, emulator: EmulatorState, files: DevFiles
) -> tuple[EmulatorSetup, Bootstrap]:
    """Set up the emulator from var/ (or afresh); what is left needs the running server."""
    keys = files.read_keys()
    setup = files.read_emulator()
    if keys is None:
        setup = EmulatorSetup.create(emulator, PROJECT_ID, PAGE_HOSTNAMES)
        admin_key = await _create_admin_key(settings)
        return setup, functools.partial(_first_start, admin_key=admin_key, setup=setup, files=files)
    if setup is None:
        raise DevStateError(
            f"{files.emulator_path} or {files.service_account_path} is missing: "
            "remove var/ to start afresh"
        )
    moved = setup.token_uri != emulator.token_uri  # started on another port than last time
    setup = setup.with_token_uri(emulator.token_uri)
    setup.register(emulator)
    return setup, functools.partial(
        _restart, keys=keys, moved_setup=setup if moved else None, files=files
    )


async def _create_admin_key(settings: Settings) -> str:
    from app.auth import repository
    from app.auth.keys import Role
    from app.db import create_engine, utcnow

    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            _, raw_key = await repository.insert_key(
                conn, "dev platform admin", Role.PLATFORM_ADMIN, None, None, utcnow()
            )
    finally:
        await engine.dispose()
    return raw_key


async def _first_start(
    client: httpx.AsyncClient, *, admin_key: str, setup: EmulatorSetup, files: DevFiles
) -> DevKeys:
    operator = {"operator_id": OPERATOR_ID, "name": "Demo Charging (chargegate dev)"}
    response = await client.post("/operators", json=operator, headers=_bearer(admin_key))
    if response.status_code == 409:
        raise DevStateError(
            f"operator {OPERATOR_ID} exists in the database but {files.keys_path} does not: "
            "remove var/ to start afresh"
        )
    _expect(response, 201)
    operator_key = await _create_key(
        client, admin_key, "dev demo operator portal", "operator_admin"
    )
    backend_key = await _create_key(client, admin_key, "dev demo charging backend", "backend")
    await _upload_credentials(client, operator_key, setup.service_account)
    policy = {
        "enabled": True,
        "site_key": setup.site_key,
        "gcp_project_id": setup.project_id,
        "allowed_hostnames": list(PAGE_HOSTNAMES),
    }
    response = await client.patch(
        f"/operators/{OPERATOR_ID}/policy", json=policy, headers=_bearer(operator_key)
    )
    _expect(response, 200)
    files.write_emulator(setup)
    keys = DevKeys(admin_key, operator_key, backend_key)
    _print_keys(keys, files)
    return keys


async def _restart(
    client: httpx.AsyncClient,
    *,
    keys: DevKeys,
    moved_setup: EmulatorSetup | None,
    files: DevFiles,
) -> DevKeys:
    """Carry on from var/; `moved_setup` is given when the emulator's token_uri moved."""
    for key in (keys.admin, keys.operator):
        response = await client.get(f"/operators/{OPERATOR_ID}/policy", headers=_bearer(key))
        if response.status_code in (401, 403, 404):
            raise DevStateError(
                f"the database no longer accepts the keys in {files.keys_path} (revoked, or "
                "the database was replaced): remove var/ to start afresh"
            )
        _expect(response, 200)
    if moved_setup is not None:
        # The stored key file names the old port's token endpoint: upload it anew.
        await _upload_credentials(client, keys.operator, moved_setup.service_account)
        files.write_emulator(moved_setup)
    return keys


async def _create_key(client: httpx.AsyncClient, admin_key: str, name: str, role: str) -> str:
    body = {"name": name, "role": role, "operator_ids": [OPERATOR_ID]}
    response = await client.post("/api-keys", json=body, headers=_bearer(admin_key))
    _expect(response, 201)
    key: str = response.json()["key"]
    return key


async def _upload_credentials(
    client: httpx.AsyncClient, operator_key: str, key_file: Mapping[str, str]
) -> None:
    response = await client.put(
        f"/operators/{OPERATOR_ID}/credentials", json=dict(key_file), headers=_bearer(operator_key)
    )
    _expect(response, 200)


async def _verify(client: httpx.AsyncClient, operator_key: str) -> None:
    """Ask the gate to check the demo set-up against the emulator (token, site key)."""
    response = await client.post(
        f"/operators/{OPERATOR_ID}/credentials/verify", headers=_bearer(operator_key)
    )
    _expect(response, 200)
    failed = [check["name"] for check in response.json()["checks"] if not check["ok"]]
    if failed:
        print(f"chargegate dev: warning: the demo set-up fails {', '.join(failed)}", flush=True)


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        try:
            # Problem details never carry a secret, so the detail can be shown.
            detail = response.json().get("detail", "")
        except ValueError:
            detail = ""
        raise DevStateError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {detail}"
        )


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _shell_values(url: str, site_key: str) -> dict[str, str]:
    emulator = url + EMULATOR_PREFIX
    return {
        "CHARGEGATE_URL": url,
        "CHARGEGATE_OPERATOR_ID": OPERATOR_ID,
        "CHARGEGATE_SITE_KEY": site_key,
        "CHARGEGATE_GCP_PROJECT": PROJECT_ID,
        "CHARGEGATE_EMULATOR_URL": emulator,
        "CHARGEGATE_EMULATOR_TOKENS_URL": f"{emulator}/emulator/tokens",
    }


def _print_keys(keys: DevKeys, files: DevFiles) -> None:
    # The one place a key is shown: made just now, for the developer at this terminal.
    print("chargegate dev: first start; these API keys are shown once:", flush=True)
    for name, value, role in (
        ("CHARGEGATE_ADMIN_KEY", keys.admin, "platform_admin"),
        ("CHARGEGATE_OPERATOR_KEY", keys.operator, f"operator_admin of {OPERATOR_ID}"),
        ("CHARGEGATE_BACKEND_KEY", keys.backend, f"backend of {OPERATOR_ID}"),
    ):
        print(f"  {name}={value}  ({role})", flush=True)
    print(f"They are kept in {files.keys_path} (mode 0600).", flush=True)


def _print_ready(url: str, files: DevFiles) -> None:
    print(
        f"chargegate dev: ready on {url} (state in {files.keys_path.parent}/)\n"
        f"  demo driver portal  {url}/demo\n"
        f"  API docs            {url}/docs\n"
        f"  emulated Google     {url}{EMULATOR_PREFIX}\n"
        f"  keys for curl       source {files.keys_path}",
        flush=True,
    )
