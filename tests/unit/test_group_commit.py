"""GroupCommit: one write per batch of waiting callers, each caller gets its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.decisions.group_commit import GroupCommit


class Store:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = False

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("database away")
        return [item * 10 for item in items]


async def test_sequential_calls_are_each_written() -> None:
    # The next call arrives before the previous writer's task has finished: it must not
    # wait for a writer that has already left its loop.
    store = Store()
    commit = GroupCommit(store.write, parallel=1)
    for n in range(20):
        assert await asyncio.wait_for(commit.submit(n), 1) == n * 10
    assert store.batches == [[n] for n in range(20)]


async def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    store = Store(delay=0.02)
    commit = GroupCommit(store.write, parallel=1)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0.005)  # its write is under way
    results = await asyncio.gather(first, *(commit.submit(n) for n in range(1, 50)))
    assert results == [n * 10 for n in range(50)]
    assert store.batches == [[0], list(range(1, 50))]


async def test_at_most_parallel_writes_run_at_once() -> None:
    store = Store(delay=0.02)
    commit = GroupCommit(store.write, parallel=3)
    started = []
    for n in range(3):
        started.append(asyncio.create_task(commit.submit(n)))
        await asyncio.sleep(0.002)  # each starts its own writer
    await asyncio.gather(*started, *(commit.submit(n) for n in range(3, 30)))
    assert store.batches[:3] == [[0], [1], [2]]
    assert sorted(n for batch in store.batches for n in batch) == list(range(30))
    assert len(store.batches) <= 6


async def test_a_failed_write_fails_its_whole_batch_only() -> None:
    store = Store(delay=0.01)
    store.fail = True
    commit = GroupCommit(store.write, parallel=1)
    outcomes = await asyncio.gather(*(commit.submit(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    store.fail = False
    assert await commit.submit(7) == 70


async def test_batches_are_capped() -> None:
    store = Store(delay=0.01)
    commit = GroupCommit(store.write, parallel=1, max_batch=10)
    await asyncio.gather(*(commit.submit(n) for n in range(35)))
    assert max(len(b) for b in store.batches) <= 10


@pytest.mark.parametrize("parallel", [1, 4])
async def test_no_caller_is_left_waiting(parallel: int) -> None:
    store = Store()
    commit = GroupCommit(store.write, parallel=parallel)
    for _ in range(50):
        await asyncio.wait_for(asyncio.gather(*(commit.submit(n) for n in range(3))), 1)
