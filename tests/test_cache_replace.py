"""Cache.replace (django-redis' set(xx=True)) and a flight: a value computed while the
key was there, before a replace() wrote over it, is not stored over the replaced value
(replace removes the key's single-flight lock as set() does; not on Cluster, where the
lock lives in another slot). Driven step by step: the compute waits for an event."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from statekit.cache import AsyncCache, Cache

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "memory", "sentinel"])
def where(request: pytest.FixtureRequest) -> str:
    """The preferred server line (the contract runs replace/persist on every line),
    memory:// and Sentinel."""
    if request.param == "memory":
        return "memory://replace-flight"
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "sentinel_url"))


def test_a_refresh_computed_before_a_replace_does_not_overwrite_it(where: str) -> None:
    cache = Cache(where, namespace="replace-flight")
    started, go = threading.Event(), threading.Event()

    def compute() -> str:
        started.set()
        assert go.wait(30)
        return "computed before"

    cached = cache.cached(ttl=60, key="r")(compute)
    key = cached.key_for()
    out: list[Any] = []
    try:
        cache.set(key, "there", ttl=60)
        t = threading.Thread(target=lambda: out.append(cached.refresh()))
        t.start()
        try:
            assert started.wait(30)
            assert cache.replace(key, "replaced", ttl=60) is True
        finally:
            go.set()
            t.join(30)
        assert out == ["computed before"]
        assert cache.get(key) == "replaced"
    finally:
        cache.close()


def test_async_replace_and_persist(where: str) -> None:
    """AsyncCache.replace and AsyncCache.persist: the same plans, awaited."""
    async def body() -> None:
        cache = AsyncCache(where, namespace="replace-async")
        try:
            assert await cache.replace("a", 1) is False and await cache.get("a") is None
            await cache.set("a", 1, ttl=60)
            assert await cache.replace("a", 2, ttl=60) is True and await cache.get("a") == 2
            assert await cache.persist("a") is True and await cache.ttl("a") == math.inf
            assert await cache.persist("a") is False and await cache.persist("missing") is False
        finally:
            await cache.aclose()

    asyncio.run(body())
