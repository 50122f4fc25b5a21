"""The emulator on a real socket (uvicorn on an ephemeral 127.0.0.1 port) and the gate's own
reCAPTCHA client pointed at it. Nothing here needs Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.credentials.store import api_key_fingerprint, service_account_fingerprint
from app.credentials.types import ApiKeyCredential, ServiceAccountKey
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.emulator import EmulatorServer, EmulatorState
from app.recaptcha.http import build_http_client
from app.recaptcha.tokens import AccessTokenProvider
from app.settings import GoogleAuthMode

PROJECT = "acme-project"
PROJECT_NUMBER = "123456789012"
HOSTNAME = "portal.acme.example"
ACTION = "start_session"


def sa_credential(key_file: dict[str, str]) -> ServiceAccountKey:
    """What the gate holds after an operator uploaded this key file."""
    return ServiceAccountKey(
        client_email=key_file["client_email"],
        private_key_id=key_file["private_key_id"],
        private_key=key_file["private_key"],
        token_uri=key_file["token_uri"],
        project_id=key_file["project_id"],
        fingerprint=service_account_fingerprint(key_file["private_key"]),
    )


def api_credential(api_key: str) -> ApiKeyCredential:
    return ApiKeyCredential(api_key, api_key_fingerprint(api_key))


@dataclass
class Emulated:
    """The running emulator with one project and one score key, as most tests need."""

    server: EmulatorServer
    site_key: str

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, site_key: str | None = None, **overrides: Any) -> str:
        args: dict[str, Any] = {"action": ACTION, "hostname": HOSTNAME, "score": 0.9, **overrides}
        return self.state.issue_token(site_key or self.site_key, **args)

    def event(self, token: str, **extra: str) -> dict[str, str]:
        """The event the gate's DecisionService sends."""
        return {"token": token, "siteKey": self.site_key, "expectedAction": ACTION, **extra}


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emulated(emulator: EmulatorServer) -> Emulated:
    emulator.state.add_project(PROJECT, PROJECT_NUMBER)
    site_key = emulator.state.add_key(PROJECT, allowed_domains=["acme.example"])
    return Emulated(emulator, site_key)


@pytest.fixture
def key_file(emulated: Emulated) -> dict[str, str]:
    return emulated.state.create_service_account(PROJECT)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    client = build_http_client()
    yield client
    await client.aclose()


def gate_client(
    http: httpx.AsyncClient,
    emulated: Emulated,
    mode: GoogleAuthMode = GoogleAuthMode.SELF_SIGNED_JWT,
    timeout: float = 2.0,
) -> RecaptchaClient:
    """The gate's RecaptchaClient as app.main builds it, with CHARGEGATE_RECAPTCHA_BASE_URL
    pointing at the emulator."""
    return RecaptchaClient(http, emulated.url, AccessTokenProvider(http, mode), timeout)
