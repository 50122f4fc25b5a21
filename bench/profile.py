"""Profile chargegate under load with py-spy: `.venv/bin/python -m bench.profile [--seconds 15]`.

Same set-up as bench/run.py (fake upstream, fresh Postgres database, 1 worker); writes a
speedscope/flamegraph profile and a top-functions summary under bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import subprocess
import threading
from pathlib import Path

from bench.run import (
    ADMIN_KEY,
    BIN,
    PG,
    ROOT,
    _sql,
    free_port,
    process,
    set_up_chargegate,
    wrk,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--upstream-ms", type=int, default=0)
    args = parser.parse_args()
    database = f"chargegate_profile_{os.getpid()}"
    asyncio.run(_sql(f"{PG}/postgres", f'CREATE DATABASE "{database}"'))
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    try:
        upstream_port, port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        env = {
            "CHARGEGATE_DATABASE_URL": f"{PG}/{database}",
            "CHARGEGATE_RECAPTCHA_BASE_URL": upstream,
            "CHARGEGATE_ENCRYPTION_KEYS": "p:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "CHARGEGATE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "CHARGEGATE_LOG_LEVEL": "WARNING",
        }
        subprocess.run([str(BIN / "chargegate"), "migrate"], env={**os.environ, **env}, check=True)
        fake = [str(BIN / "python"), "-m", "bench.fake_google", "--port", str(upstream_port)]
        with process(fake, {}, f"{upstream}/_delay"):
            import httpx

            httpx.post(f"{upstream}/_delay", params={"ms": args.upstream_ms})
            serve = [str(BIN / "chargegate"), "serve", "--port", str(port)]
            base_url = f"http://127.0.0.1:{port}"
            with process(serve, env, f"{base_url}/healthz") as proc:
                key = set_up_chargegate(base_url)
                wrk(base_url, 16, 2, key)
                load = threading.Thread(
                    target=wrk, args=(base_url, args.connections, args.seconds + 2, key)
                )
                load.start()
                profile = out / "profile.txt"
                subprocess.run(
                    [
                        str(BIN / "py-spy"),
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--duration",
                        str(args.seconds),
                        "--format",
                        "raw",
                        "--output",
                        str(profile),
                        "--nonblocking",
                    ],
                    check=True,
                )
                load.join()
        summarize(profile)
    finally:
        asyncio.run(_sql(f"{PG}/postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    return 0


def summarize(profile: Path, top: int = 40) -> None:
    """Inclusive and self sample shares per function, from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    samples = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"{samples} samples; top {title}:")
        for frame, n in sorted(table.items(), key=lambda item: -item[1])[:top]:
            print(f"{100 * n / samples:5.1f}%  {frame[:150]}")


if __name__ == "__main__":
    raise SystemExit(main())
