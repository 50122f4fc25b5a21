"""The emulator's authentication rules, in-process and on a controlled clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.auth import crypt, jwt

from app.recaptcha.emulator import EmulatorState, create_emulator_app
from app.recaptcha.emulator.auth import CLOUD_PLATFORM, JWT_GRANT_TYPE, SELF_SIGNED_AUDIENCE
from tests.emulator.conftest import PROJECT

NOW = 1_800_000_000.0


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    state: EmulatorState
    clock: Clock
    client: httpx.AsyncClient
    key_file: dict[str, str]
    site_key: str

    def sign(self, claims: dict[str, Any], key_id: str | None = "default") -> str:
        kid = self.key_file["private_key_id"] if key_id == "default" else key_id
        signer = crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            self.key_file["private_key"], key_id=kid
        )
        token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
        return token.decode()

    def claims(self, **extra: Any) -> dict[str, Any]:
        email = self.key_file["client_email"]
        now = int(self.clock.now)
        return {"iss": email, "sub": email, "iat": now, "exp": now + 3600, **extra}

    async def get_key(self, bearer: str) -> httpx.Response:
        return await self.client.get(
            f"/v1/projects/{PROJECT}/keys/{self.site_key}",
            headers={"authorization": f"Bearer {bearer}"},
        )


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    clock = Clock()
    state = EmulatorState(clock=clock)
    state.add_project(PROJECT)
    site_key = state.add_key(PROJECT)
    key_file = state.create_service_account(PROJECT, token_uri="http://emulator.test/token")
    transport = httpx.ASGITransport(app=create_emulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator.test") as client:
        yield Setup(state, clock, client, key_file, site_key)


@pytest.mark.parametrize(
    "extra", [{"scope": CLOUD_PLATFORM}, {"aud": SELF_SIGNED_AUDIENCE}], ids=["scope", "aud"]
)
async def test_self_signed_jwt_accepted(setup: Setup, extra: dict[str, str]) -> None:
    answer = await setup.get_key(setup.sign(setup.claims(**extra)))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("claims", "key_id", "reason"),
    [
        (
            {"scope": "https://www.googleapis.com/auth/userinfo.email"},
            "default",
            "TYPE_UNSUPPORTED",
        ),
        ({"aud": "https://pubsub.googleapis.com/"}, "default", "TYPE_UNSUPPORTED"),
        ({"scope": CLOUD_PLATFORM, "sub": "someone@else.example"}, "default", "TYPE_UNSUPPORTED"),
        ({"scope": CLOUD_PLATFORM}, None, "TYPE_UNSUPPORTED"),  # no kid
        ({"scope": CLOUD_PLATFORM}, "0" * 40, "TYPE_UNSUPPORTED"),  # another key's kid
        ({"scope": CLOUD_PLATFORM, "exp": int(NOW) - 400}, "default", "EXPIRED"),
        ({"scope": CLOUD_PLATFORM, "exp": int(NOW) + 7200}, "default", "EXPIRED"),  # > 1 h
    ],
)
async def test_self_signed_jwt_refused(
    setup: Setup, claims: dict[str, Any], key_id: str | None, reason: str
) -> None:
    answer = await setup.get_key(setup.sign(setup.claims(**claims), key_id))
    assert answer.status_code == 401
    [detail] = answer.json()["error"]["details"]
    assert detail["reason"] == f"ACCESS_TOKEN_{reason}"
    assert detail["metadata"]["method"].endswith("RecaptchaEnterpriseService.GetKey")


async def exchange(setup: Setup, **claims: Any) -> httpx.Response:
    assertion = setup.sign(setup.claims(**{"scope": CLOUD_PLATFORM, **claims}))
    return await setup.client.post(
        "/token", data={"grant_type": JWT_GRANT_TYPE, "assertion": assertion}
    )


async def test_access_tokens_expire(setup: Setup) -> None:
    answer = await exchange(setup, aud=setup.key_file["token_uri"])
    body = answer.json()
    assert answer.status_code == 200
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert (body["expires_in"], body["token_type"]) == (3599, "Bearer")

    assert (await setup.get_key(body["access_token"])).status_code == 200
    setup.clock.now += 3600
    expired = await setup.get_key(body["access_token"])
    assert expired.status_code == 401
    assert expired.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"


@pytest.mark.parametrize(
    ("claims", "error", "description"),
    [
        (
            {"aud": "https://example.com/token"},
            "invalid_grant",
            "Invalid JWT: Failed audience check.",
        ),
        (
            {"aud": "https://oauth2.googleapis.com/token", "iat": int(NOW) - 7200},
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
            "timeframe. Check your iat and exp values in the JWT claim.",
        ),
        (
            {"aud": "https://oauth2.googleapis.com/token", "scope": ""},
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ),
        (
            {
                "aud": "https://oauth2.googleapis.com/token",
                "iss": "nobody@x.iam.gserviceaccount.com",
            },
            "invalid_grant",
            "Invalid grant: account not found",
        ),
    ],
)
async def test_exchange_refusals(
    setup: Setup, claims: dict[str, Any], error: str, description: str
) -> None:
    answer = await exchange(setup, **claims)
    assert answer.status_code == 400
    assert answer.json() == {"error": error, "error_description": description}
    assert setup.state.token_exchanges == 0


def test_python_api_refuses_what_google_would_not_issue() -> None:
    state = EmulatorState()
    state.add_project(PROJECT, "111111111111")
    assert state.add_project(PROJECT).number == "111111111111"  # idempotent
    with pytest.raises(ValueError, match="has number"):
        state.add_project(PROJECT, "222222222222")
    with pytest.raises(KeyError):
        state.add_key("no-such-project")
    with pytest.raises(ValueError, match="integration type"):
        state.add_key(PROJECT, integration_type="TELEPATHY")
    with pytest.raises(KeyError):
        state.issue_token("6LcUnknown", "a", "h")
    with pytest.raises(ValueError, match="score"):
        state.issue_token(state.add_key(PROJECT), "a", "h", score=1.5)
    with pytest.raises(ValueError, match="address"):
        state.create_service_account(PROJECT)  # no token_uri and no known address yet
    site_key = state.add_key(PROJECT)
    assert (len(site_key), site_key[:2]) == (40, "6L")
    api_key = state.create_api_key(PROJECT)
    assert (len(api_key), api_key[:4]) == (39, "AIza")
