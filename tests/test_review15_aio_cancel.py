"""Review 15: the asyncio transport under cancellation (statekit.redis.aio), against
real servers. A task cancelled at any await point of a cache, session or broadcast
call (sending, waiting for its reply, half-way through a large reply) must leave
every later reply on the same pool its own (redis-py's CVE-2023-28858/28859), never
send a write again, and leave the pool bounded with no connection half-read. And a
Cluster script a primary lacks is run where it was just loaded, keys or none."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import pytest
from test_redis_helpers import beyond_loopback_buffers, pin_send_buffer  # tests/ is on sys.path

from statekit.cache.aio import AsyncCache
from statekit.embedded import RedisCluster as RedisClusterServers
from statekit.embedded import RedisServer
from statekit.pytest_plugin import redis_command_calls
from statekit.redis import create_client
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.scripts import Script
from statekit.testing.loop import LoopLag

pytestmark = pytest.mark.redis

KEYLESS_SOURCE = "return 'ran ' .. ARGV[1]"
KEYLESS = Script("review15-keyless", KEYLESS_SOURCE,
                 hashlib.sha1(KEYLESS_SOURCE.encode()).hexdigest().encode())


def test_cluster_keyless_script_runs_on_the_primary_it_was_just_loaded_on(redis_cluster_url: str) -> None:
    """A keyless script every primary lacks (flushed, restarted): its NOSCRIPT is
    answered by loading it on one primary and running it again. redis-py routes a
    keyless EVALSHA to a random primary each time, so the run again must be sent to
    the primary that loaded it: the loads on the others are in the background and
    may not have reached them (a paused primary; here held until the end). Sent to
    a random primary it failed with 'NOSCRIPT' (a RedisReplyError) two times in
    three."""
    async def main() -> None:
        client = create_async_client(redis_cluster_url)
        t = AsyncTransport(client, what="test")
        held = asyncio.Event()
        loads: list[list[str]] = []

        async def held_load(nodes: list[Any], source: str) -> None:
            loads.append([n.name for n in nodes])
            await held.wait()

        t._load_on = held_load  # type: ignore[method-assign]
        try:
            for i in range(12):
                await client.execute_command("SCRIPT FLUSH", target_nodes=client.ALL_NODES)
                assert await t.script(KEYLESS, [], [str(i)]) == f"ran {i}".encode()
            # the other primaries' load was asked for (once: held, it stays under way)
            assert loads and all(len(names) == len(client.get_primaries()) - 1 for names in loads)
        finally:
            held.set()
            await t.aclose()
            await client.aclose()

    asyncio.run(main())


# -- helpers -----------------------------------------------------------------------------


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait (polling the loop) until *cond()*; fail naming *what* after *timeout*."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            where = [" > ".join(_chain(task)) for task in asyncio.all_tasks()]
            raise AssertionError(f"timed out waiting for {what}; the loop's tasks wait in {where}")
        await asyncio.sleep(0.005)


async def _transport(cache: AsyncCache, connections: int = 8) -> AsyncTransport:
    """*cache*'s transport on this loop, with *connections* connected and kept (a
    call on a stopped server then needs no handshake: it is sent at once)."""
    backend = cache._backend
    assert backend is not None
    t = backend.transport.current()
    await asyncio.gather(*[t.command(b"PING") for _ in range(connections)])
    assert len(t._idle) >= connections
    return t


def _chain(task: asyncio.Future[Any]) -> list[str]:
    """The coroutines *task* is suspended in, outermost first."""
    coro: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    names = []
    while getattr(coro, "cr_code", None) is not None:
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


def _awaits(task: asyncio.Future[Any], name: str) -> bool:
    """Whether *task* is suspended in a coroutine called *name*."""
    return name in _chain(task)


def _replies_awaited() -> bool:
    """Whether every other task of the loop awaits a reply (``read_response``) or
    tasks that do (a Cluster pipeline's ``gather`` of one task per node)."""
    me = asyncio.current_task()
    chains = [_chain(t) for t in asyncio.all_tasks() if t is not me]
    return bool(chains) and all("read_response" in c or c[-1:] == ["_execute"] for c in chains)


@contextlib.asynccontextmanager
async def _closed_after(admin: Any, *closing: Any) -> AsyncIterator[Any]:
    """Give *admin* (a sync client the test counts the server's commands with); at
    the end close each of *closing* (stores, caches: ``aclose()``), then *admin*."""
    try:
        yield admin
    finally:
        for thing in closing:
            await thing.aclose()
        admin.close()


async def _cancelled(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _cancelled_while_stopped(servers: Sequence[Any],
                                   calls: Callable[[], Iterable[Awaitable[Any]]]) -> None:
    """Stop *servers* (SIGSTOP), start *calls()*, wait until each awaits its reply,
    cancel each; the servers run again after."""
    for server in servers:
        server.pause()
    try:
        tasks = [asyncio.ensure_future(call) for call in calls()]
        await _until(_replies_awaited, "the calls sent")
        for task in tasks:
            await _cancelled(task)
    finally:
        for server in servers:
            server.resume()


async def _all_replies_own(cache: AsyncCache, values: dict[str, str], rounds: int = 10) -> None:
    """Many concurrent gets and get_manys on the same pool: each reply its own."""
    names = sorted(values)
    calls: list[Awaitable[Any]] = []
    wanted: list[Any] = []
    for r in range(rounds):
        for i, name in enumerate(names):
            calls.append(cache.get(name))
            wanted.append(values[name])
            if (i + r) % 3 == 0:
                pair = [name, names[(i + r) % len(names)]]
                calls.append(cache.get_many(pair))
                wanted.append({k: values[k] for k in pair})
    assert await asyncio.gather(*calls) == wanted


async def _cancelled_mid_write(start: Callable[[], Awaitable[Any]], conns: Callable[[], Iterable[Any]],
                               servers: Sequence[RedisServer]) -> None:
    """Run *start()* with *servers* stopped (SIGSTOP), cancel it once one of
    *conns()* (every connection it may write on) holds part of its write, resume
    them, and wait until its connection is gone from the servers (closed, not
    aborted, it would first write the rest of the command, which the server would
    then run). The connections' send buffers are pinned first, and *start()*'s
    command is to be larger than :func:`beyond_loopback_buffers`: the 24 MiB values
    were cut only because ``tcp_wmem`` lets a send buffer grow to 4 MiB here; with
    64 MiB (SO_SNDBUFFORCE, a scratch run) the socket took all of it and no write
    was ever held."""
    for conn in conns():
        if conn._writer is not None:
            pin_send_buffer(conn._writer.get_extra_info("socket"))
    admins = [server.client() for server in servers]
    try:
        clients = sum(len(admin.client_list()) for admin in admins)
        for server in servers:
            server.pause()
        try:
            task = asyncio.ensure_future(start())

            def writing() -> bool:
                return any(c._writer is not None and c._writer.transport.get_write_buffer_size()
                           for c in conns())

            await _until(writing, "the write to wait for the socket")
            await _cancelled(task)
        finally:
            for server in servers:
                server.resume()
        await _until(lambda: sum(len(admin.client_list()) for admin in admins) < clients,
                     "the cancelled call's connection closed")
    finally:
        for admin in admins:
            admin.close()


class HoldingProxy:
    """A loopback TCP proxy in front of a Redis: client to server passes freely;
    server to client passes at most :attr:`budget` more bytes once one is set, then
    holds (:attr:`held` set) until :meth:`release`. Every byte it holds is passed on
    after the release, unless its client closed meanwhile."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.budget: int | None = None
        self.held = asyncio.Event()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hold_after(self, count: int) -> None:
        self.budget = count
        self.held.clear()
        self._released.clear()

    def release(self) -> None:
        self.budget = None
        self._released.set()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        for pipe in (self._pipe(creader, swriter, False), self._pipe(sreader, cwriter, True)):
            task = asyncio.ensure_future(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limited: bool) -> None:
        try:
            while data := await reader.read(65536):
                while limited and data and self.budget is not None:
                    if self.budget == 0:
                        self.held.set()
                        await self._released.wait()
                        continue
                    part, data = data[:self.budget], data[self.budget:]
                    self.budget -= len(part)
                    writer.write(part)
                if data:
                    writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


# -- a call cancelled at each point, then other calls on the same pool ------------------------

CALLS: dict[str, Callable[[AsyncCache], Awaitable[Any]]] = {
    "get": lambda c: c.get("k0"),
    "get_many": lambda c: c.get_many(["k1", "k2"]),
    "set": lambda c: c.set("k3", "written by a cancelled set"),
    "incr": lambda c: c.incr("n"),
}


def test_cache_calls_cancelled_awaiting_their_replies_leave_every_later_reply_its_own(
        server: RedisServer) -> None:
    """get, get_many, set and incr each sent and awaiting its reply on a stopped
    Redis (SIGSTOP), each on its own connection, then cancelled (a client gone, a
    timeout around the call). After the server resumes, the late replies are never
    read as the replies of the calls that follow on the same pool: 300 of them, each
    its own value. The cancelled writes are sent once: the set's value is the old or
    the new one, the counter moved by the INCRBYs the server saw, at most one."""
    values = {f"k{i}": f"value of k{i}" for i in range(10)}

    async def main() -> None:
        cache = AsyncCache(f"{server.url}?socket_timeout=30")
        admin = server.client()
        try:
            await cache.set_many(values)
            await cache.set("n", 5)
            t = await _transport(cache)
            admin.config_resetstat()
            server.pause()
            try:
                tasks = []
                for name, call in CALLS.items():
                    awaited = len(t._watched)
                    tasks.append(asyncio.ensure_future(call(cache)))
                    await _until(lambda awaited=awaited: len(t._watched) > awaited, f"{name} sent")
                for task in tasks:
                    await _cancelled(task)
                assert not t._watched  # every cancelled call's connection dropped
            finally:
                server.resume()
            await _all_replies_own(cache, {k: v for k, v in values.items() if k != "k3"})
            assert await cache.get("k3") in (values["k3"], "written by a cancelled set")
            calls = redis_command_calls(admin)
            assert calls.get("incrby", 0) <= 1  # never sent again
            assert await cache.get("n") == 5 + calls.get("incrby", 0)
        finally:
            await cache.aclose()
            admin.close()

    asyncio.run(main())


def test_cache_get_cancelled_half_way_through_a_large_reply(server: RedisServer) -> None:
    """A get of a 4 MB value cancelled after 64 KB of its reply were read (a proxy
    holds the rest): its connection is dropped, so the rest of that reply is never
    read as a later call's: the next gets on the pool read their own values, the
    large one too."""
    big = "x" * (4 << 20)

    async def main() -> None:
        async with HoldingProxy(server.port) as proxy:
            cache = AsyncCache(f"redis://127.0.0.1:{proxy.port}?socket_timeout=30")
            try:
                await cache.set_many({"big": big, "small": "small value"})
                t = await _transport(cache)
                proxy.hold_after(64 << 10)
                task = asyncio.ensure_future(cache.get("big"))
                await asyncio.wait_for(proxy.held.wait(), 20)
                assert len(t._watched) == 1  # reading its reply
                await _cancelled(task)
                proxy.release()
                assert await asyncio.gather(cache.get("small"), cache.get("big"), cache.get("small")) == \
                    ["small value", big, "small value"]
            finally:
                await cache.aclose()

    asyncio.run(main())


def test_cache_set_cancelled_while_its_large_command_is_written_is_never_applied(server: RedisServer) -> None:
    """A set of a large value (more than loopback's buffers hold) cancelled while
    the socket still holds part of the command (the server stopped): the connection
    is aborted, not closed, so the rest is dropped rather than written after the
    caller was told it was cancelled; the server never runs it once resumed. Later
    calls read their own replies."""
    big = os.urandom(beyond_loopback_buffers())

    async def main() -> None:
        cache = AsyncCache(f"{server.url}?socket_timeout=30")
        try:
            await cache.set_many({"blob": b"old", "other": "other value"})
            pool = (await _transport(cache)).client.connection_pool
            await _cancelled_mid_write(lambda: cache.set("blob", big),
                                       lambda: [*pool._available_connections, *pool._in_use_connections],
                                       [server])
            assert await asyncio.gather(cache.get("other"), cache.get("blob")) == ["other value", b"old"]
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_cluster_cache_calls_cancelled_awaiting_their_replies(own_redis_cluster: RedisClusterServers) -> None:
    """The same four calls through a Cluster client, every primary stopped (SIGSTOP)
    while their replies are awaited, then cancelled: after the primaries resume, the
    calls that follow on the same node connections read their own replies, and the
    cancelled incr was run at most once."""
    values = {f"k{i}": f"value of k{i}" for i in range(10)}
    cluster = own_redis_cluster

    async def main() -> None:
        cache = AsyncCache(f"{cluster.url}?socket_timeout=30")
        admins = [node.client() for node in cluster.nodes]
        try:
            await cache.set_many(values)
            await cache.set("n", 5)
            for _ in range(3):  # connections to every node open (a stopped node: no handshake)
                await _all_replies_own(cache, values, rounds=1)
                await cache.incr("n", 0)
            for admin in admins:
                admin.config_resetstat()
            await _cancelled_while_stopped(cluster.nodes, lambda: [call(cache) for call in CALLS.values()])
            await _all_replies_own(cache, {k: v for k, v in values.items() if k != "k3"})
            assert await cache.get("k3") in (values["k3"], "written by a cancelled set")
            incrby = sum(redis_command_calls(admin).get("incrby", 0) for admin in admins)
            assert incrby <= 1
            assert await cache.get("n") == 5 + incrby
        finally:
            await cache.aclose()
            for admin in admins:
                admin.close()

    asyncio.run(main())


# -- many cancellations at random points ----------------------------------------------------


async def _cancel_at_random(cache: AsyncCache, values: dict[str, str], count: int = 200) -> LoopLag:
    """*count* cache calls (gets, get_manys, sets, incrs), each cancelled at a random
    point (before it is sent, awaiting a connection or the gate, while its reply is
    read; some not at all), a third through ``asyncio.timeout``; under a loop
    heartbeat. Returns the heartbeat."""
    rng = random.Random(15)
    names = sorted(values)
    loop = asyncio.get_running_loop()
    tasks = []
    async with LoopLag(0.002) as lag:
        for i in range(count):
            name = names[i % len(names)]
            kind = i % 4
            if kind == 0:
                call: Awaitable[Any] = cache.get(name)
            elif kind == 1:
                call = cache.get_many([name, names[(i * 7) % len(names)]])
            elif kind == 2:
                call = cache.set(name, values[name])  # the value it has: any outcome leaves it
            else:
                call = cache.incr("counter")
            delay = rng.uniform(0, 0.06)
            if i % 10 == 9:  # not cancelled
                task = asyncio.ensure_future(call)
            elif i % 3 == 0:
                async def within(call: Awaitable[Any] = call, delay: float = delay) -> Any:
                    async with asyncio.timeout(delay):
                        return await call
                task = asyncio.ensure_future(within())
            else:
                task = asyncio.ensure_future(call)
                loop.call_later(delay, task.cancel)
            tasks.append(task)
            if i % 10 == 0:
                await asyncio.sleep(0)
        done = await asyncio.gather(*tasks, return_exceptions=True)
    unexpected = [r for r in done if isinstance(r, BaseException)
                  and not isinstance(r, asyncio.CancelledError | TimeoutError)]
    assert not unexpected
    cancelled = sum(isinstance(r, asyncio.CancelledError | TimeoutError) for r in done)
    assert cancelled > 0
    # what the calls that ran read is each its own
    for i, r in enumerate(done):
        if isinstance(r, BaseException):
            continue
        name = names[i % len(names)]
        if i % 4 == 0:
            assert r == values[name]
        elif i % 4 == 1:
            assert r == {n: values[n] for n in (name, names[(i * 7) % len(names)])}
    # background work the cancelled calls left (batched gets) ends on its own
    from statekit.cache import aio as cache_aio

    await _until(lambda: not cache_aio._batches and not cache_aio._dropping, "background batches")
    print(f"{count} calls, {cancelled} cancelled; loop lag worst {lag.worst * 1000:.1f} ms, "
          f"p99 {lag.percentile(0.99) * 1000:.1f} ms over {lag.beats} beats")
    return lag


def test_two_hundred_calls_cancelled_at_random_points_leave_a_sound_pool(redis_url: str) -> None:
    """200 cache calls on a pool of 8, each cancelled at a random point: afterwards
    every connection the pool lent is kept by the transport (none leaked), at most
    its limit, every turn of its gate given back, none with an unread reply on it
    (each checked with a non-blocking read), the server soon sees no more of its
    clients than that, the counter moved once per INCRBY it ran, and 300 calls after
    read their own replies. The loop was never blocked: its heartbeat was never late by
    anything like a socket timeout (30 s)."""
    values = {f"key-{i}": f"value-{i}" for i in range(16)}

    async def main() -> None:
        cache = AsyncCache(f"{redis_url}?max_connections=8&socket_timeout=30&client_name=r15-random")
        admin = create_client(redis_url)
        try:
            await cache.set_many(values)
            t = await _transport(cache, 4)
            admin.config_resetstat()
            lag = await _cancel_at_random(cache, values)
            assert lag.beats > 0 and lag.worst < 15  # a blocked loop: a socket timeout
            pool = t.client.connection_pool
            assert len(pool._in_use_connections) == len(t._idle) <= t.limit
            # every turn given back: the gate whole, no caller waiting, no connect under way
            assert t._gate._value == t.limit and not t._waiters and t._connecting == 0 and not t._watched
            for conn in t._idle:
                assert conn.is_connected and not await conn.can_read()
            # the cache's connections the server sees (a dropped one's close a moment later)
            def seen() -> int:
                return sum(c["name"] == "r15-random" for c in admin.client_list())

            await _until(lambda: 0 < seen() <= t.limit, "the server's clients of the cache at its limit")
            calls = redis_command_calls(admin)
            assert await cache.get("counter") == calls.get("incrby", 0)
            await _all_replies_own(cache, values)
        finally:
            await cache.aclose()
            admin.close()

    asyncio.run(main())


def test_two_hundred_calls_cancelled_at_random_points_on_a_cluster(redis_cluster_url: str) -> None:
    """The same 200 cancellations through a Cluster client (redis-py's own
    connections per node): afterwards no connection is lent out, each node's are at
    most the transport's limit, none has an unread reply, the counter moved once per
    INCRBY the nodes ran, and the calls after read their own replies."""
    values = {f"key-{i}": f"value-{i}" for i in range(16)}

    async def main() -> None:
        cache = AsyncCache(f"{redis_cluster_url}&socket_timeout=30" if "?" in redis_cluster_url
                           else f"{redis_cluster_url}?socket_timeout=30")
        try:
            await cache.set_many(values)
            t = await _transport(cache, 0)
            admins = [create_client(f"redis://{n.host}:{n.port}") for n in t.client.get_nodes()]
            for admin in admins:
                admin.config_resetstat()
            lag = await _cancel_at_random(cache, values)
            assert lag.beats > 0 and lag.worst < 15
            from statekit.cache.aio import _gate

            assert t._gate._value == _gate(t)._value == t.limit  # every turn given back
            for node in t.client.get_nodes():
                assert len(node._free) == len(node._connections) <= t.limit  # none lent out
                for conn in node._connections:
                    if conn.is_connected:
                        assert not await conn.can_read()
            incrby = sum(redis_command_calls(admin).get("incrby", 0) for admin in admins)
            assert await cache.get("counter") == incrby
            await _all_replies_own(cache, values)
            for admin in admins:
                admin.close()
        finally:
            await cache.aclose()

    asyncio.run(main())


# -- sessions and broadcast ---------------------------------------------------------------

KEYS = ["review15-aio-cancel-key"]


@pytest.mark.parametrize("near_cache", [None, 100], ids=["pooled", "key-lanes"])
def test_session_load_and_save_cancelled_awaiting_their_replies(server: RedisServer,
                                                                near_cache: int | None) -> None:
    """An async session load and a save sent on a stopped Redis, then cancelled:
    after the server resumes, the next loads on the pool (a near cache's key lanes
    too: one connection per lane) read their own session, never the other user's;
    the cancelled save's script ran at most once (never sent again)."""
    from statekit.sessions import AsyncSessionStore

    async def main() -> None:
        url = f"{server.url}?socket_timeout=30"
        writer = AsyncSessionStore(url, secret_keys=KEYS, key_prefix="r15")
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix="r15", near_cache=near_cache)
        async with _closed_after(server.client(), store, writer) as admin:
            alice = await writer.create({"user": "alice"})
            bob = await writer.create({"user": "bob"})
            t = await store.engine._transport()
            assert (t._lanes is not None) == (near_cache is not None)
            # each session's connection open (its key lane's, or pooled ones)
            await asyncio.gather(*[t.command(b"EXISTS", s.key) for s in (alice, bob, alice, bob)])
            await asyncio.gather(*[t.command(b"PING") for _ in range(4)])
            admin.config_resetstat()
            mine = await writer.load(alice.sid)
            assert mine is not None
            mine["visits"] = 1
            server.pause()
            try:
                awaited = len(t._watched)
                load = asyncio.ensure_future(store.load(alice.sid))
                await _until(lambda: len(t._watched) > awaited, "the load sent")
                wt = await writer.engine._transport()
                awaited_w = len(wt._watched)
                save = asyncio.ensure_future(writer.save(mine))
                await _until(lambda: len(wt._watched) > awaited_w, "the save sent")
                await _cancelled(load)
                await _cancelled(save)
            finally:
                server.resume()
            for _ in range(3):
                loaded = await asyncio.gather(store.load(bob.sid), store.load(alice.sid))
                assert [s["user"] if s is not None else None for s in loaded] == ["bob", "alice"]
            assert redis_command_calls(admin).get("evalsha", 0) <= 1

    asyncio.run(main())


def test_broadcast_read_cancelled_awaiting_its_reply(server: RedisServer) -> None:
    """A broadcast read (one pipeline on the client) sent on a stopped Redis, then
    cancelled: the next reads on the pool read their own values."""
    from statekit.broadcast.aio import AsyncRedisBackend

    async def main() -> None:
        client = create_async_client(f"{server.url}?socket_timeout=30")
        backend = AsyncRedisBackend(client, prefix="r15b")
        try:
            for name in ("a", "b"):
                await backend.publish(name, f"payload of {name}".encode(), token=None, now_ms=1)
            pool = client.connection_pool
            # connections ready in the pool (a read on a stopped server needs no handshake)
            await asyncio.gather(*[client.ping() for _ in range(4)])
            lent = len(pool._in_use_connections)
            server.pause()
            try:
                read = asyncio.ensure_future(backend.read(["a"]))
                await _until(lambda: len(pool._in_use_connections) > lent and _awaits(read, "read_response"),
                             "the read sent")
                await _cancelled(read)
            finally:
                server.resume()
            for _ in range(3):
                b, a = await asyncio.gather(backend.read(["b"]), backend.read(["a"]))
                assert (b["b"].payload, a["a"].payload) == (b"payload of b", b"payload of a")
        finally:
            await backend.aclose()
            await client.aclose()

    asyncio.run(main())


def test_cluster_session_load_save_and_broadcast_read_cancelled_awaiting_their_replies(
        own_redis_cluster: RedisClusterServers) -> None:
    """On a Cluster, every primary stopped: a session load, a session save and a
    broadcast read (a pipeline per node) sent, then cancelled. After the primaries
    resume, the loads and reads that follow on the same node connections read their
    own session and value, and the cancelled save's script ran at most once."""
    from statekit.broadcast.aio import AsyncRedisBackend
    from statekit.sessions import AsyncSessionStore

    cluster = own_redis_cluster

    async def main() -> None:
        url = f"{cluster.url}?socket_timeout=30"
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix="r15")
        client = create_async_client(url)
        backend = AsyncRedisBackend(client, prefix="r15b")
        admins = [node.client() for node in cluster.nodes]
        try:
            sessions = [await store.create({"user": f"user {i}"}) for i in range(12)]
            names = [f"value-{i}" for i in range(12)]
            for name in names:
                await backend.publish(name, f"payload of {name}".encode(), token=None, now_ms=1)

            async def check() -> None:  # (concurrent: several connections to each node)
                loaded = await asyncio.gather(*[store.load(s.sid) for s in sessions])
                assert [s["user"] if s is not None else None for s in loaded] == \
                    [f"user {i}" for i in range(12)]
                read = await asyncio.gather(*[backend.read([name]) for name in names])
                assert [r[name].payload for r, name in zip(read, names, strict=True)] == \
                    [f"payload of {name}".encode() for name in names]

            await check()
            mine = await store.load(sessions[0].sid)
            assert mine is not None
            mine["visits"] = 1
            for admin in admins:
                admin.config_resetstat()
            await _cancelled_while_stopped(cluster.nodes, lambda: [
                store.load(sessions[1].sid), store.save(mine), backend.read(names[:6])])
            for _ in range(3):
                await check()
            assert sum(redis_command_calls(admin).get("evalsha", 0) for admin in admins) <= 1
        finally:
            await store.aclose()
            await backend.aclose()
            await client.aclose()
            for admin in admins:
                admin.close()

    asyncio.run(main())


# -- a cancellation at every step of a call --------------------------------------------------

_CANCELLED = object()


async def _cancel_after(call: Awaitable[Any], passes: int) -> Any:
    """Run *call*, cancelled after *passes* passes of the loop (``_CANCELLED``), or
    its result if it ended before."""
    task = asyncio.ensure_future(call)
    for _ in range(passes):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return _CANCELLED


def test_calls_cancelled_at_every_pass_of_the_loop_on_fresh_and_kept_connections(redis_url: str) -> None:
    """Each of get, get_many, set, incr, a session load and a session save (on a near
    cache's key lanes: each new connection sets up CLIENT TRACKING) cancelled after
    0, 1, 2, ... passes of the loop until it completes, every other round with its
    connections dropped first (the cancellation then lands in the connect and the
    handshake too). After each, a get and a load read their own values, and at the
    end the pool has lent out only what the transports keep and the counter moved
    once per INCRBY the server ran."""
    from statekit.sessions import AsyncSessionStore

    async def main() -> None:
        cache = AsyncCache(f"{redis_url}?socket_timeout=30")
        store = AsyncSessionStore(f"{redis_url}?socket_timeout=30", secret_keys=KEYS, key_prefix="r15s",
                                  near_cache=100)
        async with _closed_after(create_client(redis_url), cache, store) as admin:
            await cache.set_many({"mine": "my value", "a": "a value", "b": "b value"})
            alice = await store.create({"user": "alice"})
            bob = await store.create({"user": "bob"})
            t = await _transport(cache, 2)
            st = await store.engine._transport()
            admin.config_resetstat()
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "get": lambda: cache.get("a"),
                "get_many": lambda: cache.get_many(["a", "b"]),
                "set": lambda: cache.set("a", "a value"),
                "incr": lambda: cache.incr("n"),
                "load": lambda: store.load(alice.sid),
                "save": lambda: store.save(alice, force=True),
            }
            rounds = cancelled = 0
            for name, call in calls.items():
                for passes in range(400):
                    if passes % 2:
                        for conn in list(t._idle):
                            await conn.disconnect()
                        for lane in st._lanes or ():
                            if lane.conn is not None:
                                await lane.conn.disconnect()
                    rounds += 1
                    result = await _cancel_after(call(), passes)
                    if result is _CANCELLED:
                        cancelled += 1
                    assert await cache.get("mine") == "my value", (name, passes)
                    loaded = await store.load(bob.sid)
                    assert loaded is not None and loaded["user"] == "bob", (name, passes)
                    if result is not _CANCELLED:
                        break
                else:
                    raise AssertionError(f"{name} never completed in 400 passes")
            pool = t.client.connection_pool
            assert st.client is t.client  # the URL's shared client: one pool for both
            kept = len(t._idle) + sum(lane.conn is not None for lane in st._lanes or ())
            assert len(pool._in_use_connections) == kept and t._gate._value == t.limit
            assert st._gate._value == st.limit
            assert await cache.get("n") == redis_command_calls(admin).get("incrby", 0)
            print(f"{rounds} rounds, {cancelled} cancelled")

    asyncio.run(main())


