"""Review 15: one asyncio pool per URL, and loose ends.

- A URL's ``AsyncCache``, ``AsyncSessionStore`` and ``AsyncBroadcaster`` on one loop
  share that URL's client (:func:`statekit.redis.aio.get_async_client`), as the sync
  ones share :func:`statekit.redis.get_client`'s: ``max_connections=N`` bounds the
  process's connections to the URL to N, not N per store; closing one store leaves the
  others' pool working.
- A msgpack Timestamp (ext -1), which statekit never writes, read by the msgpack codec
  is a ``SerializationError`` (a miss for the cache), not a ``msgpack.Timestamp``
  handed to the caller.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from statekit.errors import SerializationError

msgpack = pytest.importorskip("msgpack")


# -- the msgpack codec and ext -1 ---------------------------------------------------

_TS = msgpack.Timestamp(1_700_000_000, 5)


@pytest.mark.parametrize("value", [
    _TS, [1, _TS], {"a": {"b": [_TS]}}, {1: _TS}, {"k": 1, "t": [-1, 255, _TS]},
], ids=["top", "list", "nested-map", "int-keyed-map", "beside-0xff-ints"])
def test_a_msgpack_timestamp_is_refused(value: object) -> None:
    from statekit.serializers import MsgpackSerializer

    with pytest.raises(SerializationError, match="Timestamp"):
        MsgpackSerializer().loads(msgpack.packb(value))


def test_a_msgpack_timestamp_inside_a_tuple_or_as_a_key_is_refused() -> None:
    from statekit.serializers import MsgpackSerializer

    codec = MsgpackSerializer()
    in_tuple = msgpack.packb([msgpack.ExtType(6, msgpack.packb([1, _TS]))])
    as_key = msgpack.packb({_TS: 1})
    for payload in (in_tuple, as_key):
        with pytest.raises(SerializationError, match="Timestamp"):
            codec.loads(payload)


def test_values_with_0xff_bytes_still_load() -> None:
    """Values that hold 0xff bytes (a Timestamp's type) for other reasons (-1, 255,
    bytes), also right after a Timestamp's head (214, -1: 0xcc 0xd6 0xff), are read
    as before."""
    from statekit.serializers import MsgpackSerializer, _may_hold_timestamp

    codec = MsgpackSerializer()
    value = {"n": [-1, 255, -255], "b": b"\xff\x00\xff", 1: (-1, {"x": b"\xff"}), "s": {-1, 2},
             "head": [214, -1, b"\xd7\xff"], 2: {(215, -1): b"\xc7\x0c\xff"}}
    payload = codec.dumps(value)
    assert _may_hold_timestamp(payload)  # the check ran
    assert codec.loads(payload) == value


@pytest.mark.redis
@pytest.mark.parametrize("planted", [
    msgpack.packb([1, _TS]),
    # an ext 16 of 8 bytes, type -1: msgpack reads it as a Timestamp too (never written by it)
    b"\x92\x01\xc8\x00\x08\xff" + msgpack.packb(_TS)[2:],
], ids=["fixext", "ext16"])
def test_a_timestamp_cache_entry_is_a_miss(redis_url: str, planted: bytes) -> None:
    """A co-tenant's write of a Timestamp under a msgpack cache's key: a miss,
    counted as undecodable, not a ``msgpack.Timestamp`` handed to the view."""
    import redis

    from statekit.cache import Cache

    namespace = f"review15-ts-{uuid.uuid4().hex[:8]}"
    cache = Cache(redis_url, namespace=namespace, serializer="msgpack")
    try:
        cache.set("k", [1, 2])
        with redis.Redis.from_url(redis_url) as raw:
            names = [n for n in raw.scan_iter(match=f"*{namespace}*k") if not n.endswith(b"gen")]
            assert len(names) == 1, names
            stored = raw.get(names[0])
            assert stored is not None
            raw.set(names[0], stored[:1] + planted)
        assert cache.get("k", "default") == "default"
        assert cache.counters.get("undecodable") == 1
    finally:
        cache.close()


# -- one asyncio pool per URL ---------------------------------------------------------

@pytest.mark.redis
def test_a_urls_asyncio_stores_share_its_pool(redis_server: Any, redis_url: str) -> None:
    """An ``AsyncCache``, an ``AsyncSessionStore`` and an ``AsyncBroadcaster`` made
    from one URL with ``max_connections=2``, used by 8 tasks at once (cache calls, a
    session with a user, a publish and its read, a pipeline of the URL's shared
    client): the process's connections to the URL stay within 2 (``CLIENT LIST``),
    as the sync stores' on ``get_client``'s pool. Each store built a client of its
    own (up to 3 pools of 2). Closing the cache, then the session store, leaves the
    others working on the pool."""
    from test_review15_aio_pool import KEYS, TASKS, _work
    from test_review15_pool import Peak

    from statekit.broadcast.aio import AsyncBroadcaster
    from statekit.cache.aio import AsyncCache
    from statekit.redis.aio import get_async_client
    from statekit.sessions.aio import AsyncSessionStore

    name = f"review15-aio-shared-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?max_connections=2&client_name={name}&socket_timeout=10"

    async def run() -> None:
        cache = AsyncCache(url, namespace=name)
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix=name)
        hub = AsyncBroadcaster(url, key_prefix=name)
        client = get_async_client(url)
        try:
            with Peak(redis_server, name) as peak:
                await asyncio.wait_for(asyncio.gather(*(_work(cache, store, hub, client, i)
                                                        for i in range(TASKS))), 120)
            assert 1 <= peak.most <= 2, peak.most
            await cache.aclose()  # its connections back: the pool, the store and the hub go on
            session = await store.create({"after": "cache"}, user_id="u")
            assert (await store.load(session.sid) or {}).get("after") == "cache"
            version = await hub.publish("after", 1)
            assert await hub.retained("after") == (version, 1)
            assert await client.ping()
            await store.aclose()
            assert await cache.set("k", 1)  # a closed store is made again on next use
            assert await cache.get("k") == 1
            assert await hub.publish("after", 2) > version
        finally:
            await hub.stop()
            await store.aclose()
            await cache.aclose()

    asyncio.run(run())


# -- TLS on one end only ---------------------------------------------------------------

def _sync_error(url: str) -> str:
    from statekit.cache import Cache

    cache = Cache(url, on_error="raise")
    try:
        with pytest.raises(Exception) as caught:
            cache.get("k")
    finally:
        cache.close()
    return f"{type(caught.value).__name__}: {caught.value}"


def _async_error(url: str) -> str:
    from statekit.cache.aio import AsyncCache

    async def run() -> str:
        cache = AsyncCache(url, on_error="raise")
        try:
            with pytest.raises(Exception) as caught:
                await cache.get("k")
        finally:
            await cache.aclose()
        return f"{type(caught.value).__name__}: {caught.value}"

    return asyncio.run(run())


_QUICK = "socket_connect_timeout=2&socket_timeout=2&retries=0"


@pytest.mark.redis
@pytest.mark.parametrize("side", [_sync_error, _async_error], ids=["sync", "asyncio"])
def test_rediss_at_a_plain_text_server_says_so(redis_url: str, side: Any) -> None:
    """``rediss://`` at a server without TLS on that port: the TLS handshake waits for
    a reply that never comes (redis-py: 'Timeout connecting to server'); the error
    says what is likely and the fix (``redis://``)."""
    url = "rediss://" + redis_url.split("://", 1)[1] + f"?ssl_cert_reqs=none&{_QUICK}"
    message = side(url)
    assert message.startswith("BackendUnavailable"), message
    assert "no TLS" in message and "redis://" in message, message

