"""Review (issue 18) of the asyncio transport's reply read: a reply is read from the
connection's parser (:func:`statekit.redis.aio._read_reply`), not through redis-py's
``Connection.read_response`` wrapper, and gives what that wrapper gives, on a real
server: values, error replies as redis-py's exception types, RESP2 and RESP3 (a push
interleaved with a reply), hiredis and redis-py's Python parser, a connection the
server closes while a reply is awaited (``ConnectionError``; through the transport, a
write never resent), the transport's timeout. Each case runs on both reads (the
parser's, and ``read_response`` forced), and a redis-py upgrade that changes the
wrapper fails the pin below: review :func:`_read_reply` then."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser
from redis.asyncio.connection import AbstractConnection

from statekit.errors import BackendUnavailable
from statekit.redis import aio
from statekit.redis.aio import AsyncTransport, create_async_client

pytestmark = pytest.mark.redis

PARSERS = {"hiredis": _AsyncHiredisParser, "python2": _AsyncRESP2Parser, "python3": _AsyncRESP3Parser}


def test_the_wrapper_checked_is_redis_pys() -> None:
    """Fails when a redis-py upgrade changes ``read_response`` (then its connections are
    read through it, slower: review _read_reply against the new wrapper and update
    _READ_RESPONSE_NAMES) or moves what _read_reply uses."""
    names = frozenset(AbstractConnection.read_response.__code__.co_names)
    changed = sorted(names ^ aio._READ_RESPONSE_NAMES)
    assert not changed, f"redis-py's read_response changed: {changed}"
    for name in ("add_debug_log_for_connection_failure", "ConnectionError", "ResponseError"):
        assert hasattr(aio._connection, name), name
    conn = aioredis.Connection()
    assert callable(conn._parser.read_response) and conn.health_check_interval == 0
    for parser in PARSERS.values():
        assert "disable_decoding" in parser.read_response.__code__.co_varnames


def test_which_connections_are_read_from_their_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
    from redis.asyncio.sentinel import SentinelManagedConnection

    def made(cls: type) -> Any:
        return cls.__new__(cls)  # (only its methods are asked)

    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        assert aio._reads_parser(made(cls)) and aio._reads_parser(made(aio._cancel_safe(cls))), cls
    # their own read_response: a Sentinel connection's reconnects on READONLY, fakeredis's
    assert not aio._reads_parser(made(aio._cancel_safe(SentinelManagedConnection)))
    memory = aio.memory_async_client("rr18-reads")  # memory://: fakeredis's connection
    assert not aio._reads_parser(made(memory.connection_pool.connection_class))
    # wrapped on a connection, or on the class (instrumentation, the tests holding replies)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not called")

    conn = made(aio._cancel_safe(Connection))
    monkeypatch.setattr(conn, "read_response", wrapped)
    assert not aio._reads_parser(conn)
    monkeypatch.setattr(Connection, "read_response", wrapped)
    assert not aio._reads_parser(made(aio._cancel_safe(Connection)))


@pytest.fixture(params=["parser", "read_response"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both reads: the parser's, and redis-py's read_response (forced)."""
    if request.param == "read_response":
        monkeypatch.setattr(aio, "_reads_parser", lambda conn: False)
    return str(request.param)


