"""SIGTERM under load: every request sent before the signal gets its whole 200 answer, and the
process exits within the shutdown grace.

    .venv/bin/python -m bench.sigterm [--clients 64] [--load-seconds 5] [--grace 15] \\
        [--upstream-ms 200]

Starts a fake upstream (answering after --upstream-ms, so requests are in flight when the signal
comes) and chargegate (`chargegate serve`, 1 worker, a fresh PostgreSQL database,
CHARGEGATE_SHUTDOWN_GRACE_SECONDS=--grace; the helpers of bench/run.py). --clients keep-alive
connections each send POST /sessions/authorize (unique tokens) one after the other; after
--load-seconds the server gets SIGTERM and, in the same step, the clients stop sending new
requests (as a load balancer draining the instance would). A request counts as sent before the
signal when its bytes were handed to the kernel before it (the clients are a minimal HTTP/1.1
client on asyncio streams, so that moment is exact).

Prints the counts and the time from SIGTERM to the process's exit, then checks (PostgreSQL)
that every answered decision is stored. Exit 1 when a request sent before the signal did not get
a complete 200 answer, the exit took longer than the grace (or did not come: the process is
killed 10 s after), its exit status was not clean (0, or -15: uvicorn re-raises SIGTERM after a
clean shutdown), or an answered decision is missing from the decisions table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench.db_outage import check_stored
from bench.run import (
    BIN,
    ROOT,
    chargegate_env,
    fake_upstream,
    free_port,
    fresh_database,
    migrate,
    process,
    set_up_chargegate,
)
from bench.soak import percentile, set_upstream_delay


@dataclass(slots=True)
class Request:
    written_at: float  # seconds since the load began
    before_signal: bool
    answered_at: float | None = None
    status: int | None = None
    error: str | None = None
    decision_id: str | None = None
    decision: str | None = None
    reason: str | None = None


@dataclass
class Drain:
    """The clients, the signal, and what came of it."""

    port: int
    api_key: str
    pid: int
    requests: list[Request] = field(default_factory=list)
    connect_errors: Counter[str] = field(default_factory=Counter)
    signalled: bool = False
    started: float = 0.0
    signal_at: float | None = None
    exit_at: float | None = None
    returncode: int | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.started

    def request_bytes(self, token: str) -> bytes:
        body = json.dumps(
            {"operator_id": "bench", "token": token, "session_ref": "sigterm"}
        ).encode()
        head = (
            f"POST /sessions/authorize HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def client(self, number: int, run_id: str, answer_timeout: float) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        sequence = 0
        try:
            while not self.signalled:
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError as exc:
                        # No request was sent on it; before the signal it still means the
                        # server turned a client away.
                        self.connect_errors[type(exc).__name__] += 1
                        await asyncio.sleep(0.05)
                        continue
                    if self.signalled:
                        break
                assert reader is not None
                sequence += 1
                writer.write(self.request_bytes(f"tok-{run_id}-{number}-{sequence}"))
                # write() hands the bytes to the kernel at once (nothing is buffered on an idle
                # connection), and the signal is sent in a step of its own: this is exact.
                request = Request(self.now(), before_signal=not self.signalled)
                self.requests.append(request)
                try:
                    async with asyncio.timeout(answer_timeout):
                        await writer.drain()
                        keep_alive = await self._read_answer(reader, request)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    request.error = type(exc).__name__
                    keep_alive = False
                request.answered_at = self.now()
                if not keep_alive:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    async def _read_answer(self, reader: asyncio.StreamReader, request: Request) -> bool:
        """Reads one whole HTTP/1.1 answer; True when the connection stays open."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ValueError("an answer without Content-Length")
        body = await reader.readexactly(int(headers["content-length"]))
        request.status = status
        if status == 200:
            payload = json.loads(body)
            request.decision_id = payload.get("decision_id")
            request.decision = payload.get("decision")
            request.reason = payload.get("reason")
        return headers.get("connection", "").lower() != "close"

    async def run(
        self, proc: subprocess.Popen[bytes], clients: int, load_seconds: float, grace: float
    ) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        run_id = os.urandom(4).hex()
        tasks = [
            asyncio.create_task(self.client(n, run_id, answer_timeout=grace + 10))
            for n in range(clients)
        ]
        await asyncio.sleep(load_seconds)
        # One step, no await in between: after this no client writes a new request.
        self.signalled = True
        self.signal_at = self.now()
        os.kill(self.pid, signal.SIGTERM)
        try:
            returncode = await loop.run_in_executor(None, proc.wait, grace + 10)
            self.exit_at = self.now()
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
        self.returncode = returncode
        await asyncio.gather(*tasks)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive clients")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="load before SIGTERM")
    parser.add_argument(
        "--grace", type=float, default=15.0, help="CHARGEGATE_SHUTDOWN_GRACE_SECONDS"
    )
    parser.add_argument("--upstream-ms", type=int, default=200, help="the fake upstream's latency")
    args = parser.parse_args()

    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    log = out / f"sigterm-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with fresh_database("chargegate_sigterm") as dsn, ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream())
        set_upstream_delay(upstream, args.upstream_ms)
        env = chargegate_env(dsn, upstream) | {
            "CHARGEGATE_SHUTDOWN_GRACE_SECONDS": f"{args.grace:g}",
            "CHARGEGATE_LOG_LEVEL": "INFO",
        }
        migrate(env)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "chargegate"), "serve", "--port", str(port), "--workers", "1"]
        proc = stack.enter_context(process(command, env, f"{base_url}/healthz", log=log))
        api_key = set_up_chargegate(base_url)
        print(
            f"sigterm: {args.clients} clients for {args.load_seconds:g} s, then SIGTERM to "
            f"chargegate pid {proc.pid} (grace {args.grace:g} s, fake upstream "
            f"{args.upstream_ms} ms); server log {log.relative_to(ROOT)}",
            flush=True,
        )
        drain = Drain(port, api_key, proc.pid)
        asyncio.run(drain.run(proc, args.clients, args.load_seconds, args.grace))
        answered = {
            r.decision_id: (r.decision or "", r.reason or "")
            for r in drain.requests
            if r.status == 200 and r.decision_id
        }
        # The process has exited: whatever it was going to write is written.
        stored = asyncio.run(check_stored(dsn, answered, wait=0))

    assert drain.signal_at is not None
    before = [r for r in drain.requests if r.before_signal]
    after = [r for r in drain.requests if not r.before_signal]
    in_flight = [r for r in before if r.answered_at is not None and r.answered_at > drain.signal_at]
    ok = [r for r in before if r.status == 200]
    failed = [r for r in before if r.status != 200]
    last_answer = max(
        (r.answered_at for r in in_flight if r.status == 200 and r.answered_at is not None),
        default=None,
    )
    latencies = [r.answered_at - r.written_at for r in ok if r.answered_at is not None]
    exit_seconds = drain.exit_at - drain.signal_at if drain.exit_at is not None else float("inf")
    print()
    print(
        "| sent before SIGTERM | answered 200 | of which in flight at SIGTERM | failed "
        "| SIGTERM to exit (s) | exit status |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(before)} | {len(ok)} | {sum(1 for r in in_flight if r.status == 200)} "
        f"| {len(failed)} | {exit_seconds:.2f} | {drain.returncode} |"
    )
    print()
    print(
        f"- load: {len(before) / drain.signal_at:.0f} req/s before the signal, latency p50 "
        f"{percentile(latencies, 50) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms"
    )
    if last_answer is not None:
        print(f"- last in-flight answer {last_answer - drain.signal_at:.2f} s after SIGTERM")
    if failed:
        print(f"- failed: {Counter(r.error or str(r.status) for r in failed)}")
    if after:
        print(f"- {len(after)} requests written after the signal (must be 0)")
    if drain.connect_errors:
        print(f"- connects refused before/at the signal: {dict(drain.connect_errors)}")
    print(
        f"- decisions table: {len(answered) - len(stored.missing)} of {len(answered)} answered "
        f"decisions present right after the exit, {len(stored.missing)} missing"
    )

    problems = []
    if failed:
        problems.append(f"{len(failed)} requests sent before SIGTERM got no complete 200 answer")
    if after:
        problems.append(f"{len(after)} requests were written after the signal (script bug)")
    if drain.exit_at is None:
        problems.append(f"the process did not exit within {args.grace + 10:g} s (killed)")
    elif exit_seconds > args.grace:
        problems.append(f"exit took {exit_seconds:.2f} s, over the {args.grace:g} s grace")
    if drain.returncode not in (0, -signal.SIGTERM):
        problems.append(f"exit status {drain.returncode} (clean is 0 or -15)")
    if stored.missing:
        problems.append(f"{len(stored.missing)} answered decisions missing from the table")
    if not in_flight:
        problems.append("no request was in flight at the signal: the run proved nothing")
    print()
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}")
        return 1
    print(
        "PASS: every request sent before SIGTERM got its 200 answer, the decisions are stored, "
        "and the process exited within the grace"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