def test_cluster_calls_cancelled_at_every_pass_of_the_loop(redis_cluster_url: str) -> None:
    """The cache calls of the test above through a Cluster client, every other round
    with the nodes' connections dropped first: after each, a get reads its own value;
    at the end no node connection is lent out and none has an unread reply."""

    async def main() -> None:
        cache = AsyncCache(redis_cluster_url)
        try:
            await cache.set_many({"mine": "my value", "a": "a value", "b": "b value"})
            t = await _transport(cache, 0)
            nodes = t.client.get_nodes()
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "get": lambda: cache.get("a"),
                "get_many": lambda: cache.get_many(["a", "b", "mine"]),
                "set": lambda: cache.set("a", "a value"),
                "incr": lambda: cache.incr("n"),
            }
            rounds = cancelled = 0
            for name, call in calls.items():
                for passes in range(400):
                    if passes % 2:
                        for node in nodes:
                            for conn in list(node._free):
                                await conn.disconnect()
                    rounds += 1
                    result = await _cancel_after(call(), passes)
                    cancelled += result is _CANCELLED
                    assert await cache.get("mine") == "my value", (name, passes)
                    assert await cache.get_many(["b", "mine"]) == {"b": "b value", "mine": "my value"}
                    if result is not _CANCELLED:
                        break
                else:
                    raise AssertionError(f"{name} never completed in 400 passes")
            for node in nodes:
                assert len(node._free) == len(node._connections)
                for conn in node._connections:
                    if conn.is_connected:
                        assert not await conn.can_read()
            print(f"{rounds} rounds, {cancelled} cancelled")
        finally:
            await cache.aclose()

    asyncio.run(main())


