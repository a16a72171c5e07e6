"""Review of the asyncio broadcaster (issue 18): defects found by using it as
FastAPI/uvicorn and plain asyncio users do, each reproduced against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from statekit.broadcast.aio import AsyncBroadcaster

pytestmark = pytest.mark.redis


def test_stop_after_the_scheduler_task_was_cancelled(redis_url: str) -> None:
    """``run_forever()`` in a task that is cancelled (a TaskGroup closing, a
    lifespan cancelling its background task), then ``await broadcaster.stop()`` on
    shutdown: stop() raised CancelledError into a caller nobody had cancelled
    (awaiting the cancelled scheduler task through shield), so the shutdown was
    cut short and the loop's connections were not given back."""
    prefix = "r" + uuid.uuid4().hex[:12]

    async def body() -> tuple[bool, int]:
        first = AsyncBroadcaster(redis_url, key_prefix=prefix)
        second = AsyncBroadcaster(redis_url, key_prefix=prefix)
        for b in (first, second):
            b.every(60, name="v", lease=30)(_one)
        task = asyncio.create_task(first.run_forever())
        for _ in range(500):  # until it leads
            if first.counters.get("leader_acquired"):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await first.stop()  # raised CancelledError here
        await second.run_pending()  # the lease was released: the other one leads at once
        await second.stop()
        return first.running, second.counters.get("leader_acquired")

    running, acquired = asyncio.run(body())
    assert running is False
    assert acquired == 1


async def _one() -> int:
    return 1
