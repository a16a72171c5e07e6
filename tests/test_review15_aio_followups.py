"""Review 15 follow-ups on the asyncio side, against real servers.

* A kept connection the server closed (Redis killed) is found closed before a
  command is written on it, as the sync transport finds it: the command is reported
  unsent (retried under the rule, a session create ``NotSent``, so no cookie names
  a session that does not exist), not "sent, outcome unknown".
* The asynchronous broadcaster's scheduler and ``SharedValue.changed(timeout)`` never
  lose a cancellation that lands as they are woken (Python 3.11's ``wait_for``
  returned the result to a task cancelled as its awaitable completed).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from statekit.broadcast import SharedValue
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.transport import STALE_CHECK_AFTER
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.protocol import NotSent

pytestmark = pytest.mark.redis

#: timeouts a healthy server answers within on a loaded machine (0.3 s could fire on
#: one); the tests kill the server, whose connections are refused at once
FAST = "?socket_timeout=2&socket_connect_timeout=2"


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
        listener = SimpleNamespace(client_id=2**40, generation=1, connected=connected,
                                   tracking_refused=lambda conn, error: None) if tracking else None
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


# -- cancellations that land as a wait ends ---------------------------------------------------


def test_the_async_broadcasters_scheduler_ends_when_cancelled_as_it_is_woken(redis_url: str) -> None:
    """The scheduler waits for its next pass or a wake-up; cancelled in the loop pass
    that wakes it (stop(), a new job), it must end (a task group, run_forever's
    caller). On 3.11 the wait returned instead, and the scheduler ran on until
    stop()."""
    async def main() -> tuple[bool, int]:
        b = AsyncBroadcaster(redis_url, key_prefix="r15f" + uuid.uuid4().hex[:8])
        passes = 0
        waiting = asyncio.Event()
        again = asyncio.Event()
        run_pending = b.run_pending

        async def counted(now: float | None = None) -> float:
            nonlocal passes
            passes += 1
            if passes > 1:
                again.set()
            next_pass = await run_pending(now)
            waiting.set()
            return max(next_pass, time.time() + 60)  # then a long wait

        b.run_pending = counted  # type: ignore[method-assign]
        task = b.start()
        try:
            await asyncio.wait_for(waiting.wait(), 30)
            for _ in range(3):  # the wait's own task runs to its event
                await asyncio.sleep(0)
            assert b._wake is not None
            b._wake.set()
            task.cancel()  # the same pass: the wake-up completes first
            ran_on = asyncio.ensure_future(again.wait())
            await asyncio.wait({task, ran_on}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            ran_on.cancel()
            return task.done() and task.cancelled(), passes
        finally:
            await b.stop()

    assert asyncio.run(main()) == (True, 1)


def test_a_changed_wait_cancelled_as_its_update_lands_is_cancelled(redis_url: str) -> None:
    """``SharedValue.changed(timeout=...)`` cancelled in the loop pass its update
    wakes it: CancelledError (a request's scope or a task group ends it), not the
    new value as if never cancelled."""
    from statekit.broadcast import values

    sv: SharedValue[int] = SharedValue("r15f-" + uuid.uuid4().hex[:8], default=0, url=redis_url)

    async def main() -> str:
        task = asyncio.ensure_future(sv.changed(timeout=60))

        async def waiting() -> None:  # registered, loaded, waiting for its update
            while not sv._waiters or sv._value is values._UNLOADED:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(waiting(), 30)
        for _ in range(3):
            await asyncio.sleep(0)
        (_, future), = sv._waiters
        values._wake(future)  # what the subscriber thread's call_soon_threadsafe runs
        task.cancel()
        await asyncio.wait({task}, timeout=30)
        return "cancelled" if task.cancelled() else f"returned {task.result()!r}"

    assert asyncio.run(main()) == "cancelled"
