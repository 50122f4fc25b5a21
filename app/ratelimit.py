"""Abuse controls on POST /sessions/authorize: per-key and per-operator rate limits, and a
per-key cap on concurrent calls. A refused call answers 429 with Retry-After before it
claims its token or reaches Google.

- Per API key (CHARGEGATE_KEY_RATE_LIMIT = r calls/s): a token bucket holding up to 2r
  (at least 1) tokens, refilled at r per second. Over any interval of T seconds a key gets
  at most 2r + r*T calls, across all replicas.
- Per operator (the policy's max_authorize_per_minute = N): a fixed window per UTC minute;
  at most N calls are allowed in each calendar minute, across all replicas, exactly. Up to
  2N can pass in 60 s that straddle a minute boundary; Google counts its per-minute
  assessment quota the same way, which is what this limit protects.

On PostgreSQL both are counted in the `rate_limits` table, each check one INSERT … ON
CONFLICT DO UPDATE … WHERE … RETURNING on the database's clock: the row lock serialises
replicas and their clocks do not matter. Nothing runs when a limit is off. If the database
cannot be reached, each replica counts on its own with the same numbers (so N replicas
allow up to N times the limit) until it answers again; that is logged once per outage.
The embedded SQLite serves one process, so it counts in memory, with the same semantics.

The concurrency cap (CHARGEGATE_KEY_MAX_CONCURRENT_AUTHORIZE) is counted per replica.
An idempotent retry counts as a call: it is limited before its stored answer is looked up.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import is_unavailable
from app.errors import TooManyRequests
from app.metrics import RATE_LIMITED
from app.settings import Settings

log = logging.getLogger("chargegate.ratelimit")

# While the database is unreachable, how often one call tries it again (the others count
# in memory at once rather than each waiting for a connect timeout).
DATABASE_RETRY_SECONDS = 1.0

_REFUSED_KEY = RATE_LIMITED.labels("key")
_REFUSED_OPERATOR = RATE_LIMITED.labels("operator")
_REFUSED_CONCURRENCY = RATE_LIMITED.labels("key_concurrency")

# The bucket refilled on the database's clock; a refused call leaves the row unchanged.
# GREATEST keeps `updated_at` monotonic when a statement that read the clock earlier gets
# the row lock later (it then refills nothing).
_LEVEL = (
    "LEAST(CAST(:capacity AS float8), s.tokens + CAST(:rate AS float8)"
    " * GREATEST(0, EXTRACT(EPOCH FROM (excluded.updated_at - s.updated_at))::float8))"
)
_TAKE_KEY = text(
    "INSERT INTO rate_limits AS s (scope, subject, tokens, updated_at)"  # noqa: S608 - constants
    " VALUES ('key', :subject, CAST(:capacity AS float8) - 1, clock_timestamp())"
    " ON CONFLICT (scope, subject) DO UPDATE"
    f" SET tokens = {_LEVEL} - 1, updated_at = GREATEST(s.updated_at, excluded.updated_at)"
    f" WHERE {_LEVEL} >= 1"
    " RETURNING s.tokens"
)
_KEY_LEVEL = text(
    "SELECT LEAST(CAST(:capacity AS float8), tokens + CAST(:rate AS float8)"
    " * GREATEST(0, EXTRACT(EPOCH FROM (clock_timestamp() - updated_at))::float8))"
    " FROM rate_limits WHERE scope = 'key' AND subject = :subject"
)
# A call whose clock read still says the previous minute, but which gets the row after a
# call of the next minute, counts against the newer minute: never more than N per minute.
_TAKE_OPERATOR = text(
    "INSERT INTO rate_limits AS s (scope, subject, tokens, updated_at)"
    " VALUES ('operator', :subject, 1, date_trunc('minute', clock_timestamp(), 'UTC'))"
    " ON CONFLICT (scope, subject) DO UPDATE"
    " SET tokens = CASE WHEN s.updated_at >= excluded.updated_at THEN s.tokens + 1 ELSE 1 END,"
    " updated_at = GREATEST(s.updated_at, excluded.updated_at)"
    " WHERE s.updated_at < excluded.updated_at OR s.tokens < :limit"
    " RETURNING s.tokens"
)
_TO_NEXT_MINUTE = text(
    "SELECT EXTRACT(EPOCH FROM (date_trunc('minute', clock_timestamp(), 'UTC')"
    " + interval '1 minute' - clock_timestamp()))::float8"
)


def bucket_capacity(rate: float) -> float:
    # Twice the rate, but at least one call: below 0.5/s a bucket of 2r would never fill.
    return max(2.0 * rate, 1.0)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value - 1e-9))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class LocalCounters:
    """The same two limits counted in this process (embedded SQLite, database outages)."""

    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._windows: dict[str, tuple[int, int]] = {}

    def take_key(self, key_id: str, rate: float) -> int | None:
        """None when allowed; else the seconds until a call would be."""
        capacity = bucket_capacity(rate)
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.MAX_ENTRIES:
                self._buckets.clear()
            bucket = self._buckets[key_id] = _Bucket(capacity, now)
        level = min(capacity, bucket.tokens + rate * (now - bucket.at))
        bucket.at = now
        if level < 1:
            bucket.tokens = level
            return _seconds((1 - level) / rate)
        bucket.tokens = level - 1
        return None

    def take_operator(self, operator_id: str, limit: int) -> int | None:
        now = time.time()
        minute = int(now // 60)
        window, count = self._windows.get(operator_id, (minute, 0))
        if window != minute:
            count = 0
        if count >= limit:
            return _seconds(60 - now % 60)
        if operator_id not in self._windows and len(self._windows) >= self.MAX_ENTRIES:
            self._windows.clear()
        self._windows[operator_id] = (minute, count + 1)
        return None


class RateLimiter:
    """One per app instance; see the module docstring."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.key_rate = settings.key_rate_limit
        self._max_concurrent = settings.key_max_concurrent_authorize
        self._in_flight: dict[str, int] = {}
        self._local = LocalCounters()
        # Single statements: autocommit spares BEGIN and COMMIT.
        self._shared = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else None
        )
        self._outage_until: float | None = None

    def enter(self, key_id: str) -> None:
        """Counts one authorize call of `key_id` in flight; pair with `leave`."""
        in_flight = self._in_flight.get(key_id, 0)
        if in_flight >= self._max_concurrent:
            _REFUSED_CONCURRENCY.inc()
            raise TooManyRequests(
                f"This API key already has {in_flight} authorize calls in flight, the most "
                "allowed (CHARGEGATE_KEY_MAX_CONCURRENT_AUTHORIZE).",
                retry_after=1,
            )
        self._in_flight[key_id] = in_flight + 1

    def leave(self, key_id: str) -> None:
        in_flight = self._in_flight[key_id] - 1
        if in_flight:
            self._in_flight[key_id] = in_flight
        else:
            del self._in_flight[key_id]

    async def admit(self, key_id: str, operator_id: str, per_minute: int | None) -> None:
        """Raises TooManyRequests when the key's rate or the operator's minute is used up."""
        if self.key_rate is not None:
            retry_after = await self._take_key(key_id, self.key_rate)
            if retry_after is not None:
                _REFUSED_KEY.inc()
                raise TooManyRequests(
                    f"This API key is over its rate limit of {self.key_rate:g} authorize calls "
                    "per second (CHARGEGATE_KEY_RATE_LIMIT).",
                    retry_after=retry_after,
                )
        if per_minute is not None:
            retry_after = await self._take_operator(operator_id, per_minute)
            if retry_after is not None:
                _REFUSED_OPERATOR.inc()
                raise TooManyRequests(
                    f"Operator {operator_id} is over its limit of {per_minute} authorize calls "
                    "per minute (policy max_authorize_per_minute).",
                    retry_after=retry_after,
                )

    async def _take_key(self, key_id: str, rate: float) -> int | None:
        shared = self._shared_engine()
        if shared is not None:
            params = {"subject": key_id, "rate": rate, "capacity": bucket_capacity(rate)}
            try:
                async with shared.connect() as conn:
                    if (await conn.execute(_TAKE_KEY, params)).first() is not None:
                        self._database_answered()
                        return None
                    level = (await conn.execute(_KEY_LEVEL, params)).scalar_one_or_none()
                self._database_answered()
                return _seconds((1 - (level or 0.0)) / rate)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._database_failed(exc)
        return self._local.take_key(key_id, rate)

    async def _take_operator(self, operator_id: str, limit: int) -> int | None:
        shared = self._shared_engine()
        if shared is not None:
            params = {"subject": operator_id, "limit": limit}
            try:
                async with shared.connect() as conn:
                    if (await conn.execute(_TAKE_OPERATOR, params)).first() is not None:
                        self._database_answered()
                        return None
                    remaining = (await conn.execute(_TO_NEXT_MINUTE)).scalar_one()
                self._database_answered()
                return _seconds(remaining)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._database_failed(exc)
        return self._local.take_operator(operator_id, limit)

    def _shared_engine(self) -> AsyncEngine | None:
        if self._outage_until is not None:
            now = time.monotonic()
            if now < self._outage_until:
                return None
            # This call tries the database again; the others keep counting in memory.
            self._outage_until = now + DATABASE_RETRY_SECONDS
        return self._shared

    def _database_failed(self, exc: BaseException) -> None:
        if self._outage_until is None:
            log.warning(
                "rate limits are counted per replica while the database is unreachable",
                extra={"error_type": type(exc).__name__},
            )
        self._outage_until = time.monotonic() + DATABASE_RETRY_SECONDS

    def _database_answered(self) -> None:
        if self._outage_until is not None:
            self._outage_until = None
            log.info("rate limits are counted in the database again")
