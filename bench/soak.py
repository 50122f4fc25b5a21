"""Soak: a steady request rate for minutes; the server's memory and file descriptors stay flat.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 100]

Starts a fake upstream, chargegate (`chargegate serve`, 1 worker, a fresh PostgreSQL database;
the helpers of bench/run.py) and drives POST /sessions/authorize open-loop (a request every
1/rate seconds whatever the answers do, each with a unique token). Every --interval seconds it
samples the server process's RSS (/proc/PID/status VmRSS) and open file descriptors
(/proc/PID/fd, each socket looked up in /proc/PID/net/tcp). Prints the samples and exits 1 when,
between the first sample after the warm-up and the last one, RSS grew by more than
--rss-growth-mb or --rss-growth-pct, the server's own descriptors grew by more than --fd-growth,
or any request failed (transport error or a status other than 200). "Own" descriptors are all
but the live HTTP connections in (from the generator) and out (to the upstream): those follow
the concurrency of the moment; everything else (files, pipes, the listener, PostgreSQL
connections, sockets left in CLOSE_WAIT) counts.

`OpenLoop` (the rate-controlled generator) is used by bench/db_outage.py as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import httpx

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


@dataclass(slots=True)
class Outcome:
    """One request of an open-loop run."""

    index: int
    sent_at: float  # seconds since the run began
    latency: float  # seconds until the answer (or the error)
    status: int | None  # None: no HTTP answer (transport error or timeout)
    error: str | None = None
    decision: str | None = None
    reason: str | None = None
    decision_id: str | None = None
    detail: str | None = None  # a non-200 answer's problem title


@dataclass
class OpenLoop:
    """POST /sessions/authorize at `rate` requests per second, open-loop, unique tokens.

    A request starts every 1/rate seconds from the start whether or not earlier ones were
    answered (as independent drivers would), up to `max_connections` at once on the wire
    (more wait for a connection inside the client, within their `timeout`)."""

    base_url: str
    api_key: str
    rate: float
    timeout: float = 10.0
    max_connections: int = 512
    operator_id: str = "bench"
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0  # loop.time() at the start
    in_flight: int = 0
    max_in_flight: int = 0
    max_lag: float = 0.0  # the worst delay of a request's start behind its schedule, seconds
    pending: dict[int, float] = field(default_factory=dict)  # in flight: index -> sent_at
    _window: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.outcomes) + self.in_flight

    def take_window(self) -> list[float]:
        """Latencies of the requests answered since the previous call."""
        window, self._window = self._window, []
        return window

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.started

    async def run(self, seconds: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        run_id = os.urandom(4).hex()
        connector = aiohttp.TCPConnector(limit=self.max_connections)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks: set[asyncio.Task[None]] = set()
            self.started = loop.time()
            index = 0
            while index / self.rate < seconds:
                delay = self.started + index / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.max_lag = max(self.max_lag, -delay)
                task = asyncio.create_task(self._one(session, run_id, index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.gather(*tasks)
        self.outcomes.sort(key=lambda o: o.index)
        return self.outcomes

    async def _one(self, session: aiohttp.ClientSession, run_id: str, index: int) -> None:
        loop = asyncio.get_running_loop()
        body = json.dumps(
            {
                "operator_id": self.operator_id,
                "token": f"tok-{run_id}-{index}",
                "session_ref": f"soak-{index}",
            }
        ).encode()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        start = loop.time()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        outcome = Outcome(index, start - self.started, 0.0, None)
        self.pending[index] = outcome.sent_at
        try:
            async with session.post(
                f"{self.base_url}/sessions/authorize", data=body, headers=headers
            ) as response:
                raw = await response.read()
                outcome.status = response.status
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                if response.status == 200:
                    outcome.decision = payload.get("decision")
                    outcome.reason = payload.get("reason")
                    outcome.decision_id = payload.get("decision_id")
                else:
                    outcome.detail = str(payload.get("title") or payload.get("detail"))[:100]
            elif response.status != 200:
                outcome.detail = raw[:100].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.error = type(exc).__name__
        finally:
            outcome.latency = loop.time() - start
            self.in_flight -= 1
            del self.pending[index]
            self.outcomes.append(outcome)
            if outcome.status == 200:
                self._window.append(outcome.latency)


def set_upstream_delay(upstream: str, ms: int) -> None:
    httpx.post(f"{upstream}/_delay", params={"ms": ms}).raise_for_status()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def describe(outcomes: list[Outcome]) -> Counter[str]:
    """'200 allow/score_ok', '503 <title>', 'error ClientOSError' … with their counts."""
    kinds: Counter[str] = Counter()
    for o in outcomes:
        if o.status is None:
            kinds[f"error {o.error}"] += 1
        elif o.status == 200:
            kinds[f"200 {o.decision}/{o.reason}"] += 1
        else:
            kinds[f"{o.status} {o.detail}"] += 1
    return kinds


@dataclass
class ProcSample:
    t: float
    rss_mb: float
    fds: int  # all open file descriptors
    http_in: int  # of which: live connections accepted from the load generator
    upstream: int  # of which: live connections to the (fake) Google upstream
    db: int  # of which: connections to PostgreSQL (any state)
    close_wait: int  # of which: TCP sockets the peer closed and the server did not (leak sign)
    threads: int
    sent: int
    answered: int
    failed: int
    p50_ms: float
    p99_ms: float

    @property
    def own_fds(self) -> int:
        """The descriptors the server holds on its own account: all but the live HTTP
        connections in and out, whose number follows the load's concurrency of the moment
        (the upstream pool drops idle ones after 30 s), not a leak."""
        return self.fds - self.http_in - self.upstream


_ESTABLISHED, _CLOSE_WAIT = "01", "08"


def _tcp_sockets(pid: int) -> dict[int, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) of the process's TCP sockets."""
    sockets: dict[int, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            sockets[inode] = (
                int(local.rsplit(":", 1)[1], 16),
                int(remote.rsplit(":", 1)[1], 16),
                state,
            )
    return sockets


@dataclass
class FdCounts:
    fds: int = 0
    http_in: int = 0
    upstream: int = 0
    db: int = 0
    close_wait: int = 0


def count_fds(pid: int, http_port: int, upstream_port: int, db_port: int = 5432) -> FdCounts:
    """The open file descriptors of a process, and which of them are which TCP connections."""
    sockets = _tcp_sockets(pid)
    counts = FdCounts()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        counts.fds += 1
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if not target.startswith("socket:["):
            continue
        local, remote, state = sockets.get(int(target[8:-1]), (0, 0, ""))
        counts.http_in += local == http_port and state == _ESTABLISHED
        counts.upstream += remote == upstream_port and state == _ESTABLISHED
        counts.db += remote == db_port
        counts.close_wait += state == _CLOSE_WAIT
    return counts


def read_proc(pid: int) -> tuple[float, int]:
    """RSS in MB and threads of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
    assert rss
    assert threads
    return int(rss.group(1)) / 1024, int(threads.group(1))


async def soak(
    base_url: str,
    api_key: str,
    pid: int,
    http_port: int,
    upstream_port: int,
    rate: float,
    seconds: float,
    interval: float,
) -> tuple[list[ProcSample], list[Outcome], OpenLoop]:
    load = OpenLoop(base_url, api_key, rate, max_connections=64)
    samples: list[ProcSample] = []

    def sample(t: float) -> None:
        rss, threads = read_proc(pid)
        fds = count_fds(pid, http_port, upstream_port)
        done = load.outcomes
        window = load.take_window()
        samples.append(
            ProcSample(
                t=t,
                rss_mb=rss,
                fds=fds.fds,
                http_in=fds.http_in,
                upstream=fds.upstream,
                db=fds.db,
                close_wait=fds.close_wait,
                threads=threads,
                sent=load.sent,
                answered=sum(1 for o in done if o.status == 200),
                failed=sum(1 for o in done if o.status != 200),
                p50_ms=percentile(window, 50) * 1000,
                p99_ms=percentile(window, 99) * 1000,
            )
        )
        s = samples[-1]
        print(
            f"  t={s.t:5.0f}s rss={s.rss_mb:6.1f} MB fds={s.fds} (own {s.own_fds}, "
            f"http in {s.http_in}, upstream {s.upstream}, db {s.db}) sent={s.sent} "
            f"failed={s.failed} p99={s.p99_ms:.1f} ms",
            file=sys.stderr,
            flush=True,
        )

    async def sampler() -> None:
        n = 1
        while True:
            await asyncio.sleep(max(0.0, n * interval - load.elapsed()))
            sample(n * interval)
            n += 1

    sample(0.0)  # before the load
    run = asyncio.create_task(load.run(seconds))
    await asyncio.sleep(0)  # the run has started its clock
    task = asyncio.create_task(sampler())
    outcomes = await run
    task.cancel()
    if samples[-1].t < seconds - 0.5:
        sample(round(load.elapsed()))
    return samples, outcomes, load


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=None,
        help="the baseline is the first sample at or after this (default: 60, at most 1/4 of "
        "the run)",
    )
    parser.add_argument("--rss-growth-mb", type=float, default=15.0)
    parser.add_argument("--rss-growth-pct", type=float, default=10.0)
    parser.add_argument("--fd-growth", type=int, default=5)
    parser.add_argument("--upstream-ms", type=int, default=0, help="the fake upstream's latency")
    args = parser.parse_args()
    seconds = args.minutes * 60
    warmup = args.warmup_seconds if args.warmup_seconds is not None else min(60.0, seconds / 4)

    with fresh_database("chargegate_soak") as dsn, ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream())
        set_upstream_delay(upstream, args.upstream_ms)
        env = chargegate_env(dsn, upstream)
        migrate(env)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "chargegate"), "serve", "--port", str(port), "--workers", "1"]
        proc = stack.enter_context(process(command, env, f"{base_url}/healthz"))
        api_key = set_up_chargegate(base_url)
        print(
            f"soak: {args.minutes:g} min at {args.rate:g} req/s against chargegate pid {proc.pid}"
            f" (1 worker, PostgreSQL, fake upstream {args.upstream_ms} ms); sample every "
            f"{args.interval:g} s, baseline after {warmup:g} s",
            flush=True,
        )
        samples, outcomes, load = asyncio.run(
            soak(
                base_url,
                api_key,
                proc.pid,
                port,
                urlsplit(upstream).port or 80,
                args.rate,
                seconds,
                args.interval,
            )
        )

    print()
    print(
        "| t (s) | RSS MB | fds | own fds | HTTP in | upstream | DB | CLOSE_WAIT | threads "
        "| sent | answered 200 | failed | p50 ms | p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        print(
            f"| {s.t:.0f} | {s.rss_mb:.1f} | {s.fds} | {s.own_fds} | {s.http_in} | {s.upstream} "
            f"| {s.db} | {s.close_wait} | {s.threads} | {s.sent} | {s.answered} | {s.failed} "
            f"| {s.p50_ms:.1f} | {s.p99_ms:.1f} |"
        )
    print()

    baseline = next((s for s in samples if s.t >= warmup), samples[-1])
    end = samples[-1]
    after = [s for s in samples if s.t >= warmup]
    slope = (
        statistics.linear_regression([s.t for s in after], [s.rss_mb for s in after]).slope * 60
        if len(after) >= 2
        else 0.0
    )
    rss_growth = end.rss_mb - baseline.rss_mb
    rss_pct = 100 * rss_growth / baseline.rss_mb
    fd_growth = end.own_fds - baseline.own_fds
    failed = [o for o in outcomes if o.status != 200]
    latencies = [o.latency for o in outcomes if o.status == 200]
    duration = max((o.sent_at for o in outcomes), default=0.0)
    print(
        f"- requests: {len(outcomes)} sent ({len(outcomes) / max(duration, 1e-9):.1f} req/s), "
        f"{len(outcomes) - len(failed)} answered 200, {len(failed)} failed; "
        f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f}"
        f" ms, max {max(latencies, default=0) * 1000:.1f} ms; generator lag max "
        f"{load.max_lag * 1000:.1f} ms, in flight max {load.max_in_flight}"
    )
    print(f"- answers: {dict(describe(outcomes).most_common())}")
    print(
        f"- RSS: {baseline.rss_mb:.1f} MB at {baseline.t:.0f} s -> {end.rss_mb:.1f} MB at "
        f"{end.t:.0f} s ({rss_growth:+.1f} MB, {rss_pct:+.1f} %; trend after warm-up "
        f"{slope:+.2f} MB/min); peak {max(s.rss_mb for s in samples):.1f} MB"
    )
    print(
        f"- own fds (all but live HTTP connections in and out): {baseline.own_fds} -> "
        f"{end.own_fds} ({fd_growth:+d}); all fds {baseline.fds} -> {end.fds}, inbound HTTP "
        f"{baseline.http_in} -> {end.http_in}, upstream {baseline.upstream} -> {end.upstream}, "
        f"DB {baseline.db} -> {end.db}, CLOSE_WAIT {baseline.close_wait} -> {end.close_wait}; "
        f"threads {baseline.threads} -> {end.threads}"
    )

    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({"args": vars(args), "samples": [asdict(s) for s in samples]}, indent=2)
    )

    problems = []
    if rss_growth > args.rss_growth_mb or rss_pct > args.rss_growth_pct:
        problems.append(
            f"RSS grew {rss_growth:+.1f} MB ({rss_pct:+.1f} %) after warm-up "
            f"(limits {args.rss_growth_mb:g} MB, {args.rss_growth_pct:g} %)"
        )
    if fd_growth > args.fd_growth:
        problems.append(f"own file descriptors grew by {fd_growth} (limit {args.fd_growth})")
    if failed:
        problems.append(f"{len(failed)} requests failed")
    print()
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}")
        return 1
    print("PASS: RSS and file descriptors flat after warm-up, no request failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
