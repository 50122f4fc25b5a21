"""A small read-through cache for state that changes rarely and is read on every request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("chargegate.cache")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[V]):
    loaded_at: float
    value: V


class RefreshingCache(Generic[K, V]):
    """Values from `load(key)`, fresh for `ttl` seconds after they were read.

    A value up to `grace` seconds past its ttl is still served while one background reload
    runs: a busy replica must not stall every request on the same reload once per ttl.
    Older than that, callers wait for the reload. Concurrent loads of a key are one load.

    While loads fail (the database is away), a value up to `stale` seconds old is served
    as it is, and a reload is tried at most once per `retry` seconds; past that age the
    load's error is raised.
    """

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        ttl: float,
        grace: float,
        max_entries: int = 10_000,
        stale: float = 0.0,
        retry: float = 1.0,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._grace = grace
        self._stale = stale
        self._retry = retry
        self._max_entries = max_entries
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}
        self._failing_since: float | None = None
        self._last_failure = 0.0

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry.loaded_at
            if age <= self._ttl:
                return entry.value
            if age <= self._ttl + self._grace:
                self._reload(key)
                return entry.value
            if self._failing_since is not None and age <= self._stale:
                if time.monotonic() - self._last_failure >= self._retry:
                    self._reload(key)
                return entry.value
        try:
            # Shielded: a caller that gives up must not cancel the load others wait for.
            return await asyncio.shield(self._reload(key))
        except Exception:
            if entry is not None and time.monotonic() - entry.loaded_at <= self._stale:
                return entry.value
            raise

    def invalidate(self, key: K) -> None:
        """Forget `key` now (this replica changed it); a load under way is not used."""
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def _reload(self, key: K) -> asyncio.Task[V]:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load_and_keep(key))
            self._loading[key] = task
            # A background reload nobody awaits: its error is still retrieved (and logged by
            # the failure bookkeeping below), never warned about as "never retrieved".
            task.add_done_callback(_retrieve)
        return task

    async def _load_and_keep(self, key: K) -> V:
        loaded_at = time.monotonic()
        try:
            value = await self._load(key)
        except Exception as exc:
            self._note_failure(exc)
            raise
        finally:
            task = self._loading.get(key)
            if task is asyncio.current_task():
                del self._loading[key]
            else:
                task = None
        self._note_success()
        if task is not None:  # not invalidated while loading
            if key not in self._entries and len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = _Entry(loaded_at, value)
        return value

    def _note_failure(self, exc: Exception) -> None:
        self._last_failure = time.monotonic()
        if self._failing_since is None:
            self._failing_since = self._last_failure
            log.warning(
                "state reloads failing; serving the last known state",
                extra={"error_type": type(exc).__name__, "stale_limit_seconds": self._stale},
            )

    def _note_success(self) -> None:
        if self._failing_since is not None:
            log.info(
                "state reloads work again",
                extra={"failing_seconds": round(time.monotonic() - self._failing_since, 1)},
            )
            self._failing_since = None


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
