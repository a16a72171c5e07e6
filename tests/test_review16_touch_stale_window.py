"""A get_or_set value made permanent (persist(), touch(key, None)) and then given a
lifetime again by touch(key, t) gets a stale window: it is kept past its new deadline
to be served stale while one caller recomputes it, as every get_or_set value is. The
window it had is not recorded anywhere once it is permanent (it is the TTL's excess
over the deadline, and both are gone), so it gets its cache's ``stale_ttl``, what a
get_or_set of that cache gives by default. The script's touch gave it none: Redis
dropped the key at its new deadline, and the next caller waited for a recompute.

On a real Redis of every server line, memory:// and AsyncCache."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from statekit.cache import AsyncCache, Cache
from statekit.errors import ConfigError

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "memory"])
def url(request: pytest.FixtureRequest, redis_line_url: str) -> str:
    return redis_line_url if request.param == "redis" else f"memory://review16-{uuid.uuid4().hex}"


def _namespace() -> str:
    return f"review16-touch-{uuid.uuid4().hex}"


def _until(what: str, done: Callable[[], bool], bound: float = 10.0) -> None:
    end = time.monotonic() + bound
    while not done():
        assert time.monotonic() < end, f"{what}: not within {bound} s"
        time.sleep(0.01)


@pytest.mark.parametrize("permanent", ["persist", "touch-none"])
def test_a_permanent_value_given_a_ttl_again_has_the_caches_stale_window(url: str, permanent: str) -> None:
    cache = Cache(url, namespace=_namespace(), stale_ttl=7)
    try:
        assert cache.get_or_set("g", lambda: "v", ttl=60, stale_ttl=30) == "v"
        if permanent == "persist":
            assert cache.persist("g") is True
        else:
            assert cache.touch("g", ttl=None) is True
        assert cache._be().get_with_ttl("g").ttl_ms is None and cache.ttl("g") == float("inf")
        assert cache.touch("g", ttl=600) is True
        left = cache.ttl("g")
        assert left is not None and 590 < left <= 600
        kept = cache._be().get_with_ttl("g").ttl_ms
        assert kept is not None and 600_000 < kept <= 607_000, kept  # the cache's 7 s window
    finally:
        cache.close()


def test_it_is_served_stale_past_its_new_deadline(url: str) -> None:
    """The window at work: past the new deadline (0.3 s) the value is still there to be
    served stale while another caller holds the recompute lock; it was gone (Redis
    dropped it at the deadline) and this caller waited lock_wait, then computed."""
    namespace = _namespace()
    cache = Cache(url, namespace=namespace, stale_ttl=30, lock_wait=0)
    other = Cache(url, namespace=namespace)
    try:
        assert cache.get_or_set("g", lambda: "old", ttl=60) == "old"
        assert cache.persist("g") is True
        assert cache.touch("g", ttl=0.3) is True
        _until("the value's new deadline passes", lambda: cache.ttl("g") is None)
        assert other._try_lock("g")
        try:
            assert cache.get_or_set("g", lambda: "new", ttl=60) == "old"
            assert cache.stats()["stale"] == 1 and cache.stats()["recomputes"] == 1
        finally:
            other._unlock("g")
        assert cache.get_or_set("g", lambda: "new", ttl=60) == "new"
    finally:
        cache.close()
        other.close()


def test_async_cache_the_same(url: str) -> None:
    namespace = _namespace()

    async def body() -> None:
        cache = AsyncCache(url, namespace=namespace, stale_ttl=7)
        try:
            assert await cache.get_or_set("g", lambda: "v", ttl=60) == "v"
            assert await cache.persist("g") is True
            assert await cache.touch("g", ttl=600) is True
        finally:
            await cache.aclose()

    asyncio.run(body())
    cache = Cache(url, namespace=namespace)
    try:
        kept = cache._be().get_with_ttl("g").ttl_ms
        assert kept is not None and 600_000 < kept <= 607_000, kept
    finally:
        cache.close()


def test_a_value_whose_ttl_was_removed_behind_the_caches_back_gets_the_window_too(redis_url: str) -> None:
    """A get_or_set value whose key a raw PERSIST left with a deadline and no TTL (kept
    for ever past it, served stale for ever): touch(key, t) gives it the cache's window
    (it kept no window: Redis dropped it at the new deadline)."""
    namespace = _namespace()
    cache = Cache(redis_url, namespace=namespace, stale_ttl=7)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert cache.get_or_set("g", lambda: "v", ttl=60) == "v"
        (name,) = [k for k in admin.scan_iter(match=f"*{namespace}*:g")]
        assert admin.persist(name) is True
        assert cache.touch("g", ttl=600) is True
        kept = cache._be().get_with_ttl("g").ttl_ms
        assert kept is not None and 600_000 < kept <= 607_000, kept
        left = cache.ttl("g")
        assert left is not None and 590 < left <= 600
    finally:
        cache.close()
        admin.close()


def test_a_value_with_a_ttl_keeps_its_own_window(url: str) -> None:
    """Unchanged: a get_or_set value that still has its TTL keeps the window it was
    stored with (30 s here, the cache's being 7 s)."""
    cache = Cache(url, namespace=_namespace(), stale_ttl=7)
    try:
        assert cache.get_or_set("g", lambda: "v", ttl=60, stale_ttl=30) == "v"
        assert cache.touch("g", ttl=600) is True
        kept = cache._be().get_with_ttl("g").ttl_ms
        # 30 s, and the time between the value's encoding (its deadline) and its SET
        assert kept is not None and 620_000 < kept <= 640_000, kept
        cache.set("plain", "p", ttl=60)
        assert cache.touch("plain", ttl=600) is True
        kept = cache._be().get_with_ttl("plain").ttl_ms
        assert kept is not None and 590_000 < kept <= 600_000, kept  # no window: not a get_or_set value
    finally:
        cache.close()


def test_an_infinite_stale_ttl_is_refused_at_once() -> None:
    """``stale_ttl=inf`` was accepted, then every get_or_set computed its value and
    failed to store it with an OverflowError (its TTL, ttl + stale_ttl, in ms), and
    touch of a permanent value would have too: a ConfigError when the cache is made."""
    with pytest.raises(ConfigError, match="stale_ttl=inf must be a finite number"):
        Cache("memory://review16-inf", stale_ttl=math.inf)
    cache = Cache("memory://review16-inf", stale_ttl=0)
    try:
        assert cache.get_or_set("g", lambda: "v", ttl=60) == "v"
        assert cache.persist("g") is True and cache.touch("g", ttl=600) is True
        kept = cache._be().get_with_ttl("g").ttl_ms
        assert kept is not None and 590_000 < kept <= 600_000, kept  # a window of 0
    finally:
        cache.close()
