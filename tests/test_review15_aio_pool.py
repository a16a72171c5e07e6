"""Review 15: a small ``max_connections`` on the asyncio side (statekit/redis/aio.py),
against the suite's real server, as tests/test_review15_pool.py shows it for the sync
side.

A URL's ``max_connections`` bounds the pool of the asyncio clients statekit makes
too, and a caller past it waits for a connection (up to the socket timeout, then
``BackendUnavailable`` naming ``max_connections``, not retried) instead of failing
at once with redis-py's ``Too many connections``. The asyncio transports of one pool
keep at most its kept share between calls, all of them together (none of a pool of
1: every command borrows its connection), so a pipeline of the client, another
store's transport on it and every task past the share find one. The server's
``CLIENT LIST`` shows at most N connections of a pool."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest
from test_review15_pool import Peak, pool_waits  # tests/ is on sys.path: CLIENT LIST's peak; the pool's waits

from statekit.broadcast.aio import AsyncBroadcaster
from statekit.cache.aio import AsyncCache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis.aio import create_async_client
from statekit.sessions.aio import AsyncSessionStore

pytestmark = pytest.mark.redis

KEYS = ["review15-aio-pool-secret-key-0123456789"]
TASKS = 8


async def _work(cache: AsyncCache, store: AsyncSessionStore, hub: AsyncBroadcaster, client: Any,
                i: int) -> None:
    """What one request task does: cache gets and sets, a session with a user (its
    save updates the user's index: a pipeline of the store's client), the user's
    listing, a broadcast publish and its read (a pipeline of the broadcaster's
    client), and a pipeline of *client*."""
    for j in range(5):
        assert await cache.set(f"t{i}:k{j}", {"i": i, "j": j})
        assert await cache.get(f"t{i}:k{j}") == {"i": i, "j": j}
    session = await store.create({"n": 0}, user_id=f"user{i}")
    loaded = await store.load(session.sid)
    assert loaded is not None
    loaded["n"] = 1
    assert await store.save(loaded)
    assert [s.handle for s in await store.list_user_sessions(f"user{i}")] == [session.handle]
    version = await hub.publish(f"n{i}", i)
    assert await hub.retained(f"n{i}") == (version, i)
    async with client.pipeline(transaction=False) as pipe:
        pipe.ping()
        assert await pipe.execute() == [True]


def _stores_on_small_pools(server: RedisServer, base_url: str, size: int, shared: bool) -> None:
    """An ``AsyncCache``, an ``AsyncSessionStore`` and an ``AsyncBroadcaster`` of
    *base_url* with ``max_connections=size``, on one client (one pool for all three,
    and a pipeline of it) or on a client each (a URL each, told apart by their client
    names), used by :data:`TASKS` tasks at once (:func:`_work`): every call works
    and each pool's connections on *server* stay within *size*."""
    name = f"review15-aio-pool-{uuid.uuid4().hex[:8]}"
    names = [name] if shared else [f"{name}-{part}" for part in ("cache", "session", "broadcast")]
    urls = [f"{base_url}?max_connections={size}&client_name={n}&socket_timeout=10" for n in names]

    async def run() -> None:
        clients = [create_async_client(url) for url in urls] * (3 if shared else 1)
        cache = AsyncCache(client=clients[0], namespace=name)
        store = AsyncSessionStore(client=clients[1], secret_keys=KEYS, key_prefix=name)
        hub = AsyncBroadcaster(client=clients[2], key_prefix=name)
        try:
            with contextlib.ExitStack() as stack:
                peaks = [stack.enter_context(Peak(server, n)) for n in names]
                await asyncio.wait_for(asyncio.gather(*(_work(cache, store, hub, clients[0], i)
                                                        for i in range(TASKS))), 120)
            mosts = [peak.most for peak in peaks]
            assert all(1 <= most <= size for most in mosts), mosts
        finally:
            await hub.stop()
            await store.aclose()
            await cache.aclose()
            for client in set(clients):
                await client.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("shared", [True, False], ids=["one client", "a client each"])
@pytest.mark.parametrize("size", [1, 2])
def test_asyncio_stores_work_on_a_small_pool_and_stay_within_it(
        redis_server: RedisServer, redis_url: str, size: int, shared: bool) -> None:
    """An ``AsyncCache``, an ``AsyncSessionStore`` (saves with a user id) and an
    ``AsyncBroadcaster`` (publish and read) on ``max_connections=1`` (or 2), from 8
    tasks at once, on one client or a client each: every call works and each pool's
    connections stay within ``size``. The asyncio transport kept a connection of a
    pool of 1 for good (a broadcaster's read and every pipeline then failed 'Too
    many connections'), and the transports of one pool each kept their share (two of
    them filled a pool of 2)."""
    _stores_on_small_pools(redis_server, redis_url, size, shared)


