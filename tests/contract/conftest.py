"""Contract fixtures: `chargegate serve` as a real subprocess on the test Postgres database,
the reCAPTCHA Enterprise emulator on its own real port (never Google), and a "world" at the
gate for the fuzzer to work in: an operator with protection on and credentials, API keys of
every role, a few decisions to report outcomes for and a few keys that may be revoked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.recaptcha.emulator import EmulatorServer
from tests.conftest import ADMIN, BOOTSTRAP_KEY
from tests.e2e.conftest import ACTION, HOSTNAME, ServerProcess, launcher, unique

ROLES = ("platform_admin", "operator_admin", "backend")


@dataclass
class World:
    """What the fuzzer is pointed at, and the values it should try besides random ones."""

    base_url: str
    emulator: EmulatorServer
    project_id: str
    operator_id: str
    keys: dict[str, str]  # role -> secret
    decision_ids: list[str] = field(default_factory=list)
    spare_key_ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # fresh, valid emulator tokens

    def assessments_made(self) -> int:
        """Assessments Google (the emulator) made for the operator's project so far."""
        records = list(self.emulator.state.assessments.values())
        return sum(1 for record in records if record.project_id == self.project_id)


@pytest.fixture(scope="module")
def contract_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture(scope="module")
def contract_server(
    database_url: str,
    contract_emulator: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with launcher(database_url, contract_emulator, tmp_path_factory) as servers:
        yield servers.start()


def _call(client: httpx.Client, method: str, path: str, status: int, **kwargs: Any) -> Any:
    response = client.request(method, path, headers=ADMIN, **kwargs)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@pytest.fixture
def world(
    contract_server: ServerProcess, contract_emulator: EmulatorServer, database: str
) -> World:
    """A fresh operator (enforce, threshold 0.5, service-account credentials at the emulator)
    with a key of every role; the `database` fixture empties the tables after the test."""
    state = contract_emulator.state
    project_id = unique("contract-project")
    state.add_project(project_id)
    site_key = state.add_key(project_id)
    operator_id = unique("contract-op")
    with httpx.Client(base_url=contract_server.url, timeout=15.0) as client:
        _call(client, "POST", "/operators", 201, json={"operator_id": operator_id, "name": "Fuzz"})
        _call(
            client,
            "PUT",
            f"/operators/{operator_id}/credentials",
            200,
            json=state.create_service_account(project_id),
        )
        _call(
            client,
            "PATCH",
            f"/operators/{operator_id}/policy",
            200,
            json={"enabled": True, "site_key": site_key, "gcp_project_id": project_id},
        )
        keys = {"platform_admin": BOOTSTRAP_KEY}
        for role in ("operator_admin", "backend"):
            created = _call(
                client,
                "POST",
                "/api-keys",
                201,
                json={"name": f"fuzz {role}", "role": role, "operator_ids": [operator_id]},
            )
            keys[role] = created["key"]
        result = World(
            base_url=contract_server.url,
            emulator=contract_emulator,
            project_id=project_id,
            operator_id=operator_id,
            keys=keys,
        )
        # Decisions with an assessment, so outcome reports can reach their 202.
        for _ in range(3):
            decided = client.post(
                "/sessions/authorize",
                json={"operator_id": operator_id, "token": _token(contract_emulator, site_key)},
                headers={"Authorization": f"Bearer {keys['backend']}"},
            )
            assert decided.status_code == 200, decided.text
            assert decided.json()["reason"] == "score_ok", decided.text
            result.decision_ids.append(decided.json()["decision_id"])
        # Keys nobody uses, for DELETE /api-keys/{key_id} to revoke.
        for index in range(3):
            spare = _call(
                client,
                "POST",
                "/api-keys",
                201,
                json={"name": f"spare {index}", "role": "backend", "operator_ids": None},
            )
            result.spare_key_ids.append(spare["id"])
    result.tokens = [_token(contract_emulator, site_key) for _ in range(20)]
    return result


def _token(emulator: EmulatorServer, site_key: str) -> str:
    return emulator.state.issue_token(site_key, action=ACTION, hostname=HOSTNAME, score=0.9)