# -- a write cancelled half-written, through redis-py's own connections ----------------------


def test_cluster_set_cancelled_while_its_large_command_is_written_is_never_applied(
        own_redis_cluster: RedisClusterServers) -> None:
    """The large set cancelled mid-write through a Cluster client (redis-py's node
    connections), every primary stopped: once they resume and the cancelled call's
    connection is gone, the value is the old one and later calls read their own.
    redis-py closes a connection whose write failed or was cancelled: the stream
    wrote the rest of the command later and the server ran it (failed before)."""
    big = os.urandom(beyond_loopback_buffers())
    cluster = own_redis_cluster

    async def main() -> None:
        cache = AsyncCache(f"{cluster.url}?socket_timeout=30")
        try:
            spread = {f"spread-{i}": f"value {i}" for i in range(30)}
            await cache.set_many({"blob": b"old", "other": "other value", **spread})
            # connections to every node open (on a stopped node a handshake never ends)
            await _all_replies_own(cache, spread, rounds=3)
            nodes = (await _transport(cache, 0)).client.get_nodes()
            await _cancelled_mid_write(lambda: cache.set("blob", big),
                                       lambda: [c for node in nodes for c in node._connections],
                                       cluster.nodes)
            assert await asyncio.gather(cache.get("other"), cache.get("blob")) == ["other value", b"old"]
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_client_pipeline_cancelled_while_its_large_write_is_written_is_never_applied(
        server: RedisServer) -> None:
    """A pipeline run on a client from create_async_client (as the broadcast reads,
    the session index updates and callers' own pipelines are), cancelled while the
    socket still holds part of its large SET (the server stopped): the rest is
    dropped with the connection, not written after the caller was cancelled (failed
    before, as on a Cluster)."""
    big = os.urandom(beyond_loopback_buffers())

    async def main() -> None:
        client = create_async_client(f"{server.url}?socket_timeout=30")
        try:
            await client.set("blob", b"old")
            await asyncio.gather(*[client.ping() for _ in range(4)])
            pool = client.connection_pool

            async def piped() -> Any:
                async with client.pipeline(transaction=False) as pipe:
                    return await pipe.set("blob", big).get("blob").execute()

            await _cancelled_mid_write(piped,
                                       lambda: [*pool._available_connections, *pool._in_use_connections],
                                       [server])
            assert await client.get("blob") == b"old"
        finally:
            await client.aclose()

    asyncio.run(main())


