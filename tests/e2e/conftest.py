"""End-to-end fixtures: `chargegate serve` as a real subprocess (uvicorn, one worker, a free
port) on the test Postgres database, talking to the reCAPTCHA Enterprise emulator on its own
real port. Tests reach the service only over HTTP.

Isolation: the emulator lives for the whole run and each test gets a Google project of its
own (faults, assessments and annotations are per project); a server lives for a module (or
a test) and each test gets an operator id, site key and credentials of its own, so neither
the server's short-lived caches nor the emulator carry anything from one test to the next.
The `database` fixture empties the tables after each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer, EmulatorState, FaultKind
from tests.conftest import ADMIN, BOOTSTRAP_KEY, ENCRYPTION_KEYS, bearer

ROOT = Path(__file__).resolve().parents[2]
ACTION = "start_session"
HOSTNAME = "portal.acme.example"
DEADLINE = 1.0  # CHARGEGATE_UPSTREAM_TIMEOUT_SECONDS of every server here
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# ---------------------------------------------------------------------------
# Every response of the run must carry an X-Request-ID: checked as it arrives.


@dataclass
class Seen:
    """Every response the e2e clients received (method, path, status, request id)."""

    responses: list[tuple[str, str, int, str | None]] = field(default_factory=list)


SEEN = Seen()


def _record(response: httpx.Response) -> None:
    request_id = response.headers.get("x-request-id")
    SEEN.responses.append(
        (response.request.method, response.request.url.path, response.status_code, request_id)
    )
    where = f"{response.request.method} {response.request.url.path} → {response.status_code}"
    assert request_id is not None, f"{where} without an X-Request-ID"
    assert REQUEST_ID.match(request_id), f"{where} with an invalid X-Request-ID {request_id!r}"


async def _record_async(response: httpx.Response) -> None:
    _record(response)


def client_for(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client of the service that checks every response for an X-Request-ID."""
    return httpx.AsyncClient(
        base_url=base_url, timeout=15.0, event_hooks={"response": [_record_async]}, **kwargs
    )


def sync_client_for(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=15.0, event_hooks={"response": [_record]})


# ---------------------------------------------------------------------------
# The emulator: one real socket for the run.


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


