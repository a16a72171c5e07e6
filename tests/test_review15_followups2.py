"""Review 15 follow-ups: a URL pasted with spaces around it, given directly to each
capability (it picks its backend by the stripped URL's scheme and passes the stripped
URL on: one pool for the URL with and without them), and a broadcast subscriber's
connection outside the URL's pool (``max_connections``)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

import statekit.redis
from statekit.broadcast import SharedValue
from statekit.cache import Cache

KEYS = ["review15-followups2-secret-key-0123456789"]


def test_url_and_scheme() -> None:
    """The one reading of a URL's scheme: stripped, cut at '://', lower-cased."""
    from statekit.config import url_and_scheme

    assert url_and_scheme("  REDIS+Sentinel://h/m/0\n") == ("REDIS+Sentinel://h/m/0", "redis+sentinel")
    assert url_and_scheme("\tmemory://x ") == ("memory://x", "memory")
    assert url_and_scheme(" localhost:6379 ") == ("localhost:6379", "")
    assert url_and_scheme(None) == (None, "")  # type: ignore[arg-type]


def _raw_keys(raw: str) -> list[object]:
    """The keys of this process's shared clients (one pool each) made for the text *raw*."""
    return [key for key in statekit.redis._clients if key[0] == os.getpid() and key[1] == raw]


@pytest.mark.redis
def test_a_spaced_url_shares_the_urls_pool(redis_url: str) -> None:
    """``Cache(" redis://...\\n")`` works and uses the pool of the URL without the
    spaces (get_client keys pools by the text it is given: the raw text made a
    second pool)."""
    raw = f" {redis_url}?client_name=review15-spaced \n"
    cache = Cache(raw, namespace="review15-spaced")
    try:
        assert cache.set("k", 1)
        assert cache.get("k") == 1
        assert cache.url == raw.strip()
        assert _raw_keys(raw) == []
        assert _raw_keys(raw.strip())
    finally:
        cache.close()


@pytest.mark.redis
def test_async_capabilities_take_a_spaced_url(redis_url: str) -> None:
    """AsyncCache and AsyncSessionStore given ``" redis://...\\n"``: each works, and
    the session store has the asyncio engine (the stripped scheme picks it)."""
    from statekit.cache.aio import AsyncCache
    from statekit.sessions.aio import AsyncSessionStore
    from statekit.sessions.redis import AsyncRedisEngine

    raw = f"  {redis_url}\n"

    async def main() -> None:
        cache = AsyncCache(raw, namespace="review15-spaced-aio")
        try:
            await cache.set("k", 2)
            assert await cache.get("k") == 2
        finally:
            await cache.aclose()
        store = AsyncSessionStore(raw, secret_keys=KEYS, key_prefix="review15-spaced-aio")
        assert isinstance(store.engine, AsyncRedisEngine)
        session = await store.create({"n": 1})
        loaded = await store.load(session.sid)
        assert loaded is not None and loaded["n"] == 1

    asyncio.run(main())


def _publish_and_read(url: str, prefix: str) -> None:
    """A Broadcaster and a SharedValue given *url*: the value published is read back."""
    from statekit.broadcast import Broadcaster

    broadcaster = Broadcaster(url, key_prefix=prefix)
    value: SharedValue[int] = SharedValue("x", url=url, key_prefix=prefix)
    try:
        broadcaster.publish("x", 5)
        assert value.get() == 5
    finally:
        broadcaster.stop()
        if value._hub is not None:
            value._hub.stop(5)


@pytest.mark.redis
def test_a_shared_value_takes_a_spaced_url(redis_url: str) -> None:
    """Broadcaster and SharedValue given ``" redis://...\\n"``: published, read back."""
    _publish_and_read(f" {redis_url}\n", f"review15-spaced-{uuid.uuid4().hex[:8]}")


def test_a_spaced_memory_url_for_a_shared_value_and_a_broadcaster() -> None:
    """memory:// with spaces: the memory backend (it was 'no broadcast backend for
    memory:// URLs')."""
    _publish_and_read(" memory://review15-spaced\n", f"review15-spaced-{uuid.uuid4().hex[:8]}")


# -- a broadcast subscriber outside the URL's pool --------------------------------------


def _subscriber_beside_a_cache(url: str, prefix: str) -> None:
    """A shared value's subscriber running (subscribed), then a publish it receives by
    message and cache calls on every node of *url*'s pool: all work. *url* has a pool
    of one connection (each Cluster node's): the subscriber held it for as long as it
    listened, so the hub's read after it subscribed waited for it and failed (it never
    connected), and so did the cache calls (on a Cluster, each on a node it listened
    on)."""
    from statekit.broadcast import Broadcaster
    from statekit.pytest_plugin import wait_for

    value: SharedValue[int] = SharedValue("x", 0, url=url, key_prefix=prefix)
    broadcaster = Broadcaster(url, key_prefix=prefix)
    cache = Cache(url, namespace=prefix, on_error="raise")
    try:
        assert value.get() == 0  # starts the subscriber
        assert value._hub is not None
        assert value._hub.connected.wait(30)
        for i in range(12):  # keys in every slot range: each Cluster node
            assert cache.set(f"k{i}", i)
            assert cache.get(f"k{i}") == i
        broadcaster.publish("x", 7)
        wait_for(lambda: value.get() == 7, what="the published value, by message")
    finally:
        cache.close()
        broadcaster.stop()
        if value._hub is not None:
            value._hub.stop(5)


@pytest.mark.redis
@pytest.mark.parametrize("url_fixture", [
    "redis_url", pytest.param("sentinel_url", marks=pytest.mark.sentinel)])
def test_a_broadcast_subscriber_beside_the_cache_on_a_pool_of_one(
        url_fixture: str, request: pytest.FixtureRequest) -> None:
    """Standalone, and a Sentinel master's pool."""
    url = f"{request.getfixturevalue(url_fixture)}?max_connections=1&socket_timeout=3"
    try:
        _subscriber_beside_a_cache(url, f"review15-sub-{uuid.uuid4().hex[:8]}")
    finally:
        statekit.redis.get_client(url).connection_pool.disconnect()


@pytest.mark.redis
@pytest.mark.cluster
def test_a_broadcast_subscriber_beside_the_cache_on_cluster_node_pools_of_one(
        redis_line_cluster_url: str) -> None:
    """Each server line's Cluster: sharded channels (a connection to each node the
    subscriber listens on), or Redis 6.2's pattern (one to a primary)."""
    url = f"{redis_line_cluster_url}?max_connections=1&socket_timeout=3"
    _subscriber_beside_a_cache(url, f"review15-sub-{uuid.uuid4().hex[:8]}")


def test_get_client_of_a_spaced_url_is_the_urls_client(redis_url: str) -> None:
    """``get_client`` and ``get_async_client`` called directly with a URL an env file
    left spaces or a line end around share the URL's pool (they made a second one)."""
    from statekit.redis.aio import get_async_client

    assert statekit.redis.get_client(f"  {redis_url}\n") is statekit.redis.get_client(redis_url)

    async def main() -> None:
        assert get_async_client(f" {redis_url}\n") is get_async_client(redis_url)

    asyncio.run(main())
