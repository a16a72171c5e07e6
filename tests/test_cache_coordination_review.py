"""Review of the cache's coordination (the named ``Lock`` and the single flight of
``get_or_set``/``cached``), sync and async, on real servers: each interleaving is
driven step by step (a compute that waits for an event, a proxy that loses one reply
after Redis applied the command), never left to timing.

Found by this review (each test failed before its fix):

* a lock whose ``SET NX`` reply was lost with its connection (Redis granted it) stayed
  held under a token nobody knew, for its whole timeout: the sync ``Lock`` and the
  single-flight lock (sync and async) released nothing; only ``AsyncLock`` did;
* a single-flight leader whose lease lapsed while it computed (a paused process, a
  keeper that could not reach Redis) stored its value over the fresher one the next
  leader had stored since.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_redis_helpers import Proxy  # tests/ is on sys.path

from statekit.cache import AsyncCache, Cache
from statekit.cache import aio as cache_aio
from statekit.cache.plan import adrive
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable, LockError

pytestmark = pytest.mark.redis


@pytest.fixture
def proxy(redis_server: RedisServer, redis_url: str) -> Iterator[Proxy]:
    """A proxy in front of the test's Redis that can lose the reply of a ``SET ... NX``
    (a lock's acquire) after Redis applied it."""
    p = Proxy(redis_server.port)
    p.cut_on = b"NX"
    try:
        yield p
    finally:
        p.close()


def _url(proxy: Proxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=5"


# -- a lost acquire reply ---------------------------------------------------------------


def test_a_lock_whose_acquire_reply_was_lost_is_not_left_held(proxy: Proxy, redis_url: str) -> None:
    """Redis granted the lock, the reply was lost with the connection: the acquire
    raises (its outcome is unknown, the SET is not sent again) and leaves the lock
    free, instead of held for its whole timeout (an hour here) under a lost token."""
    cache = Cache(_url(proxy), namespace="review-lock")
    other = Cache(redis_url, namespace="review-lock")
    try:
        cache.set("warm", 1)
        lock = cache.lock("nightly", timeout=3600)
        proxy.cut = 1
        with pytest.raises(BackendUnavailable, match="outcome is unknown"):
            lock.acquire(blocking=False)
        assert proxy.cut == 0  # the SET NX was applied and its reply lost
        assert not lock.locked()
        taker = other.lock("nightly", timeout=60)
        assert taker.acquire(blocking=False)  # not held by the lost token
        taker.release()
    finally:
        cache.close()
        other.close()


def test_a_single_flight_lock_whose_reply_was_lost_is_released(proxy: Proxy, redis_url: str) -> None:
    """The same for get_or_set's single-flight lock: with on_error="miss" the caller
    computes without storing, and the next caller (another process) takes the lock at
    once (a miss would wait lock_wait for a lock held by nobody)."""
    cache = Cache(_url(proxy), namespace="review-sf", on_error="miss", lock_ttl=3600)
    other = Cache(redis_url, namespace="review-sf", lock_ttl=3600, lock_wait=60)
    try:
        cache.set("warm", 1)
        proxy.cut = 1
        assert cache.get_or_set("report", lambda: "computed", ttl=60) == "computed"
        assert proxy.cut == 0
        assert other._try_lock("report")  # free, not held by the lost token
        other._unlock("report")
    finally:
        cache.close()
        other.close()


def test_an_async_single_flight_lock_whose_reply_was_lost_is_released(proxy: Proxy, redis_url: str) -> None:
    """AsyncCache: the single-flight lock whose SET NX reply was lost is released in
    the background, as AsyncLock's is."""

    async def body() -> bool:
        cache = AsyncCache(_url(proxy), namespace="review-asf", on_error="miss", lock_ttl=3600)
        other = AsyncCache(redis_url, namespace="review-asf", lock_ttl=3600, lock_wait=60)
        try:
            await cache.set("warm", 1)
            proxy.cut = 1
            assert await cache.get_or_set("report", lambda: "computed", ttl=60) == "computed"
            assert proxy.cut == 0
            await asyncio.gather(*cache_aio._dropping)  # the background release
            free = await adrive(other._take_lock("report"), other._effect)
            if free:
                await adrive(other._release("report"), other._effect)
            return bool(free)
        finally:
            await cache.aclose()
            await other.aclose()

    assert asyncio.run(body()) is True


# -- a leader whose lease lapsed while it computed ---------------------------------------


def _lapse(cache: Cache | AsyncCache, key: str) -> None:
    """The single-flight lock of *key* expires (as after a pause longer than lock_ttl)."""
    backend = cache._backend
    sync = backend if isinstance(cache, Cache) else backend.sync
    assert sync.transport.client.delete(sync._lock_key("sf:" + key)) == 1


@pytest.fixture(params=["line", "memory", "cluster"])
def where(request: pytest.FixtureRequest, redis_url: str) -> str:
    """A server line (the contract suites run the plain path on every line already),
    memory:// and a Cluster (the lock and the value in different slots)."""
    if request.param == "line":
        return redis_url
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return "memory://review-lease"


def test_a_leader_whose_lease_lapsed_does_not_overwrite_a_fresher_value(where: str) -> None:
    """Leader A computes from old data; its lease lapses; B takes the lock, computes
    from newer data and stores; A's compute ends: A's caller gets A's value, but the
    cache keeps B's (A no longer holds the lock, so its store is refused)."""
    a = Cache(where, namespace="review-lease")
    b = Cache(where, namespace="review-lease")
    computing, finish = threading.Event(), threading.Event()
    got: list[Any] = []

    def old() -> str:
        computing.set()
        assert finish.wait(30)
        return "old"

    t = threading.Thread(target=lambda: got.append(a.get_or_set("report", old, ttl=60)))
    t.start()
    try:
        assert computing.wait(30)
        _lapse(a, "report")
        assert b.get_or_set("report", lambda: "new", ttl=60) == "new"
    finally:
        finish.set()
        t.join(30)
    assert got == ["old"]
    assert b.get("report") == "new"
    assert a.get("report") == "new"
    a.close()
    b.close()


def test_an_async_leader_whose_lease_lapsed_does_not_overwrite_a_fresher_value(where: str) -> None:
    async def body() -> tuple[Any, Any]:
        a = AsyncCache(where, namespace="review-alease")
        b = AsyncCache(where, namespace="review-alease")
        computing, finish = asyncio.Event(), asyncio.Event()

        async def old() -> str:
            computing.set()
            await finish.wait()
            return "old"

        try:
            leader = asyncio.ensure_future(a.get_or_set("report", old, ttl=60))
            await asyncio.wait_for(computing.wait(), 30)
            _lapse(a, "report")
            assert await b.get_or_set("report", lambda: "new", ttl=60) == "new"
            finish.set()
            return await asyncio.wait_for(leader, 30), await b.get("report")
        finally:
            await a.aclose()
            await b.aclose()

    assert asyncio.run(body()) == ("old", "new")


# -- an AsyncCache compute that blocks the loop ------------------------------------------


def test_an_async_leader_computing_on_the_loop_keeps_its_lock(redis_url: str) -> None:
    """AsyncCache.get_or_set takes a plain function too, which runs on the loop's
    thread: while it runs, no task does, so the lock's extensions (every lock_ttl / 3)
    must not depend on the loop. The compute watches the lock (a plain client) until it
    was extended (its TTL went up) or it lapsed (gone: another caller would compute the
    same value again), bounded by 30 s; no timing is asserted."""
    import redis as redis_py

    watcher = redis_py.Redis.from_url(redis_url)
    seen: list[str] = []

    def blocking() -> str:  # sync: runs on the loop's thread, blocking it
        name = next(iter(watcher.scan_iter(match="*lock:sf:report")))
        last = watcher.pttl(name)
        for _ in range(3000):
            ttl = watcher.pttl(name)
            if ttl < 0:
                seen.append("lapsed")
                break
            if ttl > last:
                seen.append("extended")
                break
            last = ttl
            threading.Event().wait(0.01)
        return "value"

    async def body() -> str:
        c = AsyncCache(redis_url, namespace="review-blocking", lock_ttl=3.0)
        try:
            return str(await c.get_or_set("report", blocking, ttl=60))
        finally:
            await c.aclose()

    try:
        assert asyncio.run(body()) == "value"
    finally:
        watcher.close()
    assert seen == ["extended"]


# -- an extend refused --------------------------------------------------------------------


def test_a_refused_extend_forgets_the_token(redis_url: str) -> None:
    """extend() of a lease that lapsed raises LockError; the lock object then no longer
    says it holds the lock (locked() is "as far as it knows": it knows now)."""

    async def run_async(cache: AsyncCache) -> tuple[bool, bool]:
        try:
            lock = cache.lock("lapsing", timeout=60)
            assert await lock.acquire(blocking=False)
            assert cache._backend.sync.transport.client.delete(cache._backend._lock_key(lock.name)) == 1
            with pytest.raises(LockError):
                await lock.extend()
            return lock.locked(), bool(await cache.lock("lapsing").acquire(blocking=False))
        finally:
            await cache.aclose()

    cache = Cache(redis_url, namespace="review-extend")
    try:
        lock = cache.lock("lapsing", timeout=60)
        assert lock.acquire(blocking=False)
        assert cache._be().transport.client.delete(cache._be()._lock_key(lock.name)) == 1
        with pytest.raises(LockError):
            lock.extend()
        assert not lock.locked()
    finally:
        cache.close()
    assert asyncio.run(run_async(AsyncCache(redis_url, namespace="review-aextend"))) == (False, True)


def test_the_keeper_lets_go_of_a_task_that_cannot_release(redis_url: str) -> None:
    """The async leader's lock is now extended from the keeper thread, which outlives
    tasks: a leader task that can no longer run its ``finally`` (done, destroyed, or
    left pending on a closed loop) must not keep its lock extended for ever. The
    keeper's check for that, on a task left pending on a closed loop."""
    loop = asyncio.new_event_loop()

    async def start() -> tuple[asyncio.Task[Any], Any]:
        task = asyncio.ensure_future(asyncio.Event().wait())
        await asyncio.sleep(0)
        return task, cache_aio._alive(task)

    task, alive = loop.run_until_complete(start())
    assert alive() is True
    loop.close()
    assert alive() is False  # pending on a closed loop: its finally never runs
    assert cache_aio._alive(None)() is False
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose
    del task
