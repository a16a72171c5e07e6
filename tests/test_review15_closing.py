"""Review 15, closing read-through: defects one change of the session brought into
another's path, shown against the suite's real Redis."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from statekit.redis import get_client
from statekit.redis.transport import Transport, lane_index
from statekit.sessions.redis import RedisEngine


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
