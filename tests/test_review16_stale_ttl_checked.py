"""get_or_set(stale_ttl=...) and cached(stale_ttl=...) of ``inf``, ``nan`` or not a
number: the value was computed (the compute run, the lock taken), then storing it
failed with an OverflowError, a ValueError about NaN or a TypeError from a comparison.
A ValueError naming stale_ttl now, before any compute or I/O; cached() says so when it
decorates. Negative stays as it was (no window)."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from statekit.cache import AsyncCache, Cache

pytestmark = pytest.mark.redis

_BAD = [math.inf, math.nan, "30", True]


@pytest.fixture(params=["redis", "memory"])
def url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return redis_url if request.param == "redis" else f"memory://review16-{uuid.uuid4().hex}"


@pytest.mark.parametrize("bad", _BAD, ids=repr)
def test_get_or_set_refuses_before_computing(url: str, bad: Any) -> None:
    cache = Cache(url, namespace=f"review16-stale-{uuid.uuid4().hex}")
    computed: list[int] = []
    try:
        with pytest.raises(ValueError, match="stale_ttl"):
            cache.get_or_set("k", lambda: computed.append(1) or "v", ttl=60, stale_ttl=bad)
        assert computed == [] and cache.get("k") is None
        assert cache.stats()["recomputes"] == 0
        assert cache.get_or_set("k", lambda: "v", ttl=60, stale_ttl=-1) == "v"  # as before: no window
        kept = cache._be().get_with_ttl("k").ttl_ms
        assert kept is not None and 50_000 < kept <= 60_000, kept
    finally:
        cache.close()


@pytest.mark.parametrize("bad", _BAD, ids=repr)
def test_cached_refuses_when_it_decorates(bad: Any) -> None:
    cache = Cache("memory://review16-stale-cached")
    with pytest.raises(ValueError, match="stale_ttl"):
        cache.cached(ttl=60, stale_ttl=bad)(lambda: "v")
    async_cache = AsyncCache("memory://review16-stale-cached")

    async def compute() -> str:
        return "v"

    with pytest.raises(ValueError, match="stale_ttl"):
        async_cache.cached(ttl=60, stale_ttl=bad)(compute)


def test_async_get_or_set_refuses_before_computing(url: str) -> None:
    computed: list[int] = []

    async def body() -> None:
        cache = AsyncCache(url, namespace=f"review16-stale-{uuid.uuid4().hex}")
        try:
            with pytest.raises(ValueError, match="stale_ttl"):
                await cache.get_or_set("k", lambda: computed.append(1) or "v", ttl=60, stale_ttl=math.inf)
            assert computed == [] and await cache.get("k") is None
        finally:
            await cache.aclose()

    asyncio.run(body())
