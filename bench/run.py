"""The authorize benchmark: chargegate against the floor, same upstream, same database.

    .venv/bin/python -m bench.run [--runs 3] [--seconds 10]

Starts a fake upstream (bench/fake_google.py), chargegate (`chargegate serve`, 1 worker,
PostgreSQL on 127.0.0.1:5432, a fresh database) and the floor (bench/floor.py, 1 uvicorn
worker), drives POST /sessions/authorize with unique tokens through wrk, and prints a
Markdown table of medians; the raw figures go to bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
ADMIN_KEY = "cg_bench-admin-" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    upstream_ms: int


SCENARIOS = (
    Scenario("64 connections, 0 ms upstream", 64, 0),
    Scenario("200 connections, 50 ms upstream", 200, 50),
    Scenario("1 connection, 0 ms upstream", 1, 0),
)


@dataclass
class Sample:
    target: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `args` until the block ends (then SIGTERM); its output goes to `log` if given."""
    with ExitStack() as files:
        output = files.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_for(ready_url)
            yield proc
        finally:
            terminate(proc, 20)


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, and SIGKILL if it is not gone within `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match.group(1)) / 1024


def wrk(url: str, connections: int, seconds: int, api_key: str) -> dict[str, int]:
    threads = min(2, connections)
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "authorize.lua"),
            url,
            "--",
            api_key,
            secrets.token_hex(4),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    result: dict[str, int] = json.loads(line.removeprefix("WRK_JSON "))
    return result


def measure(
    target: str, base_url: str, pid: int, scenario: Scenario, seconds: int, api_key: str
) -> Sample:
    before = cpu_seconds(pid)
    result = wrk(base_url, scenario.connections, seconds, api_key)
    used = cpu_seconds(pid) - before
    errors = sum(v for k, v in result.items() if k.startswith("errors_"))
    return Sample(
        target=target,
        scenario=scenario.name,
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        cpu_us_per_request=used * 1e6 / max(result["requests"], 1),
        errors=errors,
    )


def service_account() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "bench-project",
        "private_key_id": "bench-key-1",
        "private_key": pem,
        "client_email": "bench@bench-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def set_up_chargegate(base_url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=10) as client:
        client.post("/operators", json={"operator_id": "bench", "name": "Bench"}).raise_for_status()
        client.put("/operators/bench/credentials", json=service_account()).raise_for_status()
        client.patch(
            "/operators/bench/policy",
            json={
                "enabled": True,
                "site_key": "bench-site-key",
                "gcp_project_id": "bench-project",
            },
        ).raise_for_status()
        key = client.post(
            "/api-keys", json={"name": "bench", "role": "backend", "operator_ids": ["bench"]}
        )
        key.raise_for_status()
        api_key: str = key.json()["key"]
        return api_key


def _floor_key(base_url: str) -> str:
    return "floor"  # the floor checks no key


def token_mints(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    match = re.search(r"^chargegate_access_token_mints_total ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def _sql(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_database(prefix: str = "chargegate_bench") -> Iterator[str]:
    """A new, empty PostgreSQL database for one run (dropped afterwards); yields its DSN."""
    database = f"{prefix}_{os.getpid()}"
    asyncio.run(_sql(f"{PG}/postgres", f'CREATE DATABASE "{database}"'))
    try:
        yield f"{PG}/{database}"
    finally:
        asyncio.run(_sql(f"{PG}/postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def chargegate_env(dsn: str, upstream: str) -> dict[str, str]:
    """The environment of a bench chargegate: its database, the fake upstream, keys."""
    return {
        "CHARGEGATE_DATABASE_URL": dsn,
        "CHARGEGATE_RECAPTCHA_BASE_URL": upstream,
        "CHARGEGATE_ENCRYPTION_KEYS": "bench:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "CHARGEGATE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "CHARGEGATE_LOG_LEVEL": "WARNING",
    }


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "chargegate"), "migrate"], env={**os.environ, **env}, check=True, cwd=ROOT
    )


@contextmanager
def fake_upstream() -> Iterator[str]:
    """bench/fake_google.py on a free port; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process(
        [str(BIN / "python"), "-m", "bench.fake_google", "--port", str(port)], {}, f"{url}/_delay"
    ):
        yield url


@dataclass
class Running:
    name: str
    base_url: str
    pid: int
    api_key: str
    mints_before: float = 0.0


def start_target(
    stack: ExitStack, name: str, args: list[str], env: dict[str, str], port: int, api_key_for: Any
) -> Running:
    base_url = f"http://127.0.0.1:{port}"
    ready = f"{base_url}/healthz" if name == "chargegate" else f"{base_url}/docs"
    proc = stack.enter_context(process(args, env, ready))
    target = Running(name, base_url, proc.pid, api_key_for(base_url))
    wrk(base_url, 16, 2, target.api_key)  # warm-up: pools, caches, the access token
    if name == "chargegate":
        target.mints_before = token_mints(base_url)
    return target


def measure_interleaved(
    targets: list[Running], upstream: str, runs: int, seconds: int
) -> list[Sample]:
    """Each run measures every target back to back, so drift of this shared machine
    (other tenants, CPU frequency) lands on all of them alike and the ratios stay fair."""
    samples: list[Sample] = []
    for scenario in SCENARIOS:
        httpx.post(f"{upstream}/_delay", params={"ms": scenario.upstream_ms})
        for _ in range(runs):
            for target in targets:
                samples.append(
                    measure(
                        target.name, target.base_url, target.pid, scenario, seconds, target.api_key
                    )
                )
    return samples


def median_table(samples: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for target in dict.fromkeys(s.target for s in samples):
        for scenario in SCENARIOS:
            group = [s for s in samples if s.target == target and s.scenario == scenario.name]
            if not group:
                continue
            rows.append(
                {
                    "target": target,
                    "scenario": scenario.name,
                    "rps": statistics.median(s.rps for s in group),
                    "p50_ms": statistics.median(s.p50_ms for s in group),
                    "p99_ms": statistics.median(s.p99_ms for s in group),
                    "cpu_us_per_request": statistics.median(s.cpu_us_per_request for s in group),
                    "errors": sum(s.errors for s in group),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--targets", default="chargegate,floor,floor-aiohttp")
    args = parser.parse_args()

    samples: list[Sample] = []
    extras: dict[str, dict[str, float]] = {}
    with fresh_database() as dsn, ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream())
        env = chargegate_env(dsn, upstream)
        migrate(env)
        running: list[Running] = []
        for target in args.targets.split(","):
            port = free_port()
            if target == "chargegate":
                command = [
                    str(BIN / "chargegate"),
                    "serve",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ]
                target_env, key_for = env, set_up_chargegate
            else:
                command = [
                    str(BIN / "uvicorn"),
                    "bench.floor:app",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
                target_env = {
                    "FLOOR_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://"),
                    "FLOOR_UPSTREAM": upstream,
                    "FLOOR_CLIENT": "aiohttp" if target == "floor-aiohttp" else "chargegate",
                }
                key_for = _floor_key
            running.append(start_target(stack, target, command, target_env, port, key_for))
        samples = measure_interleaved(running, upstream, args.runs, args.seconds)
        for target in running:
            extras[target.name] = {"rss_mb_after": rss_mb(target.pid)}
            if target.name == "chargegate":
                mints = token_mints(target.base_url)
                extras[target.name]["token_mints_total"] = mints
                extras[target.name]["token_mints_during_measurement"] = mints - target.mints_before

    rows = median_table(samples)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"authorize-{stamp}.json").write_text(
        json.dumps(
            {"samples": [asdict(s) for s in samples], "medians": rows, "extras": extras}, indent=2
        )
    )
    print(f"runs per cell: {args.runs} x {args.seconds}s; medians\n")
    print("| target | load | req/s | p50 ms | p99 ms | CPU µs/req | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [
            row["target"],
            row["scenario"],
            f"{row['rps']:.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['cpu_us_per_request']:.0f}",
            str(row["errors"]),
        ]
        print("| " + " | ".join(cells) + " |")
    floor = {r["scenario"]: r for r in rows if r["target"] == "floor"}
    print()
    for row in rows:
        if row["target"] == "chargegate" and row["scenario"] in floor:
            base = floor[row["scenario"]]
            print(
                f"- {row['scenario']}: throughput {row['rps'] / base['rps']:.2f}x floor, "
                f"p99 {row['p99_ms'] - base['p99_ms']:+.2f} ms vs floor"
            )
    for target, extra in extras.items():
        print(f"- {target}: " + ", ".join(f"{k} {v:.1f}" for k, v in extra.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
