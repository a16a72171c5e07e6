"""The asyncio Redis layer (statekit.redis.aio), against real servers: the same
replies, scripts, error map and retry rule as the sync transport."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis import create_client, memory_client
from statekit.redis.aio import AsyncTransport, create_async_client, get_async_client, memory_async_client
from statekit.redis.scripts import Script
from statekit.redis.transport import RedisReplyError, Transport
from statekit.testing.loop import LoopLag

pytestmark = pytest.mark.redis

SOURCE = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
SCRIPT = Script("aio-test", SOURCE, hashlib.sha1(SOURCE.encode()).hexdigest().encode())
FAST = "socket_timeout=0.5&socket_connect_timeout=0.5"


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make())  # type: ignore[arg-type]


async def _with(url: str, body: Callable[[AsyncTransport], Awaitable[Any]], **kw: Any) -> Any:
    client = create_async_client(url)
    transport = AsyncTransport(client, what="test", **kw)
    try:
        return await body(transport)
    finally:
        await transport.aclose()
        await client.aclose()


def _script_round_trip(url: str) -> None:
    async def body(t: AsyncTransport) -> None:
        assert await t.command(b"SET", "k", "v") in (b"OK", True)
        assert await t.command(b"GET", "k") == b"v"
        keys, arg, count = await t.script(SCRIPT, ["{c}n"], ["a"])
        assert (keys, arg, count) == (b"{c}n", b"a", 1)
        # the sync transport reads what the async one wrote, and runs the same script
        sync = Transport(create_client(url), what="test")
        assert sync.script(SCRIPT, ["{c}n"], ["b"])[2] == 2
        sync.client.close()
        await t.command(b"SCRIPT", b"FLUSH")
        assert (await t.script(SCRIPT, ["{c}n"], ["c"]))[2] == 3  # NOSCRIPT: loaded, run once
        with pytest.raises(RedisReplyError, match="not an integer"):
            await t.command(b"INCR", "k")

    run(lambda: _with(url, body))


def test_commands_and_scripts_on_every_line(redis_line_url: str) -> None:
    _script_round_trip(redis_line_url)


@pytest.mark.sentinel
def test_commands_and_scripts_on_sentinel(sentinel_url: str) -> None:
    _script_round_trip(sentinel_url)


@pytest.mark.cluster
def test_commands_and_scripts_on_cluster(redis_cluster_url: str) -> None:
    async def body(t: AsyncTransport) -> None:
        assert t.cluster and not t.direct
        for i in range(20):  # keys on every master
            await t.command(b"SET", f"k{i}", str(i))
        assert [await t.command(b"GET", f"k{i}") for i in range(20)] == [str(i).encode() for i in range(20)]
        assert (await t.script(SCRIPT, ["{c}n"], ["a"]))[2] == 1

    run(lambda: _with(redis_cluster_url, body))


def test_memory_shares_the_sync_server() -> None:
    memory_client("aio").set("shared", "from-sync")

    async def main() -> None:
        client = memory_async_client("aio")
        t = AsyncTransport(client)
        try:
            assert await t.command(b"GET", "shared") == b"from-sync"
            assert (await t.script(SCRIPT, ["n"], ["x"]))[2] == 1
        finally:
            await t.aclose()
            await client.aclose()

    run(main)
    assert memory_client("aio").get("n") == b"1"


def test_shared_client_per_loop(redis_url: str) -> None:
    async def one() -> Any:
        a, b = get_async_client(redis_url), get_async_client(redis_url)
        assert a is b
        await a.aclose()
        return a

    assert run(one) is not run(one)  # another loop, another client


def test_unreachable_is_backend_unavailable_after_retries() -> None:
    from statekit.embedded import free_port

    async def main() -> float:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await _with(f"redis://127.0.0.1:{free_port()}/0?{FAST}&retries=2",
                        lambda t: t.command(b"GET", "k"))
        return time.monotonic() - start

    print(f"unreachable: BackendUnavailable after {run(main):.3f}s")


def test_write_whose_reply_never_came_is_not_resent(server: RedisServer) -> None:
    """SIGSTOP mid-INCR: BackendUnavailable, and the counter ends at 1, never 2."""
    url = f"{server.url}?{FAST}&retries=3"

    async def body(t: AsyncTransport) -> None:
        await t.command(b"DEL", "counter")
        server.pause()
        try:
            with pytest.raises(BackendUnavailable, match="outcome is unknown"):
                await t.command(b"INCR", "counter")
        finally:
            server.resume()
        assert await t.command(b"GET", "counter") == b"1"

    run(lambda: _with(url, body))


def test_cancelled_call_never_leaks_its_reply(server: RedisServer) -> None:
    """A task cancelled after sending: its connection is dropped, so the next
    caller reads its own reply, not the late one."""
    url = f"{server.url}?socket_timeout=5"

    async def body(t: AsyncTransport) -> None:
        await t.command(b"SET", "a", "reply-of-a")
        await t.command(b"SET", "b", "reply-of-b")
        server.pause()
        task = asyncio.ensure_future(t.command(b"GET", "a"))
        await asyncio.sleep(0.1)  # sent, waiting for the reply
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        server.resume()
        assert await t.command(b"GET", "b") == b"reply-of-b"
        assert await t.command(b"GET", "a") == b"reply-of-a"

    run(lambda: _with(url, body))


def test_two_hundred_concurrent_commands_use_bounded_connections(redis_url: str) -> None:
    async def body(t: AsyncTransport) -> None:
        await t.command(b"SET", "k", "v")
        async with LoopLag(0.001) as lag:
            replies = await asyncio.gather(*[t.command(b"GET", "k") for _ in range(200)])
        assert replies == [b"v"] * 200
        pool = t.client.connection_pool
        opened = len(pool._in_use_connections) + len(pool._available_connections)
        assert opened <= t.limit == 6  # 8 less 2 kept free for pipelines and pub/sub
        print(f"200 concurrent GETs: {opened} connections, loop lag {lag.summary()}")
        # the connections the transport keeps leave the pool room for the client's own
        # pipelines (a listing of sessions, a cluster batch): no "Too many connections"
        async with t.client.pipeline(transaction=False) as pipe:
            assert await pipe.get("k").get("k").execute() == [b"v", b"v"]

    run(lambda: _with(f"{redis_url}?max_connections=8", body))


def test_per_loop_transports_close_with_their_loop(redis_url: str) -> None:
    """asyncio.run's shutdown closes a loop's transport and client; a loop closed
    without it has its sockets closed when the next loop asks (no connection kept per
    dead loop, no 'unclosed transport' warning: filterwarnings=error)."""
    from statekit.redis.aio import transports_per_loop

    lanes = transports_per_loop(lambda: create_async_client(redis_url), owned=True, what="test")

    async def use() -> AsyncTransport:
        t = lanes.current()
        assert lanes.current() is t
        assert await t.command(b"PING") in (b"PONG", True)
        return t

    first = run(use)
    assert lanes.items() == []  # closed at the loop's shutdown_asyncgens
    assert not first._idle

    loop = asyncio.new_event_loop()
    second = loop.run_until_complete(use())
    loop.close()  # no shutdown_asyncgens: the transport stays registered, its loop dead
    assert lanes.items() == [second]
    third = run(use)  # the next loop's first call abandons the dead loop's sockets
    assert third is not second and lanes.items() == []
    assert all(conn._writer is None for conn in second._idle)


def test_out_of_memory_is_unavailable_on_both_transports(private_redis: RedisServer) -> None:
    """A Redis at maxmemory with noeviction refuses writes with OOM, applying nothing:
    BackendUnavailable (a cache degrades, a session store answers 503), not a bug's
    500, from the sync and the async transport alike."""
    with private_redis.client() as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    try:
        sync = Transport(create_client(private_redis.url), what="test")
        with pytest.raises(BackendUnavailable, match="OOM"):
            sync.command(b"SET", "k", "v")
        with pytest.raises(BackendUnavailable, match="OOM"):
            sync.script(SCRIPT, ["n"], ["a"])
        sync.client.close()

        async def body(t: AsyncTransport) -> None:
            with pytest.raises(BackendUnavailable, match="OOM"):
                await t.command(b"SET", "k", "v")
            with pytest.raises(BackendUnavailable, match="OOM"):
                await t.script(SCRIPT, ["n"], ["a"])

        run(lambda: _with(private_redis.url, body))
    finally:
        with private_redis.client() as admin:
            admin.config_set("maxmemory", "0")


def test_a_refused_tracking_set_up_keeps_its_connection_and_reads_untracked(redis_url: str) -> None:
    """A server that refuses CLIENT TRACKING (an ACL, a proxy; here a redirect to a
    client that does not exist): the transport serves untracked, says so (a near
    cache must not keep what it reads), and keeps reusing its connection instead of
    opening one per call."""
    import threading
    from types import SimpleNamespace

    connected = threading.Event()
    connected.set()
    refused: list[Exception] = []  # the listener is told (it logs the refusal once)
    listener = SimpleNamespace(client_id=2**40, generation=1, connected=connected,
                               tracking_refused=lambda conn, error: refused.append(error))

    async def body(t: AsyncTransport) -> None:
        for _ in range(5):
            assert await t.command(b"PING") in (b"PONG", True)
        assert not t.tracked()
        pool = t.client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) == 1

    run(lambda: _with(redis_url, body, tracking=listener))
    assert len(refused) == 1 and "does not exist" in str(refused[0]), refused


def test_shared_client_first_use_from_two_threads(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads, each on its own loop, asking for a URL's shared client for the
    first time at once: one registry wins, each loop keeps the one client it was
    given (asked again, the same) and no other client is made."""
    import threading

    from statekit.redis import aio

    made: list[Any] = []
    real_create, real_lanes = aio.create_async_client, aio.transports_per_loop
    both_in = threading.Barrier(2)

    def create(url: str, **overrides: Any) -> Any:
        made.append(real_create(url, **overrides))
        return made[-1]

    def lanes(*args: Any, **kwargs: Any) -> Any:
        # hold the first caller until the second arrives: both have seen no registry
        # (unless the second is kept out, then the wait times out)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_in.wait(timeout=0.5)
        return real_lanes(*args, **kwargs)

    monkeypatch.setattr(aio, "create_async_client", create)
    monkeypatch.setattr(aio, "transports_per_loop", lanes)
    checked = threading.Barrier(2, timeout=10)
    got: dict[str, tuple[Any, Any, int]] = {}

    def thread(name: str) -> None:
        async def main() -> None:
            first = get_async_client(redis_url, client_name="first-use")
            assert await first.ping()
            await asyncio.to_thread(checked.wait)  # both threads have their first client
            again = get_async_client(redis_url, client_name="first-use")
            key = (redis_url, (("client_name", "first-use"),))
            got[name] = (first, again, len(aio._shared[key].items()))
            await asyncio.to_thread(checked.wait)  # both loops alive until both counted

        asyncio.run(main())

    threads = [threading.Thread(target=thread, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(got) == {"a", "b"}
    for first, again, loops in got.values():
        assert first is again
        assert loops == 2
    assert {id(c) for c in made} == {id(got["a"][0]), id(got["b"][0])}  # no third client


def test_cluster_client_giving_up_is_backend_unavailable() -> None:
    """redis-py's cluster client raising ``ClusterError`` ("TTL exhausted." after too
    many redirects) is ``BackendUnavailable``, commands and scripts alike, and
    nothing is sent again."""
    import redis

    client = create_async_client("redis+cluster://127.0.0.1:1")  # connects on first use only
    calls: list[tuple[Any, ...]] = []

    async def exhausted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise redis.exceptions.ClusterError("TTL exhausted.")

    client.execute_command = exhausted

    async def main() -> None:
        t = AsyncTransport(client, what="test")
        with pytest.raises(BackendUnavailable, match="TTL exhausted"):
            await t.command(b"GET", "k")
        with pytest.raises(BackendUnavailable, match="TTL exhausted"):
            await t.command(b"INCR", "n")
        with pytest.raises(BackendUnavailable, match="TTL exhausted"):
            await t.script(SCRIPT, ["{c}n"], ["a"])

    run(main)
    assert [c[0] for c in calls] == ["GET", "INCR", "EVALSHA"]  # each sent once


def test_new_connections_are_opened_a_few_at_a_time(redis_url: str) -> None:
    """200 concurrent commands on a fresh transport: at most CONNECTS_AT_ONCE connects
    under way at any moment (the others wait for a connection given back), every
    reply right, and callers cancelled while waiting leave no connection behind: each
    one the pool handed out is back in the transport's keep."""
    from statekit.redis import aio

    async def body(t: AsyncTransport) -> None:
        await t.command(b"SET", "k", "v")
        await t.aclose()
        t._closed = False
        pool = t.client.connection_pool
        real_get = pool.get_connection
        under_way, peak = 0, 0

        async def get_connection() -> Any:
            nonlocal under_way, peak
            under_way += 1
            peak = max(peak, under_way)
            try:
                await asyncio.sleep(0.005)  # a slow handshake: the connects overlap
                return await real_get()
            finally:
                under_way -= 1

        pool.get_connection = get_connection
        calls = [asyncio.ensure_future(t.command(b"GET", "k")) for _ in range(200)]
        await asyncio.sleep(0.002)
        for call in calls[1::3]:
            call.cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert all(r == b"v" or isinstance(r, asyncio.CancelledError) for r in done)
        assert done.count(b"v") >= 200 - len(calls[1::3])
        assert 1 <= peak <= aio.CONNECTS_AT_ONCE
        assert not t._waiters or all(w.done() for w in t._waiters)
        # a cancelled caller may have had its connection dropped mid-command (sent, no
        # reply read); every other connection the pool handed out is kept for reuse
        assert len(t._idle) == len(pool._in_use_connections)
        print(f"200 concurrent GETs, a third cancelled: {len(t._idle)} connections, "
              f"at most {peak} connecting at once")

    run(lambda: _with(redis_url, body))


def test_a_command_larger_than_the_socket_takes_is_drained_under_the_timeout(server: RedisServer) -> None:
    """A 33 MiB value (more than loopback's buffers hold): what the socket does not
    take at once is drained, the reply comes and the value reads back; with the
    server paused the drain times out: BackendUnavailable (sent in part, outcome
    unknown), never sent again, and the half-written command is never run (its
    connection is closed). The connection's send buffer is pinned before the pause
    and the value sized from ``tcp_rmem`` (:func:`beyond_loopback_buffers`): 32 MiB
    were cut only because ``tcp_wmem`` lets a send buffer grow to 4 MiB here (the
    kernel took 4.1 MiB of a write to a paused server). With a send buffer of
    64 MiB (SO_SNDBUFFORCE, a scratch run) the socket took the whole SET, no drain
    ran, and the test passed on the reply's read timeout instead: it now requires
    the write's."""
    from test_redis_helpers import beyond_loopback_buffers, pin_send_buffer

    url = f"{server.url}?socket_timeout=1"
    size = max(32 << 20, beyond_loopback_buffers())
    big = b"x" * size

    async def body(t: AsyncTransport) -> None:
        assert await t.command(b"SET", "big", big) in (b"OK", True)
        assert await t.command(b"STRLEN", "big") == size
        for conn in t._idle:  # (the one: commands one at a time)
            pin_send_buffer(conn._writer.get_extra_info("socket"))
        server.pause()
        try:
            with pytest.raises(BackendUnavailable, match="writing to socket.*outcome is unknown"):
                await t.command(b"SET", "big2", big)
        finally:
            server.resume()
        assert await t.command(b"EXISTS", "big2") == 0
        await t.command(b"DEL", "big")

    run(lambda: _with(url, body))


def test_commands_scripts_and_a_large_value_over_tls(server: RedisServer, tmp_path: Path) -> None:
    """rediss:// (a TLS proxy in front of the server): commands and scripts, and a
    value larger than one TLS write takes, so the transport's drain runs on the TLS
    stream too."""
    from test_redis_helpers import tls_url

    big = b"y" * (4 << 20)

    async def body(t: AsyncTransport) -> None:
        assert await t.command(b"SET", "tls", big) in (b"OK", True)
        assert await t.command(b"GET", "tls") == big
        assert (await t.script(SCRIPT, ["{tls}n"], ["a"]))[1] == b"a"
        await t.command(b"DEL", "tls", "{tls}n")

    with tls_url(server, tmp_path) as url:
        run(lambda: _with(url, body))
