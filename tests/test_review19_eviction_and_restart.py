"""Review 19: a near cache that comes back after close, and bookkeeping keys lost to
eviction (``maxmemory`` with an ``allkeys-*`` policy), on the suite's real server.

An eviction is simulated deterministically by deleting the bookkeeping key (what
Redis does to it under ``allkeys-lru``/``allkeys-random``)."""

from __future__ import annotations

import asyncio

from statekit.cache import Cache
from statekit.cache.aio import AsyncCache
from statekit.sessions import SessionStore

# -- 1. the near cache after close -----------------------------------------------------


def test_a_closed_cache_reopens_its_near_cache(redis_url: str) -> None:
    cache = Cache(redis_url, prefix="r19reopen", near_cache=True)
    other = Cache(redis_url, prefix="r19reopen")
    try:
        assert cache.near_ready(), "near cache never came up"
        cache.set("k", "v1")
        cache.close()
        # changed while nothing listened: the copy from before the close must not be served
        other.set("k", "v2")
        assert cache.near_ready(timeout=10), "near cache stayed off after close()"
        assert cache.get("k") == "v2"
        before = cache.stats()["near_hits"]
        assert cache.get("k") == "v2"
        assert cache.stats()["near_hits"] == before + 1, "no near hit after the reopen"
        other.set("k", "v3")  # and invalidations are listened to again
        for _ in range(500):
            if cache.get("k") == "v3":
                break
            assert cache.near_ready(timeout=10)
        assert cache.get("k") == "v3"
    finally:
        cache.close()
        other.close()


def test_an_async_cache_reopens_its_near_cache_in_a_second_run(redis_url: str) -> None:
    cache = AsyncCache(redis_url, prefix="r19areopen", near_cache=True)
    other = Cache(redis_url, prefix="r19areopen")

    async def lifespan(expect: str) -> tuple[bool, int]:
        try:
            ready = await cache.near_ready(timeout=10)
            assert await cache.get("k") == expect
            before = cache.stats()["near_hits"]
            assert await cache.get("k") == expect
            return ready, int(cache.stats()["near_hits"] - before)
        finally:
            await cache.aclose()

    try:
        other.set("k", "a")
        assert asyncio.run(lifespan("a")) == (True, 1)
        other.set("k", "b")  # while closed
        assert asyncio.run(lifespan("b")) == (True, 1), "near cache off in the second lifespan"
    finally:
        other.close()


def test_a_closed_session_store_reopens_its_near_cache(redis_url: str) -> None:
    store = SessionStore(redis_url, secret_keys=["r19-secret"], near_cache=100)
    other = SessionStore(redis_url, secret_keys=["r19-secret"])
    try:
        session = store.create({"n": 1})
        cookie = store.sign(session.sid)
        store.open(cookie)
        store.close()
        s = other.open(cookie)
        s["n"] = 2
        other.save(s)
        assert store.open(cookie)["n"] == 2  # not the copy from before the close
        before = store.engine.near_hits
        for _ in range(200):  # the listener reconnects in the background
            assert store.open(cookie)["n"] == 2
            if store.engine.near_hits > before:
                break
            assert store.engine.listener is not None
            assert store.engine.listener.connected.wait(10), "session near cache stayed off after close()"
        assert store.engine.near_hits > before, "no near hit after the reopen"
    finally:
        store.close()
        other.close()
