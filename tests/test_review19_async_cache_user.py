"""Review (issue 19) of ``AsyncCache`` and ``cached`` as a cashews / aiocache user
tries them on a real event loop against a real Redis: each test is a defect found that
way, reproduced before its fix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import statekit.cache as cache_module
from statekit.cache import AsyncCache, Cache

pytestmark = pytest.mark.redis
T = TypeVar("T")
EARLY = 1e9


async def _closing(cache: AsyncCache, body: Callable[[AsyncCache], Awaitable[T]]) -> T:
    try:
        return await asyncio.wait_for(body(cache), 30)  # a guard against a hang, not a timing
    finally:
        await cache.aclose()


def _always_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """XFetch always draws an early refresh (with ``xfetch_beta=EARLY``): its random
    draw made tiny, -log(u) is huge."""
    monkeypatch.setattr(cache_module, "_random", lambda: 1e-300)


def test_a_failed_early_refresh_serves_the_fresh_value(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """XFetch picks a caller to recompute a value before it expires; when that compute
    raises, the caller gets the value it read, which is still fresh (cashews' early
    refresh never fails its caller either), and the error is logged. It raised: a
    random caller's request failed for a value the cache held and served to the
    others. The value stays, and a later refresh that works stores its result."""
    _always_early(monkeypatch)
    outcomes: list[Any] = ["v1", RuntimeError("the database is down"), "v2"]

    async def compute() -> str:
        await asyncio.sleep(0.01)  # a compute time: XFetch weighs the draw by it
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    async def body(c: AsyncCache) -> None:
        assert await c.get_or_set("report", compute, ttl=60) == "v1"
        with caplog.at_level(logging.WARNING, logger="statekit.cache"):
            assert await c.get_or_set("report", compute, ttl=60) == "v1"
        assert c.stats()["early_refreshes"] == 1
        assert "the database is down" in caplog.text and "report" in caplog.text
        assert await c.get("report") == "v1"
        assert await c.get_or_set("report", compute, ttl=60) == "v2"  # the next refresh stores
        assert await c.get("report") == "v2" and outcomes == []

    asyncio.run(_closing(AsyncCache(redis_url, namespace="early-error", xfetch_beta=EARLY), body))


def test_a_failed_early_refresh_of_a_cached_function_and_the_sync_cache(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through ``cached`` on an ``async def``, and on the sync ``Cache`` (one
    plan for both). A compute failing on a miss still raises (nothing to serve), and
    a failure other than an ``Exception`` (a cancellation) is not swallowed."""
    _always_early(monkeypatch)
    failing = {"on": False}

    async def body(c: AsyncCache) -> None:
        @c.cached(ttl=60)
        async def price(item: str) -> str:
            await asyncio.sleep(0.01)
            if failing["on"]:
                raise ConnectionError("pricing service down")
            return f"{item}: 4 EUR"  # (a str: an int is stored raw, with no early refresh)

        failing["on"] = True
        with pytest.raises(ConnectionError):
            await price("book")  # a miss: nothing to serve
        failing["on"] = False
        assert await price("book") == "book: 4 EUR"
        failing["on"] = True
        assert await price("book") == "book: 4 EUR"

        started = asyncio.Event()

        async def endless() -> str:
            started.set()
            await asyncio.sleep(3600)
            return "never"

        assert await c.get_or_set("title", lambda: asyncio.sleep(0.01, "seen"), ttl=60) == "seen"
        task = asyncio.ensure_future(c.get_or_set("title", endless, ttl=60))  # refreshes early
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(_closing(AsyncCache(redis_url, namespace="early-cached", xfetch_beta=EARLY), body))

    sync = Cache(redis_url, namespace="early-sync", xfetch_beta=EARLY)
    try:
        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) > 1:
                raise OSError("down")
            return "kept"

        assert sync.get_or_set("k", flaky, ttl=60) == "kept"
        assert sync.get_or_set("k", flaky, ttl=60) == "kept" and len(calls) == 2
    finally:
        sync.close()
