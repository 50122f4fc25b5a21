"""Database outage under load: every decision answered is a correct one, and none is lost.

    .venv/bin/python -m bench.db_outage [--mode proxy] [--rate 200] [--seconds 60] \\
        [--outage-at 20] [--outage-seconds 10]

Starts a fake upstream and chargegate (`chargegate serve`, 1 worker, a fresh PostgreSQL
database; the helpers of bench/run.py), drives POST /sessions/authorize open-loop at --rate
requests per second with unique tokens (bench/soak.py's OpenLoop), and takes the database away
for --outage-seconds from --outage-at seconds on:

- `--mode proxy` (the default, harmless to anything else on this PostgreSQL): chargegate's
  CHARGEGATE_DATABASE_URL points through bench/tcp_proxy.py (run as its own process), whose cut
  closes every connection and refuses new ones, as a stopped server would;
- `--mode pg`: PostgreSQL itself is stopped (`pg_ctlcluster --skip-systemctl-redirect <version>
  main stop`, then `start`). This stops the database for EVERY user of this cluster: only on a
  machine where nothing else uses it.

Afterwards it counts per phase (before, during, after the outage) the requests sent, answered
200 (by decision/reason), 503, other statuses and transport errors, and checks, with PostgreSQL
back (polling up to --flush-seconds for the service to write what it buffered), that every
decision_id answered with 200 is in the `decisions` table with the decision and reason it was
answered with.

Exit 1 when an answered decision is missing or stored differently, a 200 answer's decision is not
the one the policy gives (the fake upstream's score 0.9 over the 0.5 threshold: allow/score_ok,
--expect to change), an answer is neither 200 nor 503 (API.md: while the database is away
authorize answers from the last known state, or 503), a request got no answer at all, or the
service has not recovered (answers other than 200, or /readyz not 200, from --recovery-seconds
after the database is back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import aiohttp
import asyncpg
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
    terminate,
)
from bench.soak import OpenLoop, Outcome, describe, percentile, set_upstream_delay


@dataclass
class Outage:
    """Takes the database away and gives it back; records when (seconds of the load run)."""

    mode: str
    proxy: subprocess.Popen[str] | None = None
    began: float | None = None  # the cut / stop was started
    down: float | None = None  # ... and had taken effect
    restoring: float | None = None  # the restore / start was started
    back: float | None = None  # ... and had taken effect
    active: bool = False

    async def begin(self, now: float) -> None:
        self.began = now
        self.active = True
        await (self._proxy("cut") if self.mode == "proxy" else self._pg("stop"))

    async def end(self, now: float) -> None:
        self.restoring = now
        await (self._proxy("restore") if self.mode == "proxy" else self._pg("start"))
        self.active = False

    def ensure_ended(self) -> None:
        """Whatever happened to the run: the database is given back (synchronously)."""
        if self.active and self.mode == "pg":
            subprocess.run(pg_ctl("start"), check=True)
        self.active = False

    async def _proxy(self, action: str) -> None:
        assert self.proxy is not None
        assert self.proxy.stdout is not None
        self.proxy.send_signal(signal.SIGUSR1 if action == "cut" else signal.SIGUSR2)
        line = await asyncio.get_running_loop().run_in_executor(None, self.proxy.stdout.readline)
        if not line.startswith(f"{action} done"):
            raise RuntimeError(f"tcp proxy answered {line!r} to {action}")

    async def _pg(self, action: str) -> None:
        proc = await asyncio.create_subprocess_exec(*pg_ctl(action))
        if await proc.wait() != 0:
            raise RuntimeError(f"pg_ctlcluster {action} failed")


def pg_ctl(action: str) -> list[str]:
    versions = sorted(os.listdir("/etc/postgresql"))
    if len(versions) != 1:
        raise RuntimeError(f"expected one PostgreSQL version in /etc/postgresql, got {versions}")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", action]


@contextmanager
def tcp_proxy(target_port: int = 5432) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """bench/tcp_proxy.py as its own process (so it never competes with the load generator's
    event loop); yields the process and the port it listens on."""
    proc = subprocess.Popen(
        [str(BIN / "python"), "-m", "bench.tcp_proxy", "--target", f"127.0.0.1:{target_port}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening 127.0.0.1:<port> pid <pid>"
        if not line.startswith("listening "):
            raise RuntimeError(f"tcp proxy did not start: {line!r}")
        yield proc, int(line.split()[1].rsplit(":", 1)[1])
    finally:
        terminate(proc, 10)


@dataclass
class Readiness:
    """GET /readyz twice a second: (seconds of the load run, status or error) at each change."""

    changes: list[tuple[float, str]] = field(default_factory=list)

    async def watch(self, base_url: str, load: OpenLoop) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(f"{base_url}/readyz") as response:
                        state = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    state = type(exc).__name__
                if not self.changes or self.changes[-1][1] != state:
                    self.changes.append((load.elapsed(), state))
                await asyncio.sleep(0.5)


@dataclass
class Flush:
    """When the decisions answered during the outage reached the table (seconds of the run)."""

    answered: int = 0
    stored: int = 0
    complete_at: float | None = None

    async def watch(self, dsn: str, load: OpenLoop, began: float, back: float) -> None:
        """Polls twice a second from the database's return until every decision answered
        for a request sent during the outage is in the table."""
        while True:
            await asyncio.sleep(0.5)
            answering = any(began <= t < back for t in load.pending.values())
            ids = [
                o.decision_id
                for o in load.outcomes
                if o.status == 200 and o.decision_id and began <= o.sent_at < back
            ]
            try:
                conn = await asyncpg.connect(dsn, timeout=2)
                try:
                    stored = await conn.fetchval(
                        "SELECT count(*) FROM decisions WHERE decision_id = ANY($1::text[])", ids
                    )
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                continue
            self.answered, self.stored = len(ids), stored
            if stored == len(ids) and not answering:
                self.complete_at = load.elapsed()
                return


async def run_load(
    base_url: str,
    dsn: str,
    api_key: str,
    outage: Outage,
    rate: float,
    seconds: float,
    outage_at: float,
    outage_seconds: float,
) -> tuple[list[Outcome], OpenLoop, Readiness, Flush]:
    load = OpenLoop(base_url, api_key, rate)
    readiness = Readiness()
    flush = Flush()

    async def schedule() -> None:
        await asyncio.sleep(outage_at - load.elapsed())
        began = load.elapsed()
        print(f"  {began:5.1f} s: outage begins ({outage.mode})", flush=True)
        await outage.begin(began)
        outage.down = load.elapsed()
        await asyncio.sleep(max(0.0, outage_at + outage_seconds - load.elapsed()))
        print(f"  {load.elapsed():5.1f} s: database back", flush=True)
        await outage.end(load.elapsed())
        back = outage.back = load.elapsed()
        await flush.watch(dsn, load, began, back)

    run = asyncio.create_task(load.run(seconds))
    await asyncio.sleep(0)  # the run has started its clock
    tasks = [asyncio.create_task(schedule()), asyncio.create_task(readiness.watch(base_url, load))]
    try:
        outcomes = await run
        # An outage longer than the run still ends; the flush is watched a little longer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(tasks[0]),
                timeout=max(0.0, outage_at + outage_seconds - load.elapsed()) + 10,
            )
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return outcomes, load, readiness, flush


@dataclass
class Stored:
    missing: list[str]
    different: list[tuple[str, tuple[str, str], tuple[str, str]]]  # id, answered, stored
    waited: float


async def check_stored(dsn: str, answered: dict[str, tuple[str, str]], wait: float) -> Stored:
    """Polls the decisions table until every answered decision is there (or `wait` is over)."""
    start = time.monotonic()
    ids = list(answered)
    found: dict[str, tuple[str, str]] = {}
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT decision_id, decision, reason FROM decisions "
                    "WHERE decision_id = ANY($1::text[])",
                    ids,
                )
            finally:
                await conn.close()
            found = {r["decision_id"]: (r["decision"], r["reason"]) for r in rows}
        except (OSError, asyncpg.PostgresError):
            pass  # PostgreSQL still starting (pg mode): try again
        waited = time.monotonic() - start
        if len(found) == len(ids) or waited >= wait:
            break
        await asyncio.sleep(1)
    missing = [i for i in ids if i not in found]
    different = [(i, answered[i], found[i]) for i in ids if i in found and found[i] != answered[i]]
    return Stored(missing, different, waited)


def phase_table(outcomes: list[Outcome], outage: Outage, seconds: float) -> None:
    assert outage.began is not None
    back = outage.back if outage.back is not None else seconds
    phases = [
        ("before", 0.0, outage.began),
        ("during", outage.began, back),
        ("after", back, float("inf")),
    ]
    print(
        "| phase | sent at (s) | sent | 200 allow | 200 deny | 503 | other status "
        "| no answer | p50 ms | p99 ms | max ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, lo, hi in [*phases, ("all", 0.0, float("inf"))]:
        group = [o for o in outcomes if lo <= o.sent_at < hi]
        latencies = [o.latency for o in group if o.status is not None]
        cells = [
            name,
            f"{lo:.1f}-{min(hi, seconds):.1f}",
            len(group),
            sum(1 for o in group if o.status == 200 and o.decision == "allow"),
            sum(1 for o in group if o.status == 200 and o.decision == "deny"),
            sum(1 for o in group if o.status == 503),
            sum(1 for o in group if o.status not in (None, 200, 503)),
            sum(1 for o in group if o.status is None),
            f"{percentile(latencies, 50) * 1000:.1f}",
            f"{percentile(latencies, 99) * 1000:.1f}",
            f"{max(latencies, default=0) * 1000:.1f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("proxy", "pg"), default="proxy")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--outage-at", type=float, default=20.0)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--flush-seconds", type=float, default=30.0)
    parser.add_argument(
        "--recovery-seconds",
        type=float,
        default=5.0,
        help="from this long after the database is back, every answer must be 200 again",
    )
    parser.add_argument(
        "--expect", default="allow/score_ok", help="decision/reason every 200 answer must give"
    )
    parser.add_argument("--upstream-ms", type=int, default=0, help="the fake upstream's latency")
    args = parser.parse_args()
    expected = tuple(args.expect.split("/", 1))

    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    log = out / f"db_outage-{time.strftime('%Y%m%d-%H%M%S')}.log"
    outage = Outage(args.mode)
    with fresh_database("chargegate_outage") as dsn, ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream())
        set_upstream_delay(upstream, args.upstream_ms)
        env = chargegate_env(dsn, upstream)
        migrate(env)
        if args.mode == "proxy":
            outage.proxy, proxy_port = stack.enter_context(tcp_proxy())
            env["CHARGEGATE_DATABASE_URL"] = dsn.replace(
                "@127.0.0.1:5432/", f"@127.0.0.1:{proxy_port}/"
            )
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "chargegate"), "serve", "--port", str(port), "--workers", "1"]
        stack.enter_context(process(command, env, f"{base_url}/healthz", log=log))
        api_key = set_up_chargegate(base_url)
        print(
            f"db outage ({args.mode}): {args.seconds:g} s at {args.rate:g} req/s, the database "
            f"away from {args.outage_at:g} s for {args.outage_seconds:g} s; chargegate "
            f"DB URL {env['CHARGEGATE_DATABASE_URL']}; server log {log.relative_to(ROOT)}",
            flush=True,
        )
        try:
            outcomes, load, readiness, flush = asyncio.run(
                run_load(
                    base_url,
                    dsn,
                    api_key,
                    outage,
                    args.rate,
                    args.seconds,
                    args.outage_at,
                    args.outage_seconds,
                )
            )
        finally:
            outage.ensure_ended()
        answered = {
            o.decision_id: (o.decision or "", o.reason or "")
            for o in outcomes
            if o.status == 200 and o.decision_id
        }
        print(f"  checking {len(answered)} answered decisions in PostgreSQL ...", flush=True)
        stored = asyncio.run(check_stored(dsn, answered, args.flush_seconds))
        # readiness after the flush wait too: recovery may take a moment
        final_ready = _readyz(base_url)

    assert outage.began is not None
    print()
    print(
        f"outage: cut started at {outage.began:.1f} s, effective {outage.down or 0:.1f} s; "
        f"restore started {outage.restoring or 0:.1f} s, done {outage.back or 0:.1f} s "
        f"(of the load run)"
    )
    print(
        "readiness (/readyz) changes: "
        + ", ".join(f"{t:.1f} s {state}" for t, state in readiness.changes)
        + f"; after the flush wait {final_ready}"
    )
    print()
    phase_table(outcomes, outage, args.seconds)
    print()
    print(f"- answers: {dict(describe(outcomes).most_common())}")
    print(
        f"- generator: {len(outcomes)} sent, lag max {load.max_lag * 1000:.1f} ms, "
        f"in flight max {load.max_in_flight}"
    )
    if flush.complete_at is not None and outage.back is not None:
        flushed = (
            f"all {flush.answered} stored {flush.complete_at - outage.back:.1f} s after the "
            "database was back (polled twice a second)"
        )
    else:
        flushed = f"{flush.stored} of {flush.answered} stored by the end of the load"
    print(f"- decisions answered during the outage: {flushed}")
    print(
        f"- decisions table: {len(answered) - len(stored.missing)} of {len(answered)} answered "
        f"decisions present after {stored.waited:.1f} s, {len(stored.missing)} missing, "
        f"{len(stored.different)} stored with another decision/reason"
    )

    problems: list[str] = []
    wrong = [o for o in outcomes if o.status == 200 and (o.decision, o.reason) != expected]
    if wrong:
        kinds = Counter(f"{o.decision}/{o.reason}" for o in wrong)
        problems.append(f"{len(wrong)} answers with a decision other than {args.expect}: {kinds}")
    if stored.missing:
        problems.append(
            f"{len(stored.missing)} answered decisions missing from the decisions table "
            f"(e.g. {stored.missing[:3]})"
        )
    if stored.different:
        problems.append(
            f"{len(stored.different)} decisions stored differently from the answer "
            f"(e.g. {stored.different[:3]})"
        )
    other = [o for o in outcomes if o.status not in (None, 200, 503)]
    if other:
        problems.append(f"{len(other)} answers neither 200 nor 503: {describe(other)}")
    unanswered = [o for o in outcomes if o.status is None]
    if unanswered:
        problems.append(f"{len(unanswered)} requests without an answer: {describe(unanswered)}")
    back = outage.back if outage.back is not None else args.seconds
    late = [o for o in outcomes if o.sent_at >= back + args.recovery_seconds and o.status != 200]
    if late:
        problems.append(
            f"not recovered: {len(late)} answers other than 200 from {args.recovery_seconds:g} s "
            f"after the database was back: {describe(late)}"
        )
    if final_ready != "200":
        problems.append(f"not recovered: /readyz {final_ready} at the end")
    print()
    if problems:
        for problem in problems:
            print(f"FAIL: {problem}")
        return 1
    print("PASS: every answered decision is correct and stored; the service recovered by itself")
    return 0


def _readyz(base_url: str) -> str:
    try:
        return str(httpx.get(f"{base_url}/readyz", timeout=5).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
