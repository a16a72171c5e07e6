"""Review 15, closing read-through: defects one change of the session brought into
another's path, shown against the suite's real Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
import redis

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import wait_for
from statekit.redis import get_client
from statekit.redis.aio import get_async_client
from statekit.redis.transport import Transport, lane_index
from statekit.sessions import SessionStore
from statekit.sessions.protocol import NotSent
from statekit.sessions.redis import _WRITE, RedisEngine

_SID = "0000" + "A" * 43  # an id no session has


def test_a_read_on_a_borrowed_connection_is_not_kept_near_when_its_lane_is_made_meanwhile(
        redis_url: str) -> None:
    """A session store's near cache keeps what a load read only when the connection
    that read it reports to the listener (``Transport.tracked``). On a pool whose kept
    share is full (``max_connections=2``: one kept connection, here another
    transport's) the load's ``HGETALL`` goes out on a borrowed, untracked connection.
    If the key's shared lane is made (tracked) by another thread between that read and
    the ``tracked()`` that follows it, the copy read untracked must still not be kept:
    no invalidation will ever come for it, and a later change by another client would
    not be seen until ``near_max_age``."""
    name = f"review15-closing-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?max_connections=2&client_name={name}&socket_timeout=10"
    client = get_client(url)
    engine = RedisEngine(client, f"review15-closing-{name}", near_cache=100, near_max_age=600)
    other = Transport(client, what="other")
    admin = get_client(redis_url)
    try:
        assert engine.listener is not None
        engine.listener.ensure_running()
        assert engine.listener.connected.wait(10)
        other.command(b"PING")  # this thread keeps the pool's one kept connection
        handle = uuid.uuid4().hex
        key = engine._session_prefix + handle
        admin.hset(key, mapping={"m:c": b"1", "m:v": b"1", "user": b"alice"})  # a live session

        transport = engine.transport
        plain = transport.command

        def command(*args: Any) -> Any:
            reply = plain(*args)
            if args[0] == b"HGETALL":
                # after the read, before tracked(): the kept share frees and another
                # thread's command (of another key) on the key's lane makes that lane, tracked
                other.close()
                done = threading.Thread(target=plain, args=(b"EXISTS", key + ":other"))
                done.start()
                done.join(30)
                assert not done.is_alive()
                shared = transport._shared
                assert shared is not None
                made = shared[lane_index(key, len(shared))]
                assert made is not None and made.tag > 0  # the key's lane, tracked now
            return reply

        transport.command = command  # type: ignore[method-assign]
        assert engine.load(handle)["user"] == b"alice"
        transport.command = plain  # type: ignore[method-assign]

        admin.hset(key, "user", b"mallory")  # another client's change of the session
        admin.ping()
        assert engine.load(handle)["user"] == b"mallory"
    finally:
        other.close()
        engine.transport.close()
        if engine.listener is not None:
            engine.listener.stop()
        client.connection_pool.disconnect()


def test_a_create_sent_without_a_reply_on_a_callers_own_client_is_maybe_stored(
        private_redis: RedisServer) -> None:
    """``SessionStore(client=...)`` with a client the app made (redis-py's own
    connection class, not statekit's, which marks a failure after sending as
    ``OutcomeUnknown``): Redis paused (SIGSTOP) once the script is loaded, the create
    is sent and its reply times out. It may be stored (and is, once Redis runs again),
    so it must not be ``NotSent``: the adapters' 503 sends its cookie."""
    server = private_redis
    client = redis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    store = SessionStore(client=client, secret_keys=["k"])
    with server.client() as r:
        r.script_load(_WRITE.source)  # else the create is an EVALSHA that runs nothing
    try:
        store.load(_SID)  # the connection is made before the pause
        s = store.new()
        s["cart"] = "apple"
        server.pause()
        with pytest.raises(BackendUnavailable) as failed:
            store.save(s)
        assert not isinstance(failed.value, NotSent)
        assert s.maybe_stored and s.new
    finally:
        server.resume()
        store.close()
    with server.client() as r:
        wait_for(lambda: len(r.keys("statekit:session:*")) == 1, timeout=30, what="the paused create to run")


@pytest.mark.parametrize("size", [2, 3])
def test_an_async_broadcasters_reads_beside_its_kept_connections_on_a_small_pool(
        redis_url: str, size: int) -> None:
    """``AsyncBroadcaster`` on a URL with ``max_connections`` of 2 or 3: publishes at
    once leave the asyncio transport's connections kept between calls; a read
    (``retained``, a pipeline of the shared client) then needs one more of the pool.
    The transport kept every one (``pool_share``: a quarter of 2 or 3 is none), and
    every read after failed 'Too many connections'. It keeps ``kept_share`` of the
    pool, as the sync transports together do: one at least stays free."""
    from statekit.broadcast.aio import AsyncBroadcaster

    async def run() -> None:
        url = f"{redis_url}?max_connections={size}&socket_timeout=10"
        hub = AsyncBroadcaster(url, key_prefix=f"review15-closing-{uuid.uuid4().hex[:8]}")
        try:
            names = [f"n{i}" for i in range(2 * size)]
            assert await asyncio.gather(*(hub.publish(n, i) for i, n in enumerate(names))) == [1] * len(names)
            assert await hub.retained("n1") == (1, 1)
            client = get_async_client(url)  # the broadcaster's: the app's own pipeline
            async with client.pipeline(transaction=False) as pipe:
                pipe.ping()
                assert await pipe.execute() == [True]
        finally:
            await hub.stop()

    asyncio.run(run())
