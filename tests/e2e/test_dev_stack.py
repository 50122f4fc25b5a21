"""`chargegate dev` as a person runs it: a real subprocess in an empty directory, the README's
curl walk-through over HTTP with the keys from var/dev-keys.env, then a second start in the
same directory that carries on from the same state. Needs neither Postgres nor Google."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

CHARGEGATE = Path(sys.executable).with_name("chargegate")
READY = "chargegate dev: ready on "
START_TIMEOUT = 60.0
KEY_NAMES = ("CHARGEGATE_ADMIN_KEY", "CHARGEGATE_OPERATOR_KEY", "CHARGEGATE_BACKEND_KEY")
SHELL_NAMES = (
    *KEY_NAMES,
    "CHARGEGATE_URL",
    "CHARGEGATE_OPERATOR_ID",
    "CHARGEGATE_SITE_KEY",
    "CHARGEGATE_EMULATOR_URL",
    "CHARGEGATE_EMULATOR_TOKENS_URL",
)
# Shows that the dev stack ignores it: nothing listens there.
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:9/nothing"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevStack:
    """One `chargegate dev` process in `workdir`: its stdout is read line by line, its
    stderr (JSON log lines) goes to a file."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEGATE_")}
        self.env.update(CHARGEGATE_DATABASE_URL=UNREACHABLE_DATABASE, **env)
        self.lines: list[str] = []
        self.log_path = workdir / "dev.log"
        self.url = ""

    def start(self) -> DevStack:
        for _ in range(3):  # the free port may be taken between probing and binding
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.lines = []
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(CHARGEGATE), "dev", "--port", str(port)],
                    cwd=self.workdir,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    start_new_session=True,
                )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            if self._wait_ready():
                return self
            self._reap()
        raise RuntimeError(f"chargegate dev did not start:\n{self.output}\n{self.log}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while not any(line.startswith(READY) for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> int:
        """SIGTERM, as a terminal's Ctrl-C or a service manager would; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self._reap()
        return code

    def _reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def shell_values(self) -> dict[str, str]:
        """What `source var/dev-keys.env` gives a shell (bash itself reads the file)."""
        script = (
            "set -eu; source var/dev-keys.env; "
            'for n in "$@"; do printf "%s=%s\\n" "$n" "${!n}"; done'
        )
        result = subprocess.run(
            ["bash", "-c", script, "bash", *SHELL_NAMES],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(line.split("=", 1) for line in result.stdout.splitlines())

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "checkout"
    path.mkdir()
    return path


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mint(client: httpx.Client, env: dict[str, str], score: float) -> str:
    """A token from the emulator's control API, as the demo page's script gets one."""
    response = client.post(
        env["CHARGEGATE_EMULATOR_TOKENS_URL"],
        json={
            "site_key": env["CHARGEGATE_SITE_KEY"],
            "action": "start_session",
            "hostname": "localhost",
            "score": score,
        },
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def authorize(client: httpx.Client, env: dict[str, str], token: str) -> dict[str, Any]:
    response = client.post(
        "/sessions/authorize",
        json={"operator_id": "demo", "token": token, "evse_id": "DE*CGD*E0001*1"},
        headers=bearer(env["CHARGEGATE_BACKEND_KEY"]),
    )
    assert response.status_code == 200, response.text
    decision: dict[str, Any] = response.json()
    return decision


def wait_until(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.1)


def test_first_start_walk_through_and_restart(workdir: Path) -> None:
    with DevStack(workdir) as dev:
        env = dev.shell_values()
        keys = [env[name] for name in KEY_NAMES]
        walk_through(dev, env)
        first_output = dev.output
    assert dev.process.returncode in (0, -signal.SIGTERM), dev.log

    # Printed once, at the first start, and kept 0600 under var/.
    for name, key in zip(KEY_NAMES, keys, strict=True):
        assert key.startswith("cg_")
        assert f"{name}={key}" in first_output
    for name in ("dev-keys.env", "dev-emulator.json", "dev-service-account.json"):
        assert stat.S_IMODE((workdir / "var" / name).stat().st_mode) == 0o600
    assert (workdir / "var" / "chargegate.db").exists()  # SQLite, not the URL in the env

    # Second start on another port, minting access tokens at the emulator's /token this
    # time: the emulator must know the persisted service account, project and key again.
    with DevStack(workdir, CHARGEGATE_GOOGLE_AUTH="token_exchange") as again:
        env2 = again.shell_values()
        assert [env2[name] for name in KEY_NAMES] == keys
        assert env2["CHARGEGATE_SITE_KEY"] == env["CHARGEGATE_SITE_KEY"]
        assert env2["CHARGEGATE_URL"] == again.url != dev.url
        assert not any(key in again.output for key in keys)
        with httpx.Client(base_url=again.url, timeout=15.0) as client:
            site = client.get("/operators/demo/site-key").json()
            assert site["site_key"] == env["CHARGEGATE_SITE_KEY"]
            assert site["script_url"].startswith(env2["CHARGEGATE_EMULATOR_URL"])

            decision = authorize(client, env2, mint(client, env2, 0.9))
            assert (decision["decision"], decision["reason"]) == ("allow", "score_ok")
            stats = client.get(f"{env2['CHARGEGATE_EMULATOR_URL']}/emulator/stats").json()
            assert stats["token_exchanges"] == 1  # minted once (start-up check), then reused

            decisions = client.get(
                "/operators/demo/decisions", headers=bearer(env["CHARGEGATE_OPERATOR_KEY"])
            ).json()
            assert len(decisions["items"]) == 4  # the same database as the first start
            operators = client.get("/operators", headers=bearer(env["CHARGEGATE_ADMIN_KEY"]))
            assert operators.status_code == 200
    key_file = json.loads((workdir / "var" / "dev-service-account.json").read_text())
    assert key_file["token_uri"] == f"{again.url}/_google/token"  # uploaded anew
    private_key: str = key_file["private_key"]
    for secret in (*keys, private_key.splitlines()[1]):
        assert secret not in dev.log, "a secret was logged"


def walk_through(dev: DevStack, env: dict[str, str]) -> None:
    """The README's curl walk-through against the dev stack, one audience after another."""
    assert env["CHARGEGATE_URL"] == dev.url
    admin, operator = bearer(env["CHARGEGATE_ADMIN_KEY"]), bearer(env["CHARGEGATE_OPERATOR_KEY"])
    with httpx.Client(base_url=dev.url, timeout=15.0) as client:
        # Driver-portal frontend: the site key, with script_url at the emulated enterprise.js.
        site = client.get("/operators/demo/site-key").json()
        site_key = env["CHARGEGATE_SITE_KEY"]
        assert site == {
            "operator_id": "demo",
            "enabled": True,
            "site_key": site_key,
            "action": "start_session",
            "script_url": f"{env['CHARGEGATE_EMULATOR_URL']}/recaptcha/enterprise.js"
            f"?render={site_key}",
        }
        script = client.get(site["script_url"])
        assert script.status_code == 200
        assert "grecaptcha" in script.text

        # Platform admin and CPO staff.
        operators = client.get("/operators", headers=admin).json()
        assert [item["operator_id"] for item in operators["items"]] == ["demo"]
        policy = client.get("/operators/demo/policy", headers=operator).json()
        assert policy["enabled"] is True
        assert policy["credentials_configured"] is True
        assert {"localhost", "127.0.0.1"} <= set(policy["allowed_hostnames"])
        credentials = client.get("/operators/demo/credentials", headers=operator).json()
        assert credentials["type"] == "service_account"

        # Charging backend.
        token = mint(client, env, 0.9)
        allowed = authorize(client, env, token)
        assert (allowed["decision"], allowed["reason"], allowed["score"]) == (
            "allow",
            "score_ok",
            0.9,
        )
        denied = authorize(client, env, mint(client, env, 0.1))
        assert (denied["decision"], denied["reason"], denied["score"]) == (
            "deny",
            "score_below_threshold",
            0.1,
        )
        replayed = authorize(client, env, token)
        assert (replayed["decision"], replayed["reason"]) == ("deny", "token_reused")

        outcome = client.post(
            f"/sessions/{allowed['decision_id']}/outcome",
            json={"outcome": "fraudulent", "reasons": ["chargeback"]},
            headers=bearer(env["CHARGEGATE_BACKEND_KEY"]),
        )
        assert outcome.status_code == 202, outcome.text
        annotations_url = f"{env['CHARGEGATE_EMULATOR_URL']}/emulator/annotations"

        def annotated() -> bool:
            return {
                "assessment_name": allowed["assessment_name"],
                "annotation": "FRAUDULENT",
                "reasons": ["CHARGEBACK"],
            } in client.get(annotations_url).json()

        wait_until(annotated)

        decisions = client.get("/operators/demo/decisions", headers=operator).json()
        assert [item["reason"] for item in decisions["items"]] == [
            "token_reused",
            "score_below_threshold",
            "score_ok",
        ]

    # Bound to 127.0.0.1 alone: another loopback address finds nothing listening.
    with pytest.raises(ConnectionRefusedError), socket.socket() as probe:
        probe.connect(("127.0.0.2", int(dev.url.rsplit(":", 1)[1])))


def test_refuses_any_other_address(workdir: Path) -> None:
    result = subprocess.run(
        [str(CHARGEGATE), "dev", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert not (workdir / "var").exists()
