"""RefreshingCache: fresh hits, stale-while-reloading, one load at a time, invalidation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.cache import RefreshingCache


class Source:
    def __init__(self) -> None:
        self.value = 1
        self.loads = 0
        self.delay = 0.0
        self.fail = False

    async def load(self, key: str) -> int:
        self.loads += 1
        value, fail = self.value, self.fail  # read when the load starts, like a query
        await asyncio.sleep(self.delay)
        if fail:
            raise RuntimeError("database away")
        return value


async def test_a_fresh_value_is_served_without_a_load() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=10, grace=5)
    assert await cache.get("k") == 1
    source.value = 2
    assert await cache.get("k") == 1
    assert source.loads == 1


async def test_concurrent_misses_share_one_load() -> None:
    source = Source()
    source.delay = 0.05
    cache = RefreshingCache(source.load, ttl=10, grace=5)
    assert await asyncio.gather(*(cache.get("k") for _ in range(50))) == [1] * 50
    assert source.loads == 1


async def test_a_stale_value_is_served_while_one_reload_runs() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.05, grace=5)
    await cache.get("k")
    await asyncio.sleep(0.06)
    source.value, source.delay = 2, 0.05
    # Within the grace period: the old value at once, and a single reload behind it.
    assert await asyncio.gather(*(cache.get("k") for _ in range(20))) == [1] * 20
    await asyncio.sleep(0.08)
    assert await cache.get("k") == 2
    assert source.loads == 2


async def test_past_the_grace_period_callers_wait_for_the_reload() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.02, grace=0.02)
    await cache.get("k")
    await asyncio.sleep(0.05)
    source.value = 2
    assert await cache.get("k") == 2


async def test_invalidate_forgets_now_and_ignores_a_load_under_way() -> None:
    source = Source()
    source.delay = 0.05
    cache = RefreshingCache(source.load, ttl=10, grace=5)
    first = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0.01)
    cache.invalidate("k")
    source.value = 2
    assert await first == 1  # its caller gets what it waited for ...
    assert await cache.get("k") == 2  # ... but the cache does not keep it
    assert source.loads == 2


async def test_a_failed_background_reload_is_logged_and_raised_past_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.02, grace=0.05)
    await cache.get("k")
    await asyncio.sleep(0.03)
    source.fail = True
    with caplog.at_level(logging.WARNING, logger="chargegate.cache"):
        assert await cache.get("k") == 1
        await asyncio.sleep(0.01)
    assert "state reloads failing" in caplog.text
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):
        await cache.get("k")


async def test_the_cache_never_holds_more_than_max_entries() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=10, grace=5, max_entries=3)
    for n in range(10):
        await cache.get(f"k{n}")
    assert len(cache._entries) <= 3


async def test_while_loads_fail_the_last_value_is_served_up_to_the_stale_limit() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.01, grace=0.01, stale=0.3, retry=0.05)
    assert await cache.get("k") == 1
    source.fail = True
    await asyncio.sleep(0.03)
    # Past ttl + grace: the reload fails, the last known value is served.
    assert await cache.get("k") == 1
    loads_after_first_failure = source.loads
    # While failing, callers get the value at once and reloads are tried once per `retry`.
    assert await asyncio.gather(*(cache.get("k") for _ in range(20))) == [1] * 20
    assert source.loads == loads_after_first_failure
    await asyncio.sleep(0.3)
    # Past the stale limit the failure is the caller's.
    with pytest.raises(RuntimeError):
        await cache.get("k")


async def test_after_a_failure_spell_a_working_load_replaces_the_stale_value() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.01, grace=0.01, stale=5, retry=0.02)
    await cache.get("k")
    source.fail = True
    await asyncio.sleep(0.03)
    assert await cache.get("k") == 1
    source.fail, source.value = False, 2
    await asyncio.sleep(0.03)
    await cache.get("k")  # kicks the retry
    await asyncio.sleep(0.01)
    assert await cache.get("k") == 2


async def test_without_a_stale_allowance_a_failed_load_is_raised() -> None:
    source = Source()
    cache = RefreshingCache(source.load, ttl=0.01, grace=0.01)
    await cache.get("k")
    source.fail = True
    await asyncio.sleep(0.03)
    with pytest.raises(RuntimeError):
        await cache.get("k")
