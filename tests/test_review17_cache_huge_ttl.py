"""A cache duration too long for Redis is refused up front, as ``inf`` and ``nan`` are.

A ``ttl``, ``stale_ttl`` or lock ``timeout`` of a huge finite number (``1e300``, or any
whose milliseconds pass what ``SET PX`` / ``PEXPIRE`` accept: a deadline of a signed
64-bit count of milliseconds, ``2**63 - 1`` less the time now, on Redis 6.2, Valkey 8.1
and 9.1) was accepted and failed at the first command with the script's error reply
("value is not an integer or would overflow"), after a get_or_set had computed its
value; a ``lock_ttl`` of one failed in the lock keeper's thread (its wait), a socket
``timeout`` at the first command (OverflowError). Each is now a ValueError (a
ConfigError for the cache's settings) naming it and its bound
(:data:`statekit.cache.tools.MAX_TTL`, ``threading.TIMEOUT_MAX`` for ``lock_ttl``, the
URL option's 86400 s for ``timeout``), before any I/O: these tests make the refused
calls on a cache whose Redis does not listen, where a sent command would be a
BackendUnavailable. The longest accepted durations (and ``timedelta.max``, which worked
before) are stored on every server line the suite runs and on ``memory://``, sync and
async.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from statekit.cache import AsyncCache, Cache, tools
from statekit.errors import ConfigError

pytestmark = pytest.mark.redis

#: the longest duration (seconds) a cache takes: :data:`statekit.cache.tools.MAX_TTL`
MAX_TTL = 1e15

_HUGE = [1e300, 1e16, MAX_TTL * 1.000001, int(MAX_TTL) + 1]


@pytest.fixture(scope="module")
def dead_url() -> Iterator[str]:
    """A loopback port nothing listens on (bound, never listening: refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0?retries=0&socket_connect_timeout=2"


def _calls(cache: Cache, huge: Any, computed: list[int]) -> dict[str, Callable[[], Any]]:
    def compute() -> str:
        computed.append(1)
        return "v"

    return {
        "set": lambda: cache.set("k", "v", ttl=huge),
        "add": lambda: cache.add("k", "v", ttl=huge),
        "replace": lambda: cache.replace("k", "v", ttl=huge),
        "set_many": lambda: cache.set_many({"k": "v"}, ttl=huge),
        "incr": lambda: cache.incr("n", ttl=huge),
        "touch": lambda: cache.touch("k", huge),
        "get_or_set ttl": lambda: cache.get_or_set("g", compute, ttl=huge),
        "get_or_set stale_ttl": lambda: cache.get_or_set("g", compute, ttl=60, stale_ttl=huge),
        "cached ttl": lambda: cache.cached(ttl=huge)(compute),
        "cached stale_ttl": lambda: cache.cached(ttl=60, stale_ttl=huge)(compute),
        "lock timeout": lambda: cache.lock("L", timeout=huge),
    }


def test_the_bound() -> None:
    assert getattr(tools, "MAX_TTL", None) == MAX_TTL
    # a ttl and a stale window at the bound, added, from now: within a signed 64-bit ms deadline
    assert 2 * int(MAX_TTL * 1000) + int(4e12) < 2**63 - 1


@pytest.mark.parametrize("huge", _HUGE, ids=repr)
def test_each_call_refuses_a_huge_duration_before_any_io(dead_url: str, huge: Any) -> None:
    cache = Cache(dead_url, namespace="review17-huge")
    computed: list[int] = []
    for name, call in _calls(cache, huge, computed).items():
        with pytest.raises(ValueError, match=r"at most 1e\+15") as caught:
            call()
        assert caught.value.__cause__ is None, name
    assert computed == []
    assert cache.stats()["errors"] == 0  # nothing was sent (a send is a BackendUnavailable here)


@pytest.mark.parametrize(("setting", "bound"), [("default_ttl", MAX_TTL), ("stale_ttl", MAX_TTL),
                                                 ("lock_ttl", threading.TIMEOUT_MAX)])
def test_the_cache_refuses_a_huge_duration_setting(dead_url: str, setting: str, bound: float) -> None:
    # lock_ttl: a compute's lock is extended every lock_ttl / 3 s by a thread's wait,
    # which Python bounds (a lock_ttl of 1e15 failed in the lock keeper's thread)
    for huge in (1e300, 1e16, bound * 1.000001):
        with pytest.raises(ValueError, match=setting.replace("default_", "") + r".*at most"):
            Cache(dead_url, **{setting: huge})
        with pytest.raises(ValueError, match=setting.replace("default_", "") + r".*at most"):
            AsyncCache(dead_url, **{setting: huge})
    Cache(dead_url, **{setting: bound})  # the bound itself is taken (stored: below)


@pytest.mark.parametrize("huge", [1e300, 1e16, 86_400.5])
def test_the_cache_refuses_a_socket_timeout_longer_than_a_url_may_give(dead_url: str, huge: float) -> None:
    # the URL's socket_timeout option allows 86400 s at most; 1e300 failed at the first
    # command with "OverflowError: timestamp out of range for platform time_t"
    for kind in (Cache, AsyncCache):
        with pytest.raises(ConfigError, match=r"timeout.*at most 86400"):
            kind(dead_url, timeout=huge)
    for bad in (0, -1, True, "5", float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="timeout"):
            Cache(dead_url, timeout=bad)


def test_async_calls_refuse_a_huge_duration_before_any_io(dead_url: str) -> None:
    computed: list[int] = []

    async def compute() -> str:
        computed.append(1)
        return "v"

    async def body() -> None:
        cache = AsyncCache(dead_url, namespace="review17-huge")
        try:
            calls = {
                "set": lambda: cache.set("k", "v", ttl=1e300),
                "add": lambda: cache.add("k", "v", ttl=1e300),
                "set_many": lambda: cache.set_many({"k": "v"}, ttl=1e16),
                "incr": lambda: cache.incr("n", ttl=1e300),
                "touch": lambda: cache.touch("k", 1e300),
                "get_or_set ttl": lambda: cache.get_or_set("g", compute, ttl=1e300),
                "get_or_set stale_ttl": lambda: cache.get_or_set("g", compute, ttl=60, stale_ttl=1e300),
            }
            for name, call in calls.items():
                with pytest.raises(ValueError, match=r"at most 1e\+15") as caught:
                    await call()
                assert caught.value.__cause__ is None, name
            with pytest.raises(ValueError, match=r"at most 1e\+15"):
                cache.cached(ttl=1e300)(compute)
            with pytest.raises(ValueError, match=r"at most 1e\+15"):
                cache.lock("L", timeout=1e300)
            assert computed == [] and cache.stats()["errors"] == 0
        finally:
            await cache.aclose()

    asyncio.run(body())


def _stored_ms(cache: Cache, key: str) -> int:
    ttl_ms = cache._be().get_with_ttl(key).ttl_ms
    assert ttl_ms is not None, key
    return ttl_ms


def _longest_stored(url: str) -> None:
    cache = Cache(url, namespace=f"review17-long-{uuid.uuid4().hex}", stale_ttl=MAX_TTL,
                  lock_ttl=threading.TIMEOUT_MAX, default_ttl=MAX_TTL)
    try:
        longest = int(MAX_TTL * 1000)
        assert cache.set("a", "v", ttl=MAX_TTL) and cache.get("a") == "v"
        assert longest - 60_000 < _stored_ms(cache, "a") <= longest
        assert cache.set("b", "v") and longest - 60_000 < _stored_ms(cache, "b") <= longest
        assert cache.set("c", "v", ttl=dt.timedelta.max) and cache.get("c") == "v"  # as before
        assert cache.incr("n", ttl=MAX_TTL) == 1 and cache.touch("a", MAX_TTL)
        # a get_or_set value lives its ttl and its stale window: both the longest (computed
        # under its lock, kept by the lock keeper every lock_ttl / 3 s)
        assert cache.get_or_set("g", lambda: "computed", ttl=MAX_TTL, stale_ttl=MAX_TTL) == "computed"
        assert 2 * longest - 60_000 < _stored_ms(cache, "g") <= 2 * longest
        assert cache.touch("g", MAX_TTL) and cache.get("g") == "computed"
        left = cache.ttl("g")
        assert left is not None and left > MAX_TTL - 60
        lock = cache.lock("L", timeout=MAX_TTL)
        assert lock.acquire(blocking=False)
        lock.extend(MAX_TTL)
        lock.release()
    finally:
        cache.close()


def test_the_longest_durations_are_stored(redis_line_url: str) -> None:
    _longest_stored(redis_line_url)


def test_the_longest_durations_are_stored_in_memory() -> None:
    _longest_stored(f"memory://review17-{uuid.uuid4().hex}")


def test_the_longest_durations_are_stored_async(redis_line_url: str) -> None:
    async def body() -> None:
        cache = AsyncCache(redis_line_url, namespace=f"review17-long-{uuid.uuid4().hex}")
        try:
            assert await cache.set("a", "v", ttl=MAX_TTL) and await cache.get("a") == "v"
            got = await cache.get_or_set("g", lambda: "computed", ttl=MAX_TTL, stale_ttl=MAX_TTL)
            assert got == "computed"
            left = await cache.ttl("g")
            assert left is not None and left > MAX_TTL - 60
            assert await cache.touch("g", MAX_TTL) and await cache.get("g") == "computed"
        finally:
            await cache.aclose()

    asyncio.run(body())
