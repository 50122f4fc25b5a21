"""Group commit: writes that arrive while earlier ones are under way go out together.

At most `parallel` writers run at once; callers arriving meanwhile queue up and the next
free writer takes all of them (up to `max_batch`) in one statement. Each caller still
waits for its own row's commit, so "committed before the answer" holds; under load the
database round trips per request fall from one to a fraction of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        parallel: int,
        max_batch: int = 200,
    ) -> None:
        self._write = write
        self._parallel = parallel
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        # Counted here, not by the tasks' done-callbacks: those run a loop turn later, and a
        # caller arriving in between would count a writer that has already left its loop.
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        if self._active < self._parallel and not self._waiting:
            # Nobody to group with: write it from the caller's own task, no hand-off.
            self._active += 1
            try:
                return (await self._write([item]))[0]
            finally:
                self._active -= 1
                if self._waiting:
                    self._start_writer()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._active < self._parallel:
            self._start_writer()
        return await future

    def _start_writer(self) -> None:
        self._active += 1
        task = asyncio.create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: len(batch)]
                await self._write_batch(batch)
        finally:
            self._active -= 1

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