# ---------------------------------------------------------------------------
# The service as a subprocess.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One `chargegate serve` process; its stderr (JSON log lines) goes to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_healthy():
                return
        raise RuntimeError(f"chargegate did not start:\n{self.log_tail()}")

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        with sync_client_for(self.url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.get("/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        return process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def server_env(database_url: str, emulator_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGATE_")}
    env.update(
        CHARGEGATE_DATABASE_URL=database_url,
        CHARGEGATE_VAR_DIR=str(var_dir),
        CHARGEGATE_ENCRYPTION_KEYS=ENCRYPTION_KEYS,
        CHARGEGATE_BOOTSTRAP_ADMIN_KEY=BOOTSTRAP_KEY,
        CHARGEGATE_RECAPTCHA_BASE_URL=emulator_url,
        CHARGEGATE_UPSTREAM_TIMEOUT_SECONDS=str(DEADLINE),
        CHARGEGATE_OUTBOX_POLL_SECONDS="0.2",
        CHARGEGATE_SHUTDOWN_GRACE_SECONDS="5",
        CHARGEGATE_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


class Launcher:
    """Starts servers with the run's settings (plus overrides) and stops them all at the end."""

    def __init__(self, database_url: str, emulator: EmulatorServer, workdir: Path) -> None:
        self.database_url = database_url
        self.emulator = emulator
        self.workdir = workdir
        self.servers: list[ServerProcess] = []

    def start(self, **extra_env: str) -> ServerProcess:
        index = len(self.servers)
        env = server_env(self.database_url, self.emulator.url, self.workdir / "var", **extra_env)
        server = ServerProcess(env, self.workdir / f"server-{index}.log")
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@contextlib.contextmanager
def launcher(
    database_url: str, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    result = Launcher(database_url, emulator, tmp_path_factory.mktemp("chargegate"))
    try:
        yield result
    finally:
        result.stop_all()


@pytest.fixture
def launch(
    database_url: str, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    """Servers of one test (started on demand, stopped after the test)."""
    with launcher(database_url, emulator, tmp_path_factory) as result:
        yield result


@pytest.fixture(scope="module")
def server(
    database_url: str, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The module's server: self-signed JWT auth, 1 s upstream deadline, 0.2 s outbox poll."""
    with launcher(database_url, emulator, tmp_path_factory) as result:
        yield result.start()


# ---------------------------------------------------------------------------
# A tenant: one Google project at the emulator, one operator at the gate.


@dataclass
class Tenant:
    """An operator wired to a fresh emulator project: site key, credentials, backend key."""

    http: httpx.AsyncClient
    emulator: EmulatorServer
    operator_id: str
    project_id: str
    site_key: str
    backend: dict[str, str]
    credentials: dict[str, Any]

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    def token(self, site_key: str | None = None, **overrides: Any) -> str:
        args: dict[str, Any] = {"action": ACTION, "hostname": HOSTNAME, "score": 0.9}
        args.update(overrides)
        return self.state.issue_token(site_key or self.site_key, **args)

    async def authorize(
        self, token: str | None = None, headers: dict[str, str] | None = None, **body: Any
    ) -> httpx.Response:
        payload: dict[str, Any] = {"operator_id": self.operator_id, **body}
        if token is not None:
            payload["token"] = token
        return await self.http.post(
            "/sessions/authorize", json=payload, headers={**self.backend, **(headers or {})}
        )

    async def decide(self, token: str | None = None, **body: Any) -> dict[str, Any]:
        """The 200 answer of an authorize call."""
        response = await self.authorize(token, **body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        answer: dict[str, Any] = response.json()
        return answer

    async def set_policy(self, **fields: Any) -> dict[str, Any]:
        response = await self.http.patch(
            f"/operators/{self.operator_id}/policy", json=fields, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        policy: dict[str, Any] = response.json()
        return policy

    async def put_credentials(self, credentials: dict[str, Any]) -> None:
        response = await self.http.put(
            f"/operators/{self.operator_id}/credentials", json=credentials, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        self.credentials = credentials

    def fault(self, kind: FaultKind | str, **kwargs: Any) -> None:
        self.state.add_fault(self.project_id, kind, **kwargs)

    def clear_faults(self) -> None:
        # Every other test's project is done with (tests run one at a time).
        self.state.clear_faults()

    def faults_left(self) -> int:
        return sum(1 for plan in list(self.state.faults) if plan.project_id == self.project_id)

    # What Google saw of this project.

    @property
    def _numbers(self) -> set[str]:
        return {self.project_id, self.state.project(self.project_id).number}

    def assessment_requests(self) -> list[dict[str, Any]]:
        """Bodies of the assessments.create calls that reached the handler."""
        paths = {f"/v1/projects/{p}/assessments" for p in self._numbers}
        return [r.body for r in list(self.state.requests) if r.path in paths]

    def assessments(self) -> list[str]:
        """Names of the assessments Google made for this project."""
        return [
            r.name for r in list(self.state.assessments.values()) if r.project_id == self.project_id
        ]

    def annotations(self) -> list[tuple[str, str, tuple[str, ...]]]:
        names = set(self.assessments())
        return [
            (a.assessment_name, a.annotation, a.reasons)
            for a in list(self.state.annotations)
            if a.assessment_name in names
        ]

    def token_exchanges(self) -> int:
        """Access tokens minted at the emulator's /token for this tenant's service account."""
        email = self.credentials.get("client_email")
        return sum(1 for t in list(self.state.access_tokens.values()) if t.client_email == email)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def create_tenant(
    http: httpx.AsyncClient,
    emulator: EmulatorServer,
    *,
    credentials: str = "service_account",
    enabled: bool = True,
    **policy: Any,
) -> Tenant:
    """An operator with protection on (enforce, 0.5) against a fresh emulator project."""
    state = emulator.state
    project_id = unique("e2e-project")
    state.add_project(project_id)
    site_key = state.add_key(project_id)
    creds: dict[str, Any]
    if credentials == "api_key":
        creds = {"type": "api_key", "api_key": state.create_api_key(project_id)}
    else:
        creds = state.create_service_account(project_id)
    operator_id = unique("e2e-op")
    response = await http.post(
        "/operators", json={"operator_id": operator_id, "name": "E2E Charging"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    response = await http.post(
        "/api-keys",
        json={"name": "e2e backend", "role": "backend", "operator_ids": [operator_id]},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    tenant = Tenant(
        http=http,
        emulator=emulator,
        operator_id=operator_id,
        project_id=project_id,
        site_key=site_key,
        backend=bearer(response.json()["key"]),
        credentials=creds,
    )
    await tenant.put_credentials(creds)
    await tenant.set_policy(enabled=enabled, site_key=site_key, gcp_project_id=project_id, **policy)
    return tenant


@pytest.fixture
async def http(server: ServerProcess, database: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's server (the database is emptied after the test)."""
    async with client_for(server.url) as client:
        yield client


@pytest.fixture
async def tenant(http: httpx.AsyncClient, emulator: EmulatorServer) -> Tenant:
    return await create_tenant(http, emulator)


# ---------------------------------------------------------------------------
# Reading /metrics.

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in parse_metrics(response.text).items()
        if sample == name and wanted <= sample_labels
    )


async def wait_for(
    check: Callable[[], bool | Awaitable[bool]], within: float, interval: float = 0.05
) -> float:
    """Seconds until the (sync or async) `check` held; fails after `within` seconds."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"not seen within {within} s")
        await asyncio.sleep(interval)