def _plain(value: Any) -> Any:
    """*value* comparable: an error inside a reply (an array's) as its type and text."""
    if isinstance(value, Exception):
        return (type(value), str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _outcome(aw: Any) -> Any:
    async def run() -> Any:
        try:
            return ("ok", _plain(await aw))
        except Exception as e:
            return ("error", type(e), str(e))
    return run()


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_replies_read_as_read_response_reads_them(redis_url: str, parser: str) -> None:
    """The same commands on two connections, one read by _read_reply, one by
    read_response: the same values and the same errors (types and messages)."""
    protocol = 2 if parser == "python2" else 3
    big = b"x" * (3 * 1024 * 1024 + 7)  # more than one socket read

    def commands(side: str) -> list[tuple[Any, ...]]:  # (each connection its own keys)
        k = f"rr18:{parser}:{side}:"
        return [
            ("DEL", k + "s", k + "h"), ("SET", k + "s", "text"), ("GET", k + "s"), ("GET", k + "missing"),
            ("SET", k + "big", big), ("GET", k + "big"), ("HSET", k + "h", "a", "1", "b", "2"),
            ("HGETALL", k + "h"), ("INCR", k + "s"), ("EVALSHA", "0" * 40, 0), ("LPUSH", k + "s", "x"),
            ("NOSUCHCOMMAND",), ("EVAL", "return {1, 'two', {3}, redis.error_reply('MYERR custom')}", 0),
            ("EVAL", "return redis.error_reply('MYERR custom')", 0), ("PING",), ("EXISTS", k + "s", k + "h")]

    async def body() -> tuple[list[Any], list[Any]]:
        async def connect() -> Any:
            pool = aioredis.ConnectionPool.from_url(redis_url, protocol=protocol,
                                                    parser_class=PARSERS[parser])
            conn = pool.make_connection()
            await conn.connect()
            assert isinstance(conn._parser, PARSERS[parser])
            return conn

        ours, theirs = await connect(), await connect()
        try:
            assert aio._reads_parser(ours)
            got, want = [], []
            for args, same in zip(commands("ours"), commands("theirs"), strict=True):
                await ours.send_command(*args)
                got.append(await _outcome(aio._read_reply(ours)))
                await theirs.send_command(*same)
                want.append(await _outcome(theirs.read_response(timeout=math.inf)))
            return got, want
        finally:
            await ours.disconnect()
            await theirs.disconnect()

    got, want = asyncio.run(body())
    assert got == want
    kinds = [w[1] for w in want if w[0] == "error"]
    assert redis.exceptions.NoScriptError in kinds and redis.ResponseError in kinds, kinds
    assert ("ok", big) in want


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_a_socket_error_reads_as_read_response_raises_it(redis_url: str, parser: str) -> None:
    """A reset while a reply is awaited (the stream's error, as asyncio's transport sets
    it on ECONNRESET): redis-py's ConnectionError with its message, on both reads."""
    async def body() -> list[Any]:
        pool = aioredis.ConnectionPool.from_url(redis_url, protocol=2 if parser == "python2" else 3,
                                                parser_class=PARSERS[parser])
        out = []
        for read in (aio._read_reply, lambda conn: conn.read_response(timeout=math.inf)):
            conn = pool.make_connection()
            await conn.connect()
            try:
                await conn.send_command("BLPOP", f"rr18:reset:{parser}", 1)
                conn._reader.set_exception(ConnectionResetError(104, "Connection reset by peer"))
                out.append(await _outcome(read(conn)))
            finally:
                await conn.disconnect()
        return out

    ours, theirs = asyncio.run(body())
    assert ours == theirs
    assert ours[1] is redis.ConnectionError and "Connection reset by peer" in ours[2], ours


@pytest.mark.parametrize("parser", ["hiredis", "python3"])
def test_a_push_before_a_reply_reaches_its_handler(redis_url: str, parser: str) -> None:
    """RESP3: an invalidation pushed on a tracking connection before a command's reply
    goes to the connection's push handler; the read returns the command's reply."""
    async def body() -> tuple[list[Any], Any]:
        pool = aioredis.ConnectionPool.from_url(redis_url, protocol=3, parser_class=PARSERS[parser])
        conn = pool.make_connection()
        await conn.connect()
        pushed: list[Any] = []

        def handler(message: Any) -> None:
            pushed.append(message)

        conn._parser.set_invalidation_push_handler(handler)
        other = aioredis.Redis.from_url(redis_url)
        try:
            await conn.send_command("CLIENT", "TRACKING", "on")
            assert await aio._read_reply(conn) in (b"OK", "OK")
            await conn.send_command("GET", "rr18:tracked")
            await aio._read_reply(conn)
            await other.set("rr18:tracked", "changed")  # the server pushes the invalidation now
            await conn.send_command("ECHO", "after")
            return pushed, await aio._read_reply(conn)
        finally:
            await other.aclose()
            await conn.disconnect()

    pushed, reply = asyncio.run(body())
    assert reply == b"after"
    assert len(pushed) == 1 and b"rr18:tracked" in pushed[0][1], pushed


def _client(url: str, parser: str, **kwargs: Any) -> Any:
    """statekit's asyncio client for *url*, its connections on *parser* (RESP2 for
    redis-py's RESP2 parser, else RESP3)."""
    client = create_async_client(url, protocol=2 if parser == "python2" else 3, **kwargs)
    client.connection_pool.connection_kwargs["parser_class"] = PARSERS[parser]
    return client


async def _blocked(url: str, transport: AsyncTransport, admin: Any, key: str) -> Any:
    """Run ``BLPOP key 0`` (a write: it pops) through *transport* and wait until the
    server has it blocked; returns its task."""
    task = asyncio.ensure_future(transport.command("BLPOP", key, 0))
    for _ in range(1000):  # 10 s at most
        if int((await admin.info("clients"))["blocked_clients"]):
            return task
        await asyncio.sleep(0.01)
    task.cancel()
    raise AssertionError("BLPOP never blocked")


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_a_connection_closed_by_the_server_is_not_resent(redis_url: str, parser: str, read_path: str) -> None:
    """The server closes the connection while the transport waits for a write's reply:
    BackendUnavailable, outcome unknown, sent once; the connection is discarded and the
    next command runs on a sound one."""
    key = f"rr18:closed:{parser}:{read_path}"

    async def body() -> tuple[Any, int, Any]:
        client = _client(redis_url, parser)
        admin = aioredis.Redis.from_url(redis_url)
        transport = AsyncTransport(client, what="test")
        try:
            await admin.config_resetstat()
            task = await _blocked(redis_url, transport, admin, key)
            await admin.client_kill_filter(_type="normal", skipme=True)
            with pytest.raises(BackendUnavailable) as info:
                await asyncio.wait_for(task, 30)
            calls = int((await admin.info("commandstats")).get("cmdstat_blpop", {}).get("calls", 0))
            return info.value, calls, await transport.command("ECHO", "next")
        finally:
            await transport.aclose()
            await client.aclose()
            await admin.aclose()

    error, calls, after = asyncio.run(body())
    assert "outcome is unknown" in str(error) and "Connection closed by server" in str(error), error
    assert isinstance(error.__cause__, redis.ConnectionError)
    assert calls == 1
    assert after == b"next"


@pytest.mark.parametrize("parser", ["hiredis", "python2"])
def test_the_transports_timeout(redis_url: str, parser: str, read_path: str) -> None:
    """A reply overdue past the socket timeout: redis-py's TimeoutError under
    BackendUnavailable (_bark closed the connection), sent once, the next command's
    reply its own."""
    key = f"rr18:timeout:{parser}:{read_path}"

    async def body() -> tuple[Any, int, Any]:
        client = _client(redis_url, parser, socket_timeout=0.5)
        admin = aioredis.Redis.from_url(redis_url)
        transport = AsyncTransport(client, what="test")
        try:
            await admin.config_resetstat()
            task = asyncio.ensure_future(transport.command("BLPOP", key, 0))
            with pytest.raises(BackendUnavailable) as info:
                await asyncio.wait_for(task, 30)
            calls = int((await admin.info("commandstats")).get("cmdstat_blpop", {}).get("calls", 0))
            await admin.lpush(key, "late")  # no one waits for it now: stays in the list
            return info.value, calls, (await transport.command("ECHO", "next"), await admin.llen(key))
        finally:
            await transport.aclose()
            await client.aclose()
            await admin.aclose()

    error, calls, after = asyncio.run(body())
    assert isinstance(error.__cause__, redis.TimeoutError) and "Timeout reading" in str(error), error
    assert calls == 1
    assert after == (b"next", 1)


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_the_cache_on_each_parser(redis_url: str, parser: str, read_path: str) -> None:
    """AsyncCache on a client of each parser and protocol: values, a missing key, an
    error reply mapped as the cache maps it."""
    from statekit.cache import AsyncCache


    async def body() -> list[Any]:
        client = _client(redis_url, parser)
        cache = AsyncCache(client=client, namespace=f"rr18:{parser}:{read_path}")
        try:
            await cache.set("k", {"v": [1, 2]})
            await cache.set("n", 5)
            out = [await cache.get("k"), await cache.get("nope", "default"), await cache.incr("n")]
            await cache.set("s", "text")
            with pytest.raises(ValueError):
                await cache.incr("s")
            transport = cache._backend.transport.current()  # type: ignore[union-attr]
            conn = transport._idle[-1]
            out.append((type(conn._parser) is PARSERS[parser], aio._reads_parser(conn)))
            return out
        finally:
            await cache.aclose()
            await client.aclose()

    got = asyncio.run(body())
    assert got[:3] == [{"v": [1, 2]}, "default", 6]
    assert got[3] == (True, read_path == "parser")
