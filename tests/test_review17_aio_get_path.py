"""The asyncio transport's hot path (review 17, h1: ``AsyncCache.get`` one task at a
time): a command on a warm transport takes its kept connection without the
``_checkout`` coroutine, and what that path skips it still checks; the idempotent-read
rule, now asked only after a dropped connection, still sends a read once more and a
write never. Against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from statekit.errors import BackendUnavailable
from statekit.redis import aio
from statekit.redis.aio import AsyncTransport, create_async_client

pytestmark = pytest.mark.redis

#: generous: nothing here waits for a timeout
URL_OPTIONS = "?socket_timeout=10&socket_connect_timeout=10&retries=0"


def _run(url: str, body: Callable[[AsyncTransport], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = create_async_client(url + URL_OPTIONS)
        t = AsyncTransport(client, what="test")
        try:
            return await asyncio.wait_for(body(t), 30)
        finally:
            await t.aclose()
            await client.aclose()

    return asyncio.run(main())


def _counting(t: AsyncTransport, name: str) -> list[int]:
    """Count the calls of the transport's method *name* (still run)."""
    calls: list[int] = []
    real = getattr(t, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    setattr(t, name, counted)
    return calls


def test_a_warm_command_takes_its_kept_connection_without_a_checkout(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands one after another reuse the one kept connection, taken as it is
    (``_ready``): no ``_checkout`` coroutine, no ``_usable`` check. The idle time
    after which a kept connection is checked first is made long here, so a loaded
    machine's pause between two commands does not send one through the check."""
    monkeypatch.setattr(aio, "STALE_CHECK_AFTER", 60.0)

    async def body(t: AsyncTransport) -> tuple[set[Any], int, int]:
        await t.command(b"SET", "warm", "v")  # the first: connects through _checkout
        checkouts, checks = _counting(t, "_checkout"), _counting(t, "_usable")
        ids = {await t.command(b"CLIENT", b"ID") for _ in range(20)}
        assert await t.command(b"GET", "warm") == b"v"
        return ids, len(checkouts), len(checks)

    ids, checkouts, checks = _run(redis_url, body)
    assert len(ids) == 1 and checkouts == 0 and checks == 0


def test_a_kept_connection_closed_meanwhile_is_not_taken_as_it_is(redis_url: str) -> None:
    """The warm path still asks what ``_usable`` asked first: a kept connection
    closed since its last command (here by this process) is given back to the pool
    and the command runs on a new one; nothing leaks."""

    async def body(t: AsyncTransport) -> None:
        first = await t.command(b"CLIENT", b"ID")
        (conn,) = t._idle
        await conn.disconnect()
        second = await t.command(b"CLIENT", b"ID")
        assert second != first
        assert len(t._idle) == 1 and t._idle[0].is_connected
        assert len(t._pool._in_use_connections) == 1  # the closed one went back

    _run(redis_url, body)


def _drop_first_send(t: AsyncTransport) -> list[Any]:
    """The transport's first write after this: its connection is closed right after
    the command went out, before any reply (a connection dropped mid-command)."""
    sent: list[Any] = []
    real = t._write

    def dropping(conn: Any, chunks: Any) -> bool:
        sent.append(chunks)
        drain = real(conn, chunks)
        if len(sent) == 1:
            conn._writer.transport.abort()
        return drain

    t._write = dropping  # type: ignore[method-assign]
    return sent


def test_a_read_whose_connection_dropped_after_sending_is_sent_once_more(redis_url: str) -> None:
    """A GET sent, then its connection dropped before the reply: an idempotent read,
    sent once more on a new connection and answered (``is_read`` is now asked only
    then)."""

    async def body(t: AsyncTransport) -> tuple[Any, int]:
        await t.command(b"SET", "dropped-read", "v")
        sent = _drop_first_send(t)
        return await t.command(b"GET", "dropped-read"), len(sent)

    assert _run(redis_url, body) == (b"v", 2)


def test_a_write_whose_connection_dropped_after_sending_is_not_sent_again(redis_url: str) -> None:
    """An INCR sent, then its connection dropped before the reply: outcome unknown,
    never sent a second time (applied once at most)."""

    async def body(t: AsyncTransport) -> tuple[str, int, Any]:
        await t.command(b"DEL", "dropped-write")
        sent = _drop_first_send(t)
        with pytest.raises(BackendUnavailable) as caught:
            await t.command(b"INCR", "dropped-write")
        return str(caught.value), len(sent), await t.command(b"GET", "dropped-write")

    message, sent, value = _run(redis_url, body)
    assert "outcome is unknown" in message
    assert sent == 1
    assert value in (None, b"1")
