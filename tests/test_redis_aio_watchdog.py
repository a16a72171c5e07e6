"""The asyncio transport's read timeout (``AsyncTransport._bark``): one timer per
transport closes the connections whose reply is overdue, instead of the
``asyncio.timeout`` redis-py enters per reply. Against a real server stopped with
SIGSTOP: each command times out at its own deadline, as redis-py's ``TimeoutError``
(outcome unknown, never sent again), and nothing is left behind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis.aio import AsyncTransport, create_async_client

pytestmark = pytest.mark.redis

TIMEOUT = 0.4


async def _transport(server: RedisServer) -> AsyncTransport:
    client = create_async_client(f"{server.url}?socket_timeout={TIMEOUT}&socket_connect_timeout=1&retries=3")
    return AsyncTransport(client, what="test")


async def _close(t: AsyncTransport) -> None:
    await t.aclose()
    await t.client.aclose()


def test_a_read_on_a_stopped_server_times_out_once_and_is_not_read_again(server: RedisServer) -> None:
    """A GET (an idempotent read, sent once more after a *dropped* connection) whose
    reply does not come: BackendUnavailable after about one socket timeout, caused by
    redis-py's TimeoutError, so it is not sent a second time (which would wait as long
    again); the transport then works on a new connection."""

    async def main() -> tuple[float, BaseException]:
        t = await _transport(server)
        try:
            await t.command(b"SET", "wd", "v")
            sent: list[Any] = []
            real = t._write

            def counting(conn: Any, chunks: Any) -> bool:
                sent.append(chunks)
                return real(conn, chunks)

            t._write = counting  # type: ignore[method-assign]
            server.pause()
            try:
                start = time.monotonic()
                with pytest.raises(BackendUnavailable, match="outcome is unknown") as caught:
                    await t.command(b"GET", "wd")
                took = time.monotonic() - start
            finally:
                server.resume()
            assert len(sent) == 1  # never sent again
            assert t._watched == {}
            assert await t.command(b"GET", "wd") == b"v"
            return took, caught.value
        finally:
            await _close(t)

    took, error = asyncio.run(main())
    import redis

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, redis.TimeoutError):
        cause = cause.__cause__
    assert isinstance(cause, redis.TimeoutError), repr(error)
    assert "Timeout reading from" in str(cause)
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 2.0, took  # its own deadline, not a later one
    print(f"timed out after {took:.3f}s (socket_timeout {TIMEOUT}s)")


def test_commands_started_at_different_times_each_time_out_at_their_own_deadline(
        server: RedisServer) -> None:
    """Three commands on three open connections, sent 0.15 s apart to a stopped server: the
    one timer is re-armed for each later deadline, so each fails about one socket
    timeout after its own start, and the INCRs (writes whose outcome is unknown)
    were never sent again: the counter is 3 once the server resumes."""

    async def main() -> list[float]:
        t = await _transport(server)
        try:
            await t.command(b"DEL", "wd-n")
            # three connections made now: a connect to a stopped server would fail in
            # its handshake instead (nothing sent: retried, then unavailable)
            await asyncio.gather(*[t.command(b"GET", "wd-n") for _ in range(3)])
            server.pause()
            try:
                async def one(delay: float) -> float:
                    await asyncio.sleep(delay)
                    start = time.monotonic()
                    with pytest.raises(BackendUnavailable, match="outcome is unknown"):
                        await t.command(b"INCR", "wd-n")
                    return time.monotonic() - start

                took = await asyncio.gather(one(0.0), one(0.15), one(0.3))
            finally:
                server.resume()
            assert t._watched == {}
            # a paused client's command runs when the server resumes, once: never resent
            for _ in range(50):
                if await t.command(b"GET", "wd-n") == b"3":
                    break
                await asyncio.sleep(0.02)
            assert await t.command(b"GET", "wd-n") == b"3"
            return list(took)
        finally:
            await _close(t)

    took = asyncio.run(main())
    for each in took:
        assert TIMEOUT * 0.9 <= each < TIMEOUT + 2.0, took
    print("each timed out after", [f"{x:.3f}s" for x in took])


def test_replies_that_come_leave_no_timer_and_no_watched_connection(redis_url: str) -> None:
    """200 commands at once and one at a time: every reply read, the watched table
    empty afterwards, and aclose() cancels the timer (no callback left on the loop)."""

    async def main() -> None:
        client = create_async_client(f"{redis_url}?socket_timeout=5")
        t = AsyncTransport(client, what="test")
        await t.command(b"SET", "wd-k", "v")
        replies = await asyncio.gather(*[t.command(b"GET", "wd-k") for _ in range(200)])
        assert replies == [b"v"] * 200
        for _ in range(20):
            assert await t.command(b"GET", "wd-k") == b"v"
        assert t._watched == {}
        assert t._watchdog is not None  # armed for the first deadline, 5 s away
        await t.aclose()
        assert t._watchdog is None
        await client.aclose()

    asyncio.run(main())


def test_memory_commands_enter_no_wait_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// (fakeredis's in-process server) reads and drains with no timeout: given
    one, fakeredis enters ``asyncio.wait_for`` per reply, which on Python 3.11 can
    swallow a cancellation that lands as the reply comes (a cancelled single-flight
    waiter then returned a value instead of raising CancelledError)."""
    from statekit.cache import AsyncCache

    entered: list[object] = []
    real = asyncio.wait_for

    def counting(fut: Any, timeout: Any) -> Any:
        entered.append(timeout)
        return real(fut, timeout)

    async def main() -> None:
        cache = AsyncCache("memory://no-wait-for", namespace="w")
        try:
            assert await cache.set("k", 1) is True
            monkeypatch.setattr(asyncio, "wait_for", counting)
            for _ in range(20):
                assert await cache.get("k") == 1
                assert await cache.incr("n") >= 1
        finally:
            await cache.aclose()

    asyncio.run(main())
    assert entered == []
