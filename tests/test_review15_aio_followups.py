"""Review 15 follow-ups on the asyncio side, against real servers.

* A kept connection the server closed (Redis killed) is found closed before a
  command is written on it, as the sync transport finds it: the command is reported
  unsent (retried under the rule, a session create ``NotSent``, so no cookie names
  a session that does not exist), not "sent, outcome unknown".
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.transport import STALE_CHECK_AFTER
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.protocol import NotSent

pytestmark = pytest.mark.redis

FAST = "?socket_timeout=0.3&socket_connect_timeout=0.3"


# -- a kept connection the server closed -------------------------------------------------


def _killed(server: RedisServer) -> None:
    """Kill *server* (its close reaches this process's sockets as it exits) and let
    the kept connection be idle past STALE_CHECK_AFTER, after which a kept
    connection is checked (sync and asyncio alike; a kill can take less), without
    running the loop: the stream has not read the close."""
    start = time.monotonic()
    server.kill()
    time.sleep(max(0.0, STALE_CHECK_AFTER * 2 - (time.monotonic() - start)))


@pytest.mark.parametrize("tracking", [False, True], ids=["pooled", "key lanes"])
def test_a_write_to_a_killed_server_on_a_kept_connection_is_unsent(
        private_redis: RedisServer, tracking: bool) -> None:
    """A SET on the connection a GET left kept, sent right after Redis was killed
    (its FIN already at this socket, the loop not yet run to read it): found closed,
    so the reconnect is tried and refused, and the SET is reported as never sent
    (retryable under the rule). It was written on the closed socket and reported
    'sent: its outcome is unknown'."""
    server = private_redis

    async def main() -> str:
        client = create_async_client(server.url + FAST + "&retries=0")
        # key lanes: a listener the server refuses to redirect to (no such client);
        # the transport still sends each key's commands on its lane's connection
        connected = threading.Event()
        connected.set()
        listener = SimpleNamespace(client_id=2**40, generation=1, connected=connected) if tracking else None
        t = AsyncTransport(client, what="test", tracking=listener)
        try:
            await t.command("GET", "k")  # kept (a tracking transport: on its key lane)
            _killed(server)
            with pytest.raises(BackendUnavailable) as e:
                await t.command("SET", "k", "v")
            return str(e.value)
        finally:
            await t.aclose()
            await client.aclose()

    message = asyncio.run(main())
    assert "outcome is unknown" not in message
    assert "Connection refused" in message or "connecting" in message


def test_a_session_create_on_a_kept_connection_to_a_killed_server_is_not_sent(
        private_redis: RedisServer) -> None:
    """A new session's first save on the connection a load left kept, Redis killed
    in between: NotSent, and the session is not maybe stored (an adapter's 503 sends
    no cookie naming it); the sync engine's answer since 5204af7."""
    server = private_redis
    store = AsyncSessionStore(server.url + FAST + "&retries=0", secret_keys=["k" * 32])

    async def main() -> tuple[bool, bool]:
        try:
            await store.load("0000" + "A" * 43)  # a kept connection
            s = store.new()
            s["cart"] = "apple"
            _killed(server)
            with pytest.raises(NotSent):
                await store.save(s)
            return s.maybe_stored, s.new
        finally:
            await store.engine.aclose()

    assert asyncio.run(main()) == (False, True)