# -- a cancellation is never lost ------------------------------------------------------------


async def _lost_cancellations(call: Callable[[], Awaitable[Any]], before: Callable[[], Awaitable[None]],
                              passes: int = 12, rounds: int = 12) -> list[str]:
    """Start *call()* (after *before()*) and cancel it after 0, 1, 2, ... passes of
    the loop, *rounds* times each: the calls whose ``cancel()`` took (the task was
    not done) yet which returned a value, each named by the coroutines it was
    suspended in when cancelled."""
    lost = []
    for n in range(passes):
        for _ in range(rounds):
            await before()
            task = asyncio.ensure_future(call())
            for _ in range(n):
                if task.done():
                    break
                await asyncio.sleep(0)
            if task.done():
                continue
            where = " > ".join(_chain(task))
            assert task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                continue
            lost.append(where)
    return lost


def test_cluster_calls_cancelled_as_their_command_is_written_are_cancelled(redis_cluster_url: str) -> None:
    """A Cluster cache get cancelled at any pass of the loop raises CancelledError:
    the cancellation is never lost. redis-py writes each command under
    ``asyncio.wait_for`` (its socket timeout), which on Python 3.11 returns the
    write's result to a task cancelled as the write ends: the call then read its
    reply and returned a value, as if never cancelled (an ``asyncio.timeout`` around
    it did not fire; a request cancelled by its server or a TaskGroup went on).
    Before: most of the cancellations landing at the write were lost."""

    async def main() -> None:
        cache = AsyncCache(redis_cluster_url)
        try:
            await cache.set("k", "v")

            async def nothing() -> None:
                pass

            lost = await _lost_cancellations(lambda: cache.get("k"), nothing)
            assert not lost, f"{len(lost)} cancellations lost, in {sorted(set(lost))}"
            assert await cache.get("k") == "v"
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_calls_cancelled_in_a_new_connections_handshake_are_cancelled(redis_url: str) -> None:
    """A cache get on a standalone Redis whose connections were all dropped, cancelled
    at any pass of the loop: also in the new connection's handshake (HELLO, CLIENT
    SETINFO, each written by redis-py under ``asyncio.wait_for``), the cancellation
    is never lost."""

    async def main() -> None:
        cache = AsyncCache(redis_url)
        try:
            await cache.set("k", "v")
            t = await _transport(cache, 1)

            async def drop() -> None:
                for conn in list(t._idle):
                    await conn.disconnect()

            lost = await _lost_cancellations(lambda: cache.get("k"), drop, passes=30)
            assert not lost, f"{len(lost)} cancellations lost, in {sorted(set(lost))}"
            assert await cache.get("k") == "v"
        finally:
            await cache.aclose()

    asyncio.run(main())
