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
    """

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        ttl: float,
        grace: float,
        max_entries: int = 10_000,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._grace = grace
        self._max_entries = max_entries
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            age = time.monotonic() - entry.loaded_at
            if age <= self._ttl:
                return entry.value
            if age <= self._ttl + self._grace:
                self._reload(key)
                return entry.value
        # Shielded: a caller that gives up must not cancel the load others wait for.
        return await asyncio.shield(self._reload(key))

    def invalidate(self, key: K) -> None:
        """Forget `key` now (this replica changed it); a load under way is not used."""
        self._entries.pop(key, None)
        self._loading.pop(key, None)

    def _reload(self, key: K) -> asyncio.Task[V]:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load_and_keep(key))
            self._loading[key] = task
            task.add_done_callback(_observe)
        return task

    async def _load_and_keep(self, key: K) -> V:
        loaded_at = time.monotonic()
        try:
            value = await self._load(key)
        finally:
            task = self._loading.get(key)
            if task is asyncio.current_task():
                del self._loading[key]
            else:
                task = None
        if task is not None:  # not invalidated while loading
            if key not in self._entries and len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[key] = _Entry(loaded_at, value)
        return value


def _observe(task: asyncio.Task[object]) -> None:
    # A background reload nobody awaited: its failure must still be seen (and not warned
    # about as "never retrieved"); the next caller past the grace period gets it raised.
    if not task.cancelled() and task.exception() is not None:
        log.warning("state reload failed", extra={"error_type": type(task.exception()).__name__})
