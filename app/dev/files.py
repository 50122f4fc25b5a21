"""What `chargegate dev` keeps under var/ between starts, each file readable by its owner only:

- dev-keys.env: the API keys it created, as shell lines (`source var/dev-keys.env`);
- dev-emulator.json: what the emulated Google must know again after a restart (project and
  site key), with dev-service-account.json, the key file the demo operator uploaded.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.recaptcha.emulator import EmulatorState

KEYS_FILE = "dev-keys.env"
EMULATOR_FILE = "dev-emulator.json"
SERVICE_ACCOUNT_FILE = "dev-service-account.json"
_KEYS_HEADER = "# chargegate dev: `source var/dev-keys.env`. API keys of this local stack only.\n"


class DevStateError(Exception):
    """var/ holds a state the dev stack cannot carry on from; the message says what to do."""


@dataclass(frozen=True)
class DevKeys:
    admin: str  # platform_admin
    operator: str  # operator_admin of the demo operator
    backend: str  # backend of the demo operator


@dataclass(frozen=True)
class EmulatorSetup:
    """The demo operator's Google project, as the emulator knows it."""

    project_id: str
    project_number: str
    site_key: str
    allowed_domains: tuple[str, ...]
    service_account: Mapping[str, str]  # the key file as issued, private key included

    @classmethod
    def create(
        cls, state: EmulatorState, project_id: str, allowed_domains: Iterable[str]
    ) -> EmulatorSetup:
        project = state.add_project(project_id)
        domains = tuple(allowed_domains)
        site_key = state.add_key(project_id, allowed_domains=domains, display_name="demo portal")
        key_file = state.create_service_account(project_id, name="chargegate-dev")
        return cls(project_id, project.number, site_key, domains, key_file)

    @property
    def token_uri(self) -> str:
        return self.service_account["token_uri"]

    def with_token_uri(self, token_uri: str) -> EmulatorSetup:
        return replace(self, service_account={**self.service_account, "token_uri": token_uri})

    def register(self, state: EmulatorState) -> None:
        """Make a fresh emulator know this project, key and service account again."""
        state.add_project(self.project_id, self.project_number)
        state.add_key(
            self.project_id,
            self.site_key,
            allowed_domains=self.allowed_domains,
            display_name="demo portal",
        )
        state.add_service_account(self.service_account)


class DevFiles:
    def __init__(self, var_dir: Path) -> None:
        self.keys_path = var_dir / KEYS_FILE
        self.emulator_path = var_dir / EMULATOR_FILE
        self.service_account_path = var_dir / SERVICE_ACCOUNT_FILE

    def read_keys(self) -> DevKeys | None:
        if not self.keys_path.exists():
            return None
        values = read_env(self.keys_path)
        try:
            return DevKeys(
                values["CHARGEGATE_ADMIN_KEY"],
                values["CHARGEGATE_OPERATOR_KEY"],
                values["CHARGEGATE_BACKEND_KEY"],
            )
        except KeyError as exc:
            raise DevStateError(f"{self.keys_path} lacks {exc.args[0]}") from None

    def write_keys(self, keys: DevKeys, extra: Mapping[str, str]) -> None:
        values = {
            "CHARGEGATE_ADMIN_KEY": keys.admin,
            "CHARGEGATE_OPERATOR_KEY": keys.operator,
            "CHARGEGATE_BACKEND_KEY": keys.backend,
            **extra,
        }
        lines = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
        write_private(self.keys_path, _KEYS_HEADER + lines)

    def read_emulator(self) -> EmulatorSetup | None:
        if not (self.emulator_path.exists() and self.service_account_path.exists()):
            return None
        data: dict[str, Any] = json.loads(self.emulator_path.read_text())
        return EmulatorSetup(
            project_id=data["project_id"],
            project_number=data["project_number"],
            site_key=data["site_key"],
            allowed_domains=tuple(data["allowed_domains"]),
            service_account=json.loads(self.service_account_path.read_text()),
        )

    def write_emulator(self, setup: EmulatorSetup) -> None:
        data = {
            "project_id": setup.project_id,
            "project_number": setup.project_number,
            "site_key": setup.site_key,
            "allowed_domains": list(setup.allowed_domains),
        }
        key_file = json.dumps(dict(setup.service_account), indent=2) + "\n"
        write_private(self.service_account_path, key_file)
        write_private(self.emulator_path, json.dumps(data, indent=2) + "\n")


def read_env(path: Path) -> dict[str, str]:
    """`NAME=value` lines as written by write_keys (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = "".join(shlex.split(value))
    return values


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` at once (write aside, rename), mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # O_CREAT's mode does not apply to a leftover file
        handle.write(text)
    os.replace(staging, path)