def test_asyncio_stores_on_a_sentinel_masters_pool_of_one(sentinel_setup: Any, sentinel_url: str) -> None:
    """The same on a Sentinel master's pool of 1 (one client for the three stores):
    redis-py's asyncio Sentinel pool waits for a connection too."""
    _stores_on_small_pools(sentinel_setup.master, sentinel_url, 1, True)


@pytest.mark.parametrize("size", [1, 2])
def test_an_asyncio_session_near_cache_on_a_small_pool(redis_server: RedisServer, redis_url: str,
                                                        size: int) -> None:
    """An ``AsyncSessionStore`` with a near cache (its key lanes keep tracked
    connections, no more than the pool's share; a lane past it serves untracked on a
    borrowed one) on a pool of 1 (or 2), from 8 tasks: creates with a user id, loads,
    saves and listings work, and the pool's connections stay within ``size`` (the
    invalidation listener has its own). Passed before too (the lane held the only
    connection, and nothing else needed one here): a guard for the borrowed lane
    commands, untracked."""
    name = f"review15-aio-pool-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?max_connections={size}&client_name={name}&socket_timeout=10"

    async def task(store: AsyncSessionStore, i: int) -> None:
        session = await store.create({"n": 0}, user_id=f"user{i}")
        for n in range(1, 4):
            loaded = await store.load(session.sid)
            assert loaded is not None and loaded["n"] == n - 1
            loaded["n"] = n
            assert await store.save(loaded)
        assert [s.handle for s in await store.list_user_sessions(f"user{i}")] == [session.handle]

    async def run() -> None:
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix=name, near_cache=100)
        try:
            with Peak(redis_server, name) as peak:
                await asyncio.wait_for(asyncio.gather(*(task(store, i) for i in range(TASKS))), 120)
            assert 1 <= peak.most <= size
        finally:
            await store.aclose()

    asyncio.run(run())


def test_an_asyncio_command_waits_for_the_pool_its_socket_timeout_once(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of the pool in use (here: the only one, held by the test): a
    cache call waits for one up to the socket timeout, then fails unsent, naming
    ``max_connections``, once (not again by the retry rule: the wait was the
    pool's), as the sync transport does; given back, the next call works. It failed
    at once, three times over (the retries), with 'Too many connections'. The waits
    are counted, not timed (a 2.5 s bound on the one wait of 1 s failed under load)."""
    url = f"{redis_url}?max_connections=1&socket_timeout=1&retries=2"

    async def run() -> None:
        client = create_async_client(url)
        cache = AsyncCache(client=client, namespace="review15-aio-pool-wait", on_error="raise")
        pool = client.connection_pool
        try:
            assert await cache.set("k", 1)
            held = await pool.get_connection()
            waits = pool_waits(monkeypatch, pool)
            started = time.monotonic()
            try:
                busy = (r"all 1 connections of the pool \(max_connections\) were in use "
                        r"and none came free within 1 s")
                with pytest.raises(BackendUnavailable, match=busy):
                    await cache.get("k")
                waited = time.monotonic() - started
            finally:
                await pool.release(held)
            assert len(waits) == 1  # one wait (the retries' three were 3 s and more)
            assert 1 <= waited < 30  # the pool's timeout, and no hang
            assert await cache.get("k") == 1
        finally:
            await cache.aclose()
            await client.aclose()

    asyncio.run(run())


def test_an_asyncio_pipeline_waits_for_a_connection_given_back(redis_url: str) -> None:
    """A pipeline of a statekit asyncio client whose pool's every connection is in
    use waits for one given back (redis-py's ``BlockingConnectionPool``), as the sync
    client's does: it failed at once with 'Too many connections'."""
    url = f"{redis_url}?max_connections=1&socket_timeout=10"

    async def run() -> None:
        client = create_async_client(url)
        pool = client.connection_pool
        try:
            held = await pool.get_connection()
            try:
                async def pipeline() -> list[Any]:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.ping()
                        return list(await pipe.execute())

                task = asyncio.ensure_future(pipeline())
                for _ in range(50):  # its checkout under way (a plain pool fails it at once)
                    await asyncio.sleep(0.01)
                    if task.done():
                        break
            finally:
                await pool.release(held)
            assert await asyncio.wait_for(task, 10) == [True]
        finally:
            await client.aclose()

    asyncio.run(run())
