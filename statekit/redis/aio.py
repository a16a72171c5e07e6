"""The asyncio side of the one Redis layer: clients from URLs and a transport on
redis-py's asyncio client (``redis.asyncio``).

Everything the sync layer (:mod:`statekit.redis`, :mod:`statekit.redis.transport`)
promises holds here, with the same URL grammar, the same Lua scripts
(:mod:`statekit.redis.scripts`), the same error map and the same retry rule; only the
awaits differ. Async façades (``AsyncCache``, ``AsyncSessionStore``, ...) send every
command through an :class:`AsyncTransport`, so a value written by a sync process is
read by an async one and back: one set of keys, scripts and codecs.

**Connections.** A standalone or Sentinel client's commands run on connections taken
from the client's pool and kept by the transport between calls (no pool lock and no
readiness probe per command: a connection idle for more than
:data:`~statekit.redis.transport.STALE_CHECK_AFTER` is checked before a command is
sent on it, its stream and one ``poll`` of its socket, which knows of a server's close
before the loop has read it: a command for a killed server is then never sent; an
idempotent read skips the check, sent once more on a checked connection if it was
closed). The
connections kept between calls are counted per pool, for every transport of the
process on it (a shared client's stores), and take at most
:func:`~statekit.redis.transport.kept_share` of it (one at least left for the
client's own pipelines and pub/sub: none of a pool of 1); a command past it borrows
a connection for itself, given back after its reply (a tracking transport's:
untracked). A URL's ``max_connections`` gives its clients redis-py's asyncio
``BlockingConnectionPool`` (standalone, TLS, unix, Sentinel's master pool, as the
sync clients), a Cluster client a turn per command or pipeline (:class:`_ClusterGate`:
redis-py's asyncio node pools do not wait): past it a caller (a command, a pipeline)
waits for a connection up to the socket timeout, then ``BackendUnavailable`` unsent
naming ``max_connections``, not retried (:func:`~statekit.redis.transport.pool_busy`;
a plain pool, a caller's own client, fails at once, as redis-py does). At most
*limit* commands are in flight per transport (default: the pool's kept share, one at
least, at most :data:`DEFAULT_LIMIT`); more callers wait their turn instead of
opening more connections, so 200 concurrent ``await cache.get()`` on one loop use a
bounded number of sockets. New connections are opened at most
:data:`CONNECTS_AT_ONCE` at a time (redis-py's handshake is CPU on the loop: a burst
of connects at once stalled it for 10-20 ms); a caller past that bound gets the next
connection another caller gives back. A Cluster client sends through redis-py's
asyncio ``RedisCluster`` (slot routing, ``MOVED``/``ASK``), under the same bound
(and, with ``max_connections``, the client's turns). A script a node lacks
(``NOSCRIPT``) is loaded on that node and run there, and loaded on every other
primary in the background, as the sync transport does (never waited for: a paused
primary delays nobody). A reply is awaited at most the
connection's socket timeout, kept by one timer per transport (``_bark``: it closes the
connections whose reply is overdue, and their reads are raised as redis-py's
``TimeoutError``) rather than the ``asyncio.timeout`` redis-py enters per reply (5-7 µs
of the loop's CPU per command), and read from the connection's parser (hiredis, else
redis-py's own) as redis-py's ``read_response`` reads it, without its wrapper
(:func:`_read_reply`; a Sentinel connection, and any whose ``read_response`` is wrapped,
through it).

**A tracking transport** (a session near cache's) sends each command on one of
:data:`~statekit.redis.transport.TRACKED_LANES` connections chosen by the command's
key, one command at a time per connection (an ``asyncio.Lock`` each): every command
on a key runs on the same connection, so ``NOLOOP`` keeps this process's own writes
from invalidating the copies its loads tracked (from a pool, a save on one connection
sent an invalidation for the copy a load had tracked on another: under concurrency
the near cache reloaded the session on every request). A tracked connection that
closes takes what it tracked with it: the listener's near caches are flushed then.
A command waits for its lane at most the socket timeout, then raises
``BackendUnavailable`` unsent (a paused Redis: each request fails within its own
timeouts, not after every command queued on its lane before it).

**Event loops.** redis-py's asyncio connections belong to the loop that opened them.
:func:`get_async_client` keeps one client per URL *and running loop*, so a process
with several loops (a test runner, ``asyncio.run`` per request in a thread) never
shares a connection between them; a transport made for one loop is used on that loop.
A URL's ``AsyncCache``, ``AsyncSessionStore`` and ``AsyncBroadcaster`` each keep a
transport per loop on that loop's shared client (one pool, bounded by the URL's
``max_connections`` for all of them, as the sync stores on :func:`statekit.redis.get_client`);
closing one gives its connections back, the client is closed with its loop.
A forked child (a ``--preload`` master's worker) has none of its parent's loops: what
it inherited is dropped there, the sockets closed in the child only, and its own loops
connect afresh, on a caller's client too (:class:`PerLoop`).

**The retry rule** (module docstring of :mod:`statekit.redis`): a failure before a
command is sent (connecting, the handshake, a pooled socket found closed) is retried
with the URL's ``retries`` and backoff; once a command went out, a timeout or a
dropped connection raises :class:`~statekit.errors.BackendUnavailable` and the
command is never sent again, except an idempotent read after a dropped connection
(once, never after a timeout). A reply saying the node applied nothing (``READONLY``,
``MASTERDOWN``, ``LOADING``) drops the connection (a Sentinel connection asks for the
master again) and is retried like a failure before sending. A task cancelled between
sending a command and reading its reply drops that connection: the late reply is
never read as another caller's. A connection dropped while its socket still holds
part of a command (cancelled or timed out writing a large value) is aborted, not
closed, so the rest is never written after the caller was told: on the transport's
own connections and on every connection of the clients made here (a Cluster
client's commands, pipelines: :class:`_CancelSafe`). A cancellation is never lost,
also where redis-py writes under Python 3.11's ``asyncio.wait_for`` (a Cluster
client's commands, a new connection's handshake). redis-py's own command retry is
turned off on the clients made here (``retries=0`` on their ``Retry``), so
pipelines and pub/sub run by callers directly on the client never resend either.

**The error map**: connection errors, timeouts, wrong-node, not-now and
authentication replies raise ``BackendUnavailable``; other error replies raise what
*reply_error* returns (:class:`~statekit.redis.transport.RedisReplyError` by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .._fork import reset_in_child
from ..config import BackendURL, parse_url
from ..errors import ConfigError
from . import (
    _RETRY_DEFAULTS,
    _blocking,
    _common_kwargs,
    _in_cluster_client,
    _missing_database,
    _no_such_database,
    _problem_of,
    _sent_before,
    _sentinel_waits,
    _timed_out,
    _tls_unanswered,
    acl_user,
    cluster_client_glitch,
    is_read,
    memory_server,
    refused_unapplied,
    reply_problem,
    unavailable,
)
from .scripts import Script
from .transport import (
    _KEPT,
    STALE_CHECK_AFTER,
    TRACKED_LANES,
    MetricsHook,
    RedisReplyError,
    _exhausted,
    _message,
    _name,
    command_key,
    kept_share,
    lane_busy,
    lane_index,
    lane_wait,
    other_primaries,
    packer,
    pool_busy,
)

__all__ = ["CONNECTS_AT_ONCE", "DEFAULT_LIMIT", "AsyncTransport", "PerLoop", "abandon_sockets",
           "create_async_client", "get_async_client", "memory_async_client", "never_sent",
           "transports_per_loop", "within"]

T = TypeVar("T")

Arg = bytes | str | int | float

#: commands in flight per transport unless the pool allows fewer
DEFAULT_LIMIT = 64
#: new connections a transport opens at once: redis-py's handshake (connect, ``HELLO``,
#: a health ``PING``, ``CLIENT SETINFO``) costs the loop about 0.4 ms of CPU per
#: connection, spread over a few loop passes; 63 of them at once made single passes
#: of 10-20 ms. Callers past this bound wait for a connection a caller gives back
#: (handed over directly) or for a connect to finish.
CONNECTS_AT_ONCE = 8

_monotonic = time.monotonic


def _host(conn: Any) -> str:
    """How redis-py names *conn*'s server in its errors."""
    name = getattr(conn, "_host_error", None)
    return str(name()) if callable(name) else "Redis"


#: what ``poll`` reports for a socket whose peer closed it (a FIN: ``POLLRDHUP``, Linux
#: only) or reset it
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR if hasattr(select, "poll") else 0


def _hung_up(writer: Any) -> bool:
    """Whether the server closed *writer*'s socket, as the kernel knows now: the
    stream learns it only once the loop reads the socket, so a command written in
    the same loop pass as the server died (a request served just after) went out
    on a closed socket and was reported sent, outcome unknown. One ``poll`` of the
    socket, not a read (~1 µs; the sync transport's check reads it). Without
    ``POLLRDHUP`` (not Linux) a reset is seen, a FIN only by the stream, as before;
    without ``poll`` (Windows) neither."""
    sock = writer.get_extra_info("socket") if _HUNG_UP and writer is not None else None
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _HUNG_UP)
    return bool(poller.poll(0))


#: the names redis-py's ``AbstractConnection.read_response`` uses, in the version whose
#: read :func:`_read_reply` was checked against (redis-py 8.2): another version's may do
#: more, and its connections are read through it (tests/test_review18_aio_reply_read.py)
_READ_RESPONSE_NAMES = frozenset((
    "math", "inf", "socket_timeout", "_host_error", "async_timeout", "_active_read_timeout",
    "_read_response_from_parser", "asyncio", "TimeoutError", "is_os_level_timeout",
    "add_debug_log_for_connection_failure", "disconnect", "ConnectionError", "args", "OSError",
    "UNRECOVERABLE_PARSE_ERRORS", "BaseException", "health_check_interval", "get_running_loop", "time",
    "next_health_check", "isinstance", "ResponseError"))

try:  # redis-py 8 renamed the non-blocking readiness probe
    from redis import exceptions as _exceptions
    from redis.asyncio import connection as _connection
    from redis.asyncio.connection import AbstractConnection as _Conn

    _HAS_CAN_READ = hasattr(_Conn, "can_read")
    _HAS_MARKS = hasattr(_Conn, "should_reconnect")  # redis-py 6.4+
    #: redis-py's ``read_response`` if it is the one checked, else ``None``
    _CHECKED_READ: Any = _Conn.read_response \
        if frozenset(_Conn.read_response.__code__.co_names) == _READ_RESPONSE_NAMES else None
except ImportError:  # pragma: no cover - redis not installed
    _HAS_CAN_READ = _HAS_MARKS = False
    _CHECKED_READ = None


def _reads_parser(conn: Any) -> bool:
    """Whether :func:`_read_reply` reads *conn*'s replies from its parser: its
    ``read_response`` is redis-py's own (not a Sentinel connection's, which turns
    ``READONLY`` into a reconnect, nor fakeredis's, nor one wrapped on the class or the
    connection by instrumentation or a test) and the one checked
    (:data:`_READ_RESPONSE_NAMES`)."""
    return getattr(getattr(conn, "read_response", None), "__func__", None) is _CHECKED_READ is not None


async def _read_reply(conn: Any) -> Any:
    """The next reply on *conn*, as redis-py's ``conn.read_response(timeout=math.inf)``
    gives it (the timeout is the transport's: :meth:`AsyncTransport._bark`), read from
    the connection's parser (hiredis, or redis-py's RESP2/RESP3 parser) without that
    wrapper's Python (a host string, a coroutine and a protocol check per reply: ~5k
    instructions of an ``AsyncCache.get``'s 160k). The rest of it is kept: an error
    reply raised (redis-py's exception types: the parser's error map), a socket error
    as its ``ConnectionError``, a failure logged as its debug log has it, the next
    health check put off; the connection is not closed here (every failure discards
    it: :meth:`AsyncTransport._once_on`). A connection :func:`_reads_parser` does not
    know is read through ``read_response``."""
    if not _reads_parser(conn):
        return await conn.read_response(timeout=math.inf)
    try:
        reply = await conn._parser.read_response()
    except BaseException as e:
        _connection.add_debug_log_for_connection_failure(conn, e, "reading response")
        if isinstance(e, OSError):  # a reset, an OS-level timeout: as redis-py words it
            raise _exceptions.ConnectionError(f"Error while reading from {_host(conn)} : {e.args}") from e
        raise
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    if isinstance(reply, _exceptions.ResponseError):
        raise reply
    return reply


class _CancelSafe:
    """Mixed into the connection class of every client :func:`create_async_client`
    makes (:func:`_cancel_safe`), for what redis-py writes itself (a Cluster client's
    commands, pipelines, a new connection's handshake):

    * a connection dropped on an error or a cancellation (redis-py's
      ``disconnect(nowait=True)``) while its socket still holds part of a command is
      aborted, as :meth:`AsyncTransport._drain` aborts its own: closed, the stream
      would write the rest after the caller was told the command failed or was
      cancelled, and the server would run it then. A connection with nothing left
      to write is closed as before.
    * a cancellation is never lost: redis-py writes under ``asyncio.wait_for`` (its
      socket timeout), which on Python 3.11 returns the write's result to a task
      cancelled as the write ends; the call went on and read its reply as if never
      cancelled (an ``asyncio.timeout`` around it did not fire). The cancellation is
      raised when the write returns; the command was sent, so the connection is
      dropped with its reply unread.
    * a handshake whose ``SELECT`` names a database the server does not have (the
      URL's ``/N``) raises the :class:`~statekit.errors.ConfigError` of the sync
      connections (:func:`statekit.redis._missing_database`: the database and the
      server's limit), not an error reply the transport would report as a
      ``BackendUnavailable`` (retried, a 503 "try again", the breaker opened)."""

    _writer: Any

    async def disconnect(self, nowait: bool = False, **kwargs: Any) -> None:
        writer = self._writer
        if nowait and writer is not None:
            buffered = getattr(writer.transport, "get_write_buffer_size", None)
            if buffered is not None and buffered():
                writer.transport.abort()
        await super().disconnect(nowait=nowait, **kwargs)  # type: ignore[misc]

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except Exception as e:
            _tls_unanswered(self, e)  # raises it with a hint, if one fits
            raise

    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        from redis.exceptions import ResponseError

        try:
            await super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as e:
            if not _no_such_database(e):
                raise
            raise _missing_database(self, await self._statekit_databases()) from e

    async def _statekit_databases(self) -> Any:
        """The server's ``CONFIG GET databases`` reply on this connection, or ``None``
        when it refuses it (a managed Redis without ``CONFIG``)."""
        from redis.exceptions import RedisError

        try:
            await self.send_command("CONFIG", "GET", "databases", check_health=False)  # type: ignore[attr-defined]
            return await self.read_response()  # type: ignore[attr-defined]
        except RedisError:
            return None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # (Python 3.11+)
        asked = cancelling() if cancelling is not None else 0
        await super().send_packed_command(command, check_health)  # type: ignore[misc]
        if cancelling is not None and cancelling() > asked:  # cancelled, and wait_for returned
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


_cancel_safe_classes: dict[type, type] = {}


def _cancel_safe(connection_class: type) -> type:
    """The subclass of redis-py's asyncio *connection_class* with :class:`_CancelSafe`
    (its name keeps the base's: ``StatekitSSLConnection``)."""
    cls = _cancel_safe_classes.get(connection_class)
    if cls is None:
        cls = _cancel_safe_classes[connection_class] = type(
            f"Statekit{connection_class.__name__}", (_CancelSafe, connection_class), {})
    return cls


def _no_command_retry() -> Any:
    """redis-py asyncio's ``Retry`` that never resends (the transport retries what
    the rule allows itself)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 0)


def create_async_client(url: str | BackendURL, **overrides: Any) -> Any:
    """A new ``redis.asyncio`` client for a ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://`` or ``redis+cluster://`` URL (the grammar and options of
    :func:`statekit.redis.create_client`), or ``memory://name``.

    The URL's ``retries`` and ``retry_backoff_cap`` are kept on the client
    (``statekit_retries``, ``statekit_backoff_cap``) for :class:`AsyncTransport`;
    redis-py's own command retry is off (module docstring).
    """
    parsed = parse_url(url, kinds=("redis", "memory")) if isinstance(url, str) else url
    if parsed.scheme == "memory":
        return memory_async_client(parsed.name)
    if parsed.kind != "redis":
        raise ConfigError(f"{parsed.scheme}:// is not a Redis URL")
    kwargs = _common_kwargs(parsed, overrides)
    retries, cap = kwargs.pop("statekit_retry")
    kwargs["retry"] = _no_command_retry()
    import redis.asyncio as aioredis

    client: Any
    if parsed.scheme == "redis+cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        for name in ("db", "health_check_interval", "sentinel_password"):
            kwargs.pop(name, None)
        bounded = "max_connections" in kwargs
        cluster_class = _gated_cluster_class() if bounded else RedisCluster
        client = cluster_class(startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts], **kwargs)
        if bounded:  # N commands and pipelines in flight, each a connection of a node at most
            client.statekit_gate = _ClusterGate(int(kwargs["max_connections"]), kwargs["socket_timeout"])
        # (RedisCluster takes no connection_class: the nodes it makes later read it
        # from these connection_kwargs; the startup nodes have no connection yet)
        connection_class = client.connection_kwargs["connection_class"] = \
            _cancel_safe(client.connection_kwargs["connection_class"])
        for node in client.startup_nodes:
            node.connection_class = connection_class
        client.nodes_manager.__class__ = _seeds_closed_class(type(client.nodes_manager))
    elif parsed.scheme == "redis+sentinel":
        from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

        from ._sentinel import sentinel_class

        sentinel_kwargs = {"socket_connect_timeout": kwargs["socket_connect_timeout"],
                           "socket_timeout": kwargs["socket_timeout"]}
        sentinel_password = kwargs.pop("sentinel_password", None)
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        ssl = kwargs.pop("ssl", False) in (True, "true", "1", "yes")
        managed = SentinelManagedSSLConnection if ssl else SentinelManagedConnection
        kwargs["connection_class"] = _cancel_safe(managed)
        sentinel = sentinel_class(aio=True)(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
        client = sentinel.master_for(parsed.service, db=parsed.db, redis_class=_sentinel_master_class(),
                                     **_sentinel_waits(kwargs, aio=True))
        client.statekit_sentinels = sentinel.sentinels
    else:
        kwargs.pop("sentinel_password", None)
        bounded = "max_connections" in kwargs
        kwargs.setdefault("max_connections", DEFAULT_LIMIT + 8)  # the transport's, and 8 for pipelines
        if parsed.scheme == "unix":
            client = aioredis.Redis(unix_socket_path=parsed.path, db=parsed.db, **kwargs)
        else:
            host, port = parsed.hosts[0]
            if parsed.scheme == "rediss":
                kwargs["ssl"] = True
            client = aioredis.Redis(host=host, port=port, db=parsed.db, **kwargs)
        pool = client.connection_pool
        pool.connection_class = _cancel_safe(pool.connection_class)
        client = _blocking(client, bounded)
    client.statekit_retries = retries
    client.statekit_backoff_cap = cap
    return client


_seeds_closed: dict[type, type] = {}


def _seeds_closed_class(nodes_manager_class: type) -> type:
    """redis-py's asyncio ``NodesManager`` (*nodes_manager_class*) whose topology
    queries close the connections they opened to the startup nodes once they end.
    redis-py asks a startup node for ``CLUSTER SLOTS`` on a ``ClusterNode`` of its
    own, apart from the node of the same address it then routes commands to, and
    kept that connection open for the client's life, outside the node's
    ``max_connections``: one connection more on each startup node it asked (on a
    pool of 1, two connections to that node; the sync client closes them, and its
    later queries use the node's pool). Closed, it reconnects at the next topology
    query, one connection at a time (queries run under the client's lock)."""
    cls = _seeds_closed.get(nodes_manager_class)
    if cls is None:
        class SeedsClosedNodesManager(nodes_manager_class):  # type: ignore[misc,valid-type]
            __slots__ = ()

            async def initialize(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().initialize(*args, **kwargs)
                finally:
                    cache = self.nodes_cache  # (a startup node that is a routed one stays)
                    seeds = [node for node in list(self.startup_nodes.values())
                             if cache.get(node.name) is not node and node._connections]
                    await asyncio.gather(*(node.disconnect() for node in seeds), return_exceptions=True)

        cls = _seeds_closed[nodes_manager_class] = SeedsClosedNodesManager
    return cls


#: the :class:`_ClusterGate` the running task holds, if any (a pipeline's redirected
#: commands run through the client within the pipeline's turn)
_gate_held: contextvars.ContextVar[Any] = contextvars.ContextVar("statekit_cluster_gate", default=None)


class _ClusterGate:
    """The wait redis-py's asyncio ``RedisCluster`` lacks under ``max_connections``
    (its node pools fail a checkout past it with ``MaxConnectionsError``, "Too many
    connections", instead of waiting): at most *max_connections* commands and
    pipelines of one client in flight, every store's on that client together (a
    URL's shared client of a loop). Each takes one connection of a node at most (a
    command; a multi-node command or a pipeline one per node, all at once), so no
    node is asked for more than *max_connections* at once. A caller past it waits its
    turn, in order, up to *timeout* (the socket timeout, as a standalone URL's
    ``BlockingConnectionPool``; ``None``: as long as it takes), then
    :func:`~statekit.redis.transport.pool_busy`, nothing sent. A call made within a
    turn its task holds (a pipeline's redirected commands) runs in that turn.
    Cancelled while waiting, a caller takes nothing (and gives back a turn handed to
    it as it was cancelled: ``asyncio.Semaphore``)."""

    __slots__ = ("max_connections", "timeout", "_turns")

    def __init__(self, max_connections: int, timeout: float | None) -> None:
        self.max_connections = max_connections
        self.timeout = timeout
        self._turns = asyncio.Semaphore(max_connections)

    async def enter(self) -> Any:
        """Wait for a turn; the token for :meth:`leave` (``None``: the task had one)."""
        if _gate_held.get() is self:
            return None
        turns, timeout = self._turns, self.timeout
        if not timeout or not turns.locked():
            await turns.acquire()  # (free: at once, no timeout scope)
        else:
            try:
                await within(turns.acquire(), timeout)
            except asyncio.TimeoutError:
                raise pool_busy("a Redis Cluster call", self) from None
        return _gate_held.set(self)

    def leave(self, token: Any) -> None:
        """Give back the turn :meth:`enter` took (if it took one). From another task
        (a watching pipeline reset there) the turn is freed; the task that took it
        keeps its mark (its later calls take no turn)."""
        if token is not None:
            try:
                _gate_held.reset(token)
            except ValueError:  # (a token of another context)
                pass
            self._turns.release()

    async def run(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await call(*args, **kwargs)`` in a turn."""
        token = await self.enter()
        try:
            return await call(*args, **kwargs)
        finally:
            self.leave(token)


_gated_cluster: Any = None


def _gated_cluster_class() -> Any:
    """redis-py's asyncio ``RedisCluster`` whose commands and pipelines take a turn of
    the client's :class:`_ClusterGate` (``statekit_gate``): a URL with
    ``max_connections``'s (without it: redis-py's class, untouched)."""
    global _gated_cluster
    if _gated_cluster is None:
        from redis.asyncio.cluster import ClusterPipeline, RedisCluster

        class GatedClusterPipeline(ClusterPipeline):  # type: ignore[misc]
            """A pipeline whose ``execute`` takes a turn; a transaction's ``WATCH``,
            which holds its node's connection until the pipeline's reset, takes one
            kept as long (as the sync client's: :class:`statekit.redis.ClusterGate`),
            which the task's calls meanwhile run in (and a task it starts meanwhile,
            as a pipeline's own tasks do)."""

            __slots__ = ("_statekit_watch",)
            _statekit_watch: tuple[Any] | None  # the token of the turn a WATCH took

            async def execute(self, *args: Any, **kwargs: Any) -> Any:
                gate: _ClusterGate = self.cluster_client.statekit_gate  # type: ignore[attr-defined]
                return await gate.run(super().execute, *args, **kwargs)

            async def watch(self, *names: Any) -> Any:  # type: ignore[override]
                if getattr(self, "_statekit_watch", None) is None:
                    gate: _ClusterGate = self.cluster_client.statekit_gate  # type: ignore[attr-defined]
                    self._statekit_watch = (await gate.enter(),)
                try:
                    return await super().watch(*names)  # type: ignore[no-untyped-call]
                except BaseException:
                    if getattr(self._execution_strategy, "_transaction_connection", None) is None:
                        self._statekit_let_go()  # (failed holding no connection)
                    raise

            async def reset(self) -> None:  # type: ignore[override]
                try:
                    await super().reset()  # type: ignore[no-untyped-call]
                finally:
                    self._statekit_let_go()

            def _statekit_let_go(self) -> None:
                held = getattr(self, "_statekit_watch", None)
                self._statekit_watch = None
                if held is not None:
                    self.cluster_client.statekit_gate.leave(held[0])  # type: ignore[attr-defined]

        class GatedRedisCluster(RedisCluster):  # type: ignore[misc]
            statekit_gate: _ClusterGate

            async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
                return await self.statekit_gate.run(super().execute_command, *args, **kwargs)

            def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
                if shard_hint:  # refused by redis-py
                    return super().pipeline(transaction, shard_hint)
                return GatedClusterPipeline(self, transaction)  # type: ignore[abstract]

            def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
                """redis-py's ``ClusterPubSub``, listening on connections of its own (as its
                node makes them), beside each node's ``max_connections``
                (:mod:`statekit.redis.pubsub`): from the node, one held a connection of
                its ``max_connections`` as long as it listened, outside the turns, and
                the node refused a command past it."""
                from .pubsub import async_cluster_pubsub, pool_like

                return async_cluster_pubsub(self, pool_like, node=node, host=host, port=port, **kwargs)

        _gated_cluster = GatedRedisCluster
    return _gated_cluster


_sentinel_master: Any = None


def _sentinel_master_class() -> Any:
    """``redis.asyncio.Redis`` whose ``aclose()`` also closes the connections its
    Sentinel opened to the sentinels (redis-py leaves them open)."""
    global _sentinel_master
    if _sentinel_master is None:
        import redis.asyncio as aioredis

        class SentinelMaster(aioredis.Redis):  # type: ignore[misc]
            statekit_sentinels: Sequence[Any] = ()

            async def aclose(self, close_connection_pool: bool | None = None) -> None:
                await super().aclose(close_connection_pool)
                for sentinel in self.statekit_sentinels:
                    await sentinel.aclose()

        _sentinel_master = SentinelMaster
    return _sentinel_master


class PerLoop(Generic[T]):
    """One *T* per running event loop (redis-py's asyncio connections belong to the
    loop that opened them), made by *make* on first use on a loop.

    A loop that shuts down the usual way (``asyncio.run``, uvicorn and asgiref call its
    ``shutdown_asyncgens``) closes its *T* with *close* then: a small async generator
    registered with the loop when the *T* is made runs it. A loop closed without that
    (a hand-made loop, ``loop.close()`` alone) cannot run a coroutine any more: its
    *T* is handed to *abandon* (close the sockets directly) the next time any loop
    asks for one, so a process that runs a loop per call (``async_to_sync`` in a WSGI
    worker) does not keep a connection per dead loop.

    A forked child has none of its parent's loops: every *T* it inherited is handed to
    *abandon* with ``forked=True`` there (every socket of its client closed in the
    child only, the parent's copies untouched), so the child's loops make their own
    and never write on a socket the parent reads.
    """

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[None]],
                 abandon: Callable[[T, bool], None] | None = None) -> None:
        self._make = make
        self._close = close
        self._abandon = abandon
        self._start()
        reset_in_child(self)

    def _start(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[T, Any]] = \
            weakref.WeakKeyDictionary()
        # loops of several threads (async_to_sync in a threaded WSGI worker) add,
        # sweep and remove entries at once
        self._lock = threading.Lock()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's loops, their *T* abandoned (see the
        class docstring); a new lock (a parent thread may have held it)."""
        inherited = [lane[0] for lane in self._by_loop.values()]
        self._start()
        if self._abandon is not None:
            for thing in inherited:
                self._abandon(thing, True)

    def current(self) -> T:
        """The running loop's *T* (made now if it has none). Call it on a loop."""
        loop = asyncio.get_running_loop()
        lane = self._by_loop.get(loop)
        if lane is None:
            with self._lock:
                dead = [(old, self._by_loop.pop(old)[0]) for old in list(self._by_loop) if old.is_closed()]
                thing = self._make()
                closer = self._closer(loop, thing)
                lane = self._by_loop[loop] = (thing, closer)
            if self._abandon is not None:
                for _, old_thing in dead:
                    self._abandon(old_thing, False)
            # run to its yield now (no await before it): the loop's asyncgen hook has
            # registered it, so shutdown_asyncgens will run its finally
            step = closer.__anext__()
            with contextlib.suppress(StopIteration):
                step.send(None)
        return lane[0]

    async def _closer(self, loop: asyncio.AbstractEventLoop, thing: T) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._by_loop.get(loop, (None,))[0] is thing:
                    del self._by_loop[loop]
            await self._close(thing)

    async def aclose(self) -> None:
        """Close the running loop's *T*, if it has one (another is made on next use)."""
        lane = self._by_loop.get(asyncio.get_running_loop())
        if lane is not None:
            await lane[1].aclose()

    def items(self) -> list[T]:
        """Every loop's *T* (for stats and tests)."""
        with self._lock:
            return [lane[0] for lane in self._by_loop.values()]


def abandon_sockets(transport: AsyncTransport, *, owned: bool, forked: bool = False) -> None:
    """Close the sockets of *transport* whose loop is closed (asyncio cannot close a
    connection once its loop is closed): each socket closed directly and its
    connection forgotten, without touching the dead loop; with *owned*, every
    connection of its client's pools too (Cluster: each node's).

    With *forked* (in a forked child, for a transport of the parent's loop): every
    connection of its client's pools, owned or not (a caller's client too: redis-py's
    asyncio pool does not check the process, and would lend the child a connection
    on the parent's socket), and those the parent had lent out are given back, so the
    child's own loops reconnect them. ``socket.close()`` closes the child's copy of
    the descriptor only: the parent's connections are untouched."""
    client = transport.client
    conns = list(transport._idle)
    if owned or forked:
        pools = [getattr(client, "connection_pool", None)]
        pools += [node for node in getattr(client, "get_nodes", list)()]
        for pool in pools:
            available = getattr(pool, "_available_connections", None)
            in_use = getattr(pool, "_in_use_connections", None)
            conns += list(available or ()) + list(in_use or ())
            conns += getattr(pool, "_connections", ()) or ()
            if forked and in_use and isinstance(available, list):
                available.extend(in_use)  # no parent task holds them here
                in_use.clear()
    for conn in conns:
        writer = getattr(conn, "_writer", None)
        if writer is None:
            continue
        stream = writer.transport
        sock = getattr(stream, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            # closed here: no "unclosed transport" / "loop is closed" warnings when collected
            stream._sock, stream._closing = None, True
        conn._writer = conn._reader = None


def transports_per_loop(make_client: Callable[[], Any], *, owned: bool,
                        **options: Any) -> PerLoop[AsyncTransport]:
    """An :class:`AsyncTransport` per running loop on ``make_client()`` (*options* are
    the transport's). With *owned*, each loop's client is the transport's own: closed
    with it."""

    def make() -> AsyncTransport:
        return AsyncTransport(make_client(), **options)

    async def close(transport: AsyncTransport) -> None:
        await transport.aclose()
        if owned:
            await transport.client.aclose()

    def abandon(transport: AsyncTransport, forked: bool) -> None:
        abandon_sockets(transport, owned=owned, forked=forked)

    return PerLoop(make, close, abandon)


_shared: dict[Any, PerLoop[AsyncTransport]] = {}
_shared_lock = threading.Lock()


def _new_shared_lock() -> None:
    global _shared_lock
    _shared_lock = threading.Lock()  # a parent thread may have held it at fork time


os.register_at_fork(after_in_child=_new_shared_lock)


def get_async_client(url: str, **overrides: Any) -> Any:
    """This process's shared async client for *url* on the running event loop (one
    pool per URL, options and loop), created on first use, closed with its loop
    (:class:`PerLoop`). Call it on a loop; threads (each on its own loop) asking
    at once for the first time share one :class:`PerLoop`, so each loop keeps
    exactly one client. Surrounding white space is not part of the URL."""
    url = url.strip()
    key = (url, tuple(sorted(overrides.items())))
    lanes = _shared.get(key)
    if lanes is None:
        with _shared_lock:
            lanes = _shared.get(key)
            if lanes is None:
                lanes = _shared[key] = transports_per_loop(lambda: create_async_client(url, **overrides),
                                                           owned=True)
    return lanes.current().client


def memory_async_client(name: str = "") -> Any:
    """An asyncio client of the in-process Redis named *name*: the very server the
    sync :func:`statekit.redis.memory_client` of that name uses, so a sync and an
    async ``memory://`` backend see each other's writes."""
    server = memory_server(name)
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=server)


class AsyncTransport:
    """Commands and scripts for one ``redis.asyncio`` *client* (module docstring).

    :param client: a ``redis.asyncio`` client of any kind (kept as :attr:`client` for
        pipelines and pub/sub).
    :param what: names the caller in error messages (``"cache"``, ``"session"``).
    :param reply_error: makes the exception for an error reply (default
        :class:`~statekit.redis.transport.RedisReplyError`).
    :param tracking: an invalidation listener (:mod:`statekit.redis.tracking`): each
        connection runs ``CLIENT TRACKING on REDIRECT <id> NOLOOP`` after connecting
        while the listener is up. Standalone and Sentinel only.
    :param limit: commands in flight at once (default: the pool's
        ``max_connections``, a Cluster node's, less a quarter of it, at most 8, and
        one at least, left for the client's own pipelines and pub/sub
        (:func:`~statekit.redis.transport.kept_share`; a pool of 1: one, on a
        borrowed connection); at most :data:`DEFAULT_LIMIT`).

    Use it on one event loop (the loop its connections belong to).
    """

    def __init__(self, client: Any, *, what: str = "Redis",
                 reply_error: Callable[[str], Exception] | None = None, tracking: Any = None,
                 limit: int | None = None) -> None:
        import redis

        self.client = client
        self.what = what
        self.tracking = tracking
        self._reply_error = reply_error
        self._where = f"a {what} call"
        from redis.asyncio.cluster import RedisCluster

        self.cluster = isinstance(client, RedisCluster)
        if self.cluster and tracking is not None:
            raise ValueError("a tracking transport needs a standalone or Sentinel client")
        pool: Any = None if self.cluster else getattr(client, "connection_pool", None)
        #: whether commands go through connections the transport keeps
        self.direct = pool is not None
        self._pool = pool
        if limit is None:
            # Cluster: each node's bound (in the client's connection_kwargs), all of
            # them at once possibly on one node
            size = getattr(pool, "max_connections", None) or getattr(client, "max_connections", None) \
                or (getattr(client, "connection_kwargs", None) or {}).get("max_connections") or DEFAULT_LIMIT
            limit = max(1, min(kept_share(size), DEFAULT_LIMIT))  # (a pool of 1: one, borrowed)
        self.limit = limit
        self._gate = asyncio.Semaphore(limit)
        self._idle: deque[Any] = deque()
        #: connects under way (at most CONNECTS_AT_ONCE) and the callers waiting for a
        #: connection: each gets one given back (:meth:`_keep`) or ``None`` (connect now)
        self._connecting = 0
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._pack = packer(pool) if self.direct else None
        from redis.backoff import ExponentialBackoff

        self._retries = int(getattr(client, "statekit_retries", _RETRY_DEFAULTS[0]))
        cap = float(getattr(client, "statekit_backoff_cap", _RETRY_DEFAULTS[1]))
        self._backoff = ExponentialBackoff(cap=cap, base=0.02)
        self._redis = redis
        self._closed = False
        #: the negated listener generation whose CLIENT TRACKING set-up the server refused
        self._refused_tag = 0
        #: a tracking transport's connections, one per key lane (module docstring)
        self._lanes: list[_KeyLane] | None = [_KeyLane() for _ in range(min(TRACKED_LANES, limit))] \
            if tracking is not None and self.direct else None
        #: a tracking transport's tasks whose last command went out on a borrowed
        #: connection (:meth:`tracked`)
        self._borrowed: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        #: how long a command waits for its key lane's connection (``None``: no bound)
        self._lane_wait = lane_wait(pool) if self._lanes is not None else None
        #: connections reading a reply -> when it is overdue (loop time), and the one
        #: timer that closes overdue ones (:meth:`_bark`)
        self._watched: dict[Any, float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        #: memory:// (fakeredis's in-process server): its reads never wait on a socket,
        #: so no read timeout; given one, fakeredis enters ``asyncio.wait_for`` per reply,
        #: which on Python 3.11 can swallow a cancellation that lands as the reply comes
        self._in_process = pool is not None and \
            getattr(pool.connection_class, "__module__", "").startswith("fakeredis")
        #: Cluster: a script's loads on the primaries other than the node that runs it
        #: (by sha), under way in the background (:meth:`_load_elsewhere`)
        self._loading: dict[bytes, asyncio.Future[Any]] = {}

    # -- errors --------------------------------------------------------------------

    def reply_error(self, message: str) -> Exception:
        """The exception for the error reply *message* (replies about the server
        raise ``BackendUnavailable`` before this is asked)."""
        if self._reply_error is not None:
            return self._reply_error(message)
        return RedisReplyError(f"Redis refused a {self.what} command: {message}")

    def _unavailable(self, error: BaseException) -> Exception:
        return unavailable(self._where, str(error), _problem_of(error))

    # -- connections ---------------------------------------------------------------

    async def _checkout(self, read: bool = False) -> Any:
        """A connected connection: an idle one kept from an earlier call (checked if
        idle for a while), one another caller gives back, else a new one from the
        pool (at most :data:`CONNECTS_AT_ONCE` connecting at a time): kept between
        calls while the pool's kept share has room (``_statekit_kept``), else
        borrowed for one command. Nothing is sent here, so its failures may be
        retried, but a pool whose every connection stayed in use past its wait
        raises :func:`~statekit.redis.transport.pool_busy` (the wait was the
        pool's: not again). For a *read* an idle one is not checked (:meth:`_usable`)."""
        idle = self._idle
        handed: Any = None
        while True:
            while handed is not None or idle:
                conn, handed = (handed if handed is not None else idle.pop()), None
                if await self._usable(conn, read):
                    return conn
            if self._connecting < CONNECTS_AT_ONCE:
                break
            handed = await self._turn()
        pool = self._pool
        kept = _KEPT.take(pool)  # kept between calls, or borrowed for this command (the share full)
        self._connecting += 1
        try:
            conn = await pool.get_connection()
        except BaseException as e:
            if kept:
                _KEPT.give(pool)
            if isinstance(e, Exception) and _exhausted(e):  # the pool's wait was the wait: not retried
                raise pool_busy(self._where, pool) from e
            raise
        finally:
            self._connecting -= 1
            self._wake(None)  # a connect slot is free: the next waiter may take it
        conn._statekit_last = _monotonic()
        conn._statekit_tag = 0
        conn._statekit_kept = kept
        if kept:  # (a borrowed one serves untracked: it goes back to the pool after its command)
            try:
                await self._track(conn)
            except BaseException:
                await self._discard(conn)
                raise
        return conn

    def _ready(self, conn: Any) -> bool | None:
        """Whether a kept connection may take a command as it is: ``False`` if not set
        up for the current listener connection (a refused set-up is kept negated), not
        connected, or marked for reconnect by redis-py (a server that announced a
        move); ``None`` once idle for a moment (:meth:`_usable` checks it), else
        ``True``. Nothing awaited: the common case takes no coroutine."""
        if abs(conn._statekit_tag) != self._tag() or not conn.is_connected or \
                (_HAS_MARKS and conn.should_reconnect()):
            return False
        return _monotonic() - conn._statekit_last <= STALE_CHECK_AFTER or None

    async def _usable(self, conn: Any, read: bool = False) -> bool:
        """Whether a kept connection may take a command (:meth:`_ready`), one idle for a
        moment also not closed by the server meanwhile, unless the command is a *read*
        (an idempotent one: on a closed connection it fails as dropped and is sent once
        more, checked: :meth:`_run`). Discarded if not."""
        ready = self._ready(conn)
        if ready is False:
            await self._discard(conn)
            return False
        if ready is None and not read:
            try:
                stale = await (conn.can_read() if _HAS_CAN_READ else conn.can_read_destructive()) \
                    or (not self._in_process and _hung_up(conn._writer))
            except (self._redis.ConnectionError, OSError):
                stale = True
            except BaseException:  # cancelled while checking: neither lost nor kept
                await asyncio.shield(self._discard(conn))
                raise
            if stale:
                await self._discard(conn)
                return False
        return True

    async def _turn(self) -> Any:
        """Wait for a connection given back (returned) or a free connect slot
        (``None``). Cancelled after being handed a connection, it hands it on."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            elif waiter.result() is not None:
                await self._put(waiter.result())
            else:
                self._wake(None)
            raise

    def _wake(self, conn: Any) -> bool:
        """Give *conn* (or ``None``: a free connect slot) to the longest waiting caller;
        ``False`` if none waits."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _tag(self) -> int:
        listener = self.tracking
        if listener is None or listener.client_id is None or not listener.connected.is_set():
            return 0
        return int(listener.generation)

    async def _track(self, conn: Any) -> None:
        """``CLIENT TRACKING on REDIRECT <listener> NOLOOP`` on a new connection while
        the listener is up (refused by an ACL or a proxy: served untracked)."""
        listener = self.tracking
        tag = self._tag()
        if not tag:
            return
        await conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", listener.client_id, "NOLOOP")
        try:
            await conn.read_response()
        except self._redis.ResponseError as e:
            conn._statekit_tag = self._refused_tag = -tag
            listener.tracking_refused(conn, e)
        else:
            conn._statekit_tag = tag

    def tracked(self, key: str | bytes | None = None) -> bool:
        """Whether the connection that serves *key* reports its reads to the live
        listener (set up for the listener's current generation; a server that
        refused the set-up for that generation serves untracked), asked right after
        this task's read of *key*: ``False`` once after a command of this task went
        out on a borrowed connection (the pool's kept share full), even if another
        task made the key's lane since (as the sync transport's)."""
        tag = self._tag()
        if tag <= 0 or self._refused_tag == -tag:
            return False
        borrowed = self._borrowed
        if borrowed:
            task = asyncio.current_task()
            if task is not None and task in borrowed:  # its read went out on a borrowed connection
                borrowed.discard(task)
                return False
        lanes = self._lanes
        if lanes is None:
            return True
        conn = lanes[lane_index(key, len(lanes))].conn
        return conn is not None and conn._statekit_tag == tag and conn.is_connected

    async def _discard(self, conn: Any) -> None:
        """Close *conn* and give it back to the pool (its state is unknown). A
        tracked connection takes what it tracked with it: near copies go."""
        if conn._statekit_tag > 0:
            tag, conn._statekit_tag = conn._statekit_tag, 0
            self.tracking.tracking_lost(tag)
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        """Give *conn* back to the pool (and its place in the kept share)."""
        if conn._statekit_kept:
            conn._statekit_kept = False
            _KEPT.give(self._pool)
        await self._pool.release(conn)

    def _keep(self, conn: Any, lane: _KeyLane | None = None) -> Any:
        """After a command: *conn* kept (idle, or its key *lane*'s), handed to a
        waiting caller, or returned for the caller to give back to the pool
        (:meth:`_release`: borrowed, or the transport closed)."""
        conn._statekit_last = _monotonic()
        if lane is not None and conn._statekit_kept:
            if self._closed:  # aclose() emptied the lanes meanwhile: closed, not kept
                asyncio.ensure_future(self._discard(conn))
            else:
                lane.conn = conn
            return None
        if self._waiters and self._wake(conn):
            return None
        if self._closed or not conn._statekit_kept:
            return conn
        self._idle.append(conn)
        return None

    async def _put(self, conn: Any, lane: _KeyLane | None = None) -> None:
        """:meth:`_keep` *conn*, or give it back to the pool."""
        spare = self._keep(conn, lane)
        if spare is not None:
            await self._release(spare)

    async def aclose(self) -> None:
        """Give every kept connection back to the pool (the client stays open: it may
        be shared)."""
        self._closed = True
        for loading in list(self._loading.values()):
            loading.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        idle, self._idle = self._idle, deque()
        for conn in idle:
            await self._release(conn)
        for lane in self._lanes or ():
            async with lane.lock:
                conn, lane.conn = lane.conn, None
                if conn is not None:
                    await self._discard(conn)  # tracking on: not lent on

    # -- commands ------------------------------------------------------------------

    def _once(self, args: Sequence[Arg], checked: bool = False) -> Awaitable[Any]:
        """Send *args* on a kept connection (a tracking transport: its key lane's)
        and read the reply (raw). Raises ``_Unsent`` wrapping a failure before
        anything was sent. A connection idle for a moment is checked first
        (:meth:`_usable`) unless *args* is an idempotent read not sent before
        (*checked* false)."""
        lanes = self._lanes
        if lanes is None:
            return self._once_on(args, None, checked)  # (no coroutine of its own in between)
        return self._once_in_lane(args, lanes[lane_index(command_key(args), len(lanes))], checked)

    def _resend(self, args: Sequence[Arg]) -> Awaitable[Any]:
        """:meth:`_once` for a read sent again after a dropped connection: on a checked
        connection (another idle one may be closed too: a restarted server)."""
        return self._once(args, True)

    async def _once_in_lane(self, args: Sequence[Arg], lane: _KeyLane, checked: bool = False) -> Any:
        """:meth:`_once` on a tracking transport: one command at a time on *lane*."""
        lock, wait = lane.lock, self._lane_wait
        if wait is None or not (lock.locked() or getattr(lock, "_waiters", None)):
            await lock.acquire()  # free: taken at once (no wait_for task per command)
        else:
            try:
                await within(lock.acquire(), wait)
            except asyncio.TimeoutError:
                raise lane_busy(self._where, wait) from None
        try:
            return await self._once_on(args, lane, checked)
        finally:
            lock.release()

    async def _once_on(self, args: Sequence[Arg], lane: _KeyLane | None, checked: bool = False) -> Any:
        idle = self._idle
        # the common case: :meth:`_checkout`'s first pick, no await (idle for a moment:
        # only a read not sent before skips the check)
        if lane is None and idle and ((ready := self._ready(idle[-1]))
                                      or (ready is None and not checked and is_read(args))):
            conn = idle.pop()
        else:
            try:
                conn = None
                read = not checked and is_read(args)
                if lane is not None and lane.conn is not None:
                    conn, lane.conn = lane.conn, None
                    if not await self._usable(conn, read):
                        conn = None
                if conn is None:
                    conn = await self._checkout(read)
                    if lane is not None and not conn._statekit_kept:
                        task = asyncio.current_task()
                        if task is not None:
                            self._borrowed.add(task)  # for tracked(): this command is untracked
            except (self._redis.ConnectionError, self._redis.TimeoutError, OSError) as e:
                raise _Unsent(e) from e
        start = _monotonic()
        timeout = None if self._in_process else conn.socket_timeout
        watched = self._watched
        reading = False
        try:
            pack = self._pack
            if self._write(conn, [pack(args)] if pack is not None else conn.pack_command(*args)):
                await self._drain(conn)
            if timeout is None:
                reply = await conn.read_response()
            else:
                # the socket timeout, kept by the transport's one timer (_bark) instead of
                # the asyncio.timeout redis-py enters per reply (5-7 us of CPU a command)
                reading = True
                loop = asyncio.get_running_loop()
                watched[conn] = deadline = loop.time() + timeout
                if self._watchdog is None:
                    self._watchdog = loop.call_at(deadline, self._bark)
                reply = await _read_reply(conn)
        except self._redis.ResponseError as e:
            if reading and watched.pop(conn, None) is None:  # closed by _bark as the reply came
                await self._discard(conn)
                raise
            if reply_problem(_message(e)) == "wrong node":
                await self._discard(conn)
                await self._drop_kept()
                raise _Unsent(e) from e
            await self._put(conn, lane)
            raise
        except BaseException as e:  # sent, no reply read: the connection is out of step
            overdue = reading and watched.pop(conn, None) is None
            await self._discard(conn)
            if overdue and isinstance(e, Exception):  # _bark closed it: the reply timed out
                raise self._redis.TimeoutError(f"Timeout reading from {_host(conn)}") from e
            if isinstance(e, Exception) and refused_unapplied(e):  # LOADING, a Sentinel's READONLY
                if _problem_of(e) == "wrong node":
                    await self._drop_kept()
                raise _Unsent(e) from e
            raise
        if reading and watched.pop(conn, None) is None:  # the reply came as _bark closed it
            await self._discard(conn)
        else:
            spare = self._keep(conn, lane)  # (:meth:`_put`, awaiting only a release)
            if spare is not None:
                await self._release(spare)
        if METRICS.on():
            await _record(args, start, conn)
        return reply

    async def _drop_kept(self) -> None:
        """After a wrong-node reply (a demoted master): close every connection kept
        idle, and each key lane's not in use, as they point at that node too (a
        command in flight on one finds out itself), so the retry and the commands
        after it ask Sentinel (or DNS) for the master again instead of spending a
        retry each on the old one (as the sync transport drops its own)."""
        conns, self._idle = list(self._idle), deque()
        for lane in self._lanes or ():
            if lane.conn is not None and not lane.lock.locked():
                conns.append(lane.conn)
                lane.conn = None
        if conns:  # (all of them, also if the caller is cancelled meanwhile)
            await asyncio.shield(asyncio.gather(*[self._discard(conn) for conn in conns]))

    def _bark(self) -> None:
        """The read timeout of :meth:`_once_on`: close every connection whose reply is
        overdue (its read then fails at once, and is raised as redis-py's
        ``TimeoutError``: sent, outcome unknown, never sent again), then wait for the
        next deadline. One timer per transport, re-armed about once per socket
        timeout while commands are in flight, instead of one per command."""
        self._watchdog = None
        watched = self._watched
        if not watched:
            return
        loop = asyncio.get_running_loop()
        now = loop.time() + 0.001  # the loop runs a timer up to its clock's resolution early
        for conn, deadline in list(watched.items()):
            if deadline <= now:
                del watched[conn]
                writer = conn._writer
                if writer is not None:
                    writer.transport.abort()
        if watched:
            self._watchdog = loop.call_at(min(watched.values()), self._bark)

    def _write(self, conn: Any, chunks: Sequence[bytes]) -> bool:
        """Write *chunks* on *conn*'s stream, as redis-py's ``send_packed_command``
        does, without its ``wait_for`` (a task and a timer per command on Python <
        3.12: ~10 µs of the loop's CPU): the socket takes a small command at once, and
        only what it did not take is drained, under the socket timeout
        (:meth:`_drain`). Returns whether to drain. Raises ``_Unsent`` when the
        connection was closed before anything was written."""
        writer = conn._writer
        if writer is None or writer.transport.is_closing():
            raise _Unsent(self._redis.ConnectionError("Connection closed by the server before write"))
        try:
            write = getattr(writer, "write", None)  # (fakeredis's writer has writelines only)
            if len(chunks) == 1 and write is not None:  # most commands: on 3.12 writelines takes
                write(chunks[0])  # sendmsg's slower path (~3 us of CPU per command)
            else:
                writer.writelines(chunks)
        except (TypeError, AttributeError) as e:  # CPython gh-136234, as redis-py handles it (#4287)
            if writer.transport.is_closing():
                raise self._redis.ConnectionError("Connection closed by the server while writing") from e
            raise
        buffered = getattr(writer.transport, "get_write_buffer_size", None)  # (fakeredis's has none)
        return buffered is None or bool(buffered())

    async def _drain(self, conn: Any) -> None:
        """Wait until the socket took what :meth:`_write` left buffered, at most the
        connection's socket timeout (then ``TimeoutError``: sent in part, outcome
        unknown). Timed out or cancelled, the connection is aborted: the rest of the
        command is dropped, never written later (a close would still flush it, and
        the server run it, after the caller was told it failed)."""
        writer = conn._writer
        timeout = None if self._in_process else conn.socket_timeout
        try:
            await within(writer.drain(), timeout) if timeout else await writer.drain()
        except BaseException as e:
            writer.transport.abort()
            if isinstance(e, asyncio.TimeoutError):
                raise self._redis.TimeoutError("Timeout writing to socket") from e
            raise

    async def command(self, *args: Arg) -> Any:
        """Run one Redis command: raw reply (through ``RedisCluster`` redis-py's reply
        callbacks apply). An idempotent read is sent once more after a dropped
        connection; nothing else is ever sent twice.

        :raises BackendUnavailable: Redis unreachable, timed out or refusing service.
        :raises RedisReplyError: any other error reply (see :meth:`reply_error`).
        """
        gate = self._gate
        await gate.acquire()  # (what ``async with`` does, without its two coroutines a command)
        try:
            if not self.direct:
                return await self._through_client(args)
            return await self._run(args)
        finally:
            gate.release()

    async def _run(self, args: Sequence[Arg], keep: type[Exception] | None = None,
                   send: Callable[[Sequence[Arg]], Awaitable[Any]] | None = None) -> Any:
        """``send(args)`` (default :meth:`_once`) under the retry rule and the error map
        (an error reply of type *keep* is raised as redis-py raised it)."""
        redis = self._redis
        direct = send is None
        send = self._once if send is None else send
        failures = 0
        read_again: bool | None = None  # (asked on a dropped connection only)
        glitched = False
        while True:
            try:
                return await send(args)
            except _Unsent as e:  # nothing applied: retried with backoff
                failures += 1
                if failures > self._retries:
                    raise self._unavailable(e.error) from e.error
                await asyncio.sleep(self._backoff.compute(failures))
            except redis.ResponseError as e:
                if keep is not None and isinstance(e, keep):
                    raise
                raise self._refused(e) from e
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                if read_again is None:
                    read_again = is_read(args)
                if read_again and not _timed_out(e) and not isinstance(e, TimeoutError):
                    read_again = False  # an idempotent read after a dropped connection: once,
                    if direct:  # on a checked connection (the first may have been one
                        send = self._resend  # closed while idle, unchecked: a read)
                    continue
                if direct:
                    raise unavailable(self._where, f"{e} (the command was sent: its outcome is unknown)",
                                      _problem_of(e)) from e
                raise self._unavailable(e) from e
            except (redis.exceptions.RedisClusterException, redis.exceptions.ClusterError) as e:
                # the cluster client gave up ("TTL exhausted." after redirects, no node
                # reachable, a slot not covered): nothing is sent again
                raise self._unavailable(e) from e
            except AttributeError as e:  # the cluster client mid-reshard: nothing sent
                failed = _sent_before(e, (redis.ConnectionError, redis.TimeoutError, OSError))
                if failed is not None and _in_cluster_client(e):
                    # raised by redis-py's handling of a failure that may have come
                    # after sending (this layer cannot tell): not sent again
                    raise self._unavailable(failed) from failed
                if not cluster_client_glitch(e):
                    raise
                if glitched:
                    raise self._unavailable(e) from e
                glitched = True  # once more, after a moment (as the sync transport does)
                await asyncio.sleep(0.05)

    def _refused(self, error: Exception) -> Exception:
        message = _message(error)
        problem = reply_problem(message)
        if problem is None:
            return self.reply_error(message)
        user = acl_user(self.client) if problem == "permission" else None
        return unavailable(self._where, message, problem, user)

    async def script(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Arg]) -> Any:
        """Run *script* by ``EVALSHA``; on ``NOSCRIPT`` (a restarted or flushed server:
        nothing ran) load it and run it again. Cluster: loaded on the primary of its
        first key (keyless: a random primary) and run again there, loaded on the
        other primaries in the background (:meth:`_load_elsewhere`). Errors as
        :meth:`command`."""
        evalsha = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        no_script = self._redis.exceptions.NoScriptError
        gate = self._gate
        await gate.acquire()  # (as in :meth:`command`)
        try:
            if not self.direct:
                try:
                    return await self._through_client(evalsha, keep=no_script)
                except no_script:
                    node = None
                    if self.cluster:  # the node that will run it, and every other primary
                        client = self.client
                        node = client.get_node_from_key(keys[0]) if keys else client.get_random_primary_node()
                        self._load_elsewhere(script, node)
                    await self._through_client((b"SCRIPT", b"LOAD", script.source), node=node)
                    # keyless: redis-py sends it to a random primary, which the
                    # background load may not have reached yet: run it where it was loaded
                    return await self._through_client(evalsha, node=None if keys else node)
            try:
                return await self._run(evalsha, keep=no_script)
            except no_script:
                await self._run((b"SCRIPT", b"LOAD", script.source))
                return await self._run(evalsha)
        finally:
            gate.release()

    async def _through_client(self, args: Sequence[Arg], keep: type[Exception] | None = None,
                              node: Any = None) -> Any:
        """One command through the client's own ``execute_command`` (Cluster, or a
        client whose pool the transport does not drive), under :meth:`_run`'s rule:
        redis-py's command retry is off on statekit's clients, so nothing is resent;
        idempotent reads once; a reply saying nothing was applied (``READONLY``,
        ``MASTERDOWN``, ``LOADING``) is retried as unsent. Cluster: sent to *node*
        when given."""
        name = _name(args[0])
        options: dict[str, Any] = {}
        if node is not None:
            options["target_nodes"] = node

        redis = self._redis
        execute = self.client.execute_command

        async def send(args: Sequence[Arg]) -> Any:
            try:
                return await execute(name, *args[1:], **options)
            except redis.ResponseError as e:  # READONLY, MASTERDOWN: nothing applied
                if _problem_of(e) == "wrong node":
                    raise _Unsent(e) from e
                raise
            except redis.ConnectionError as e:  # LOADING: nothing applied
                if refused_unapplied(e):
                    raise _Unsent(e) from e
                raise

        return await self._run(args, keep, send)


    def _load_elsewhere(self, script: Script, node: Any) -> None:
        """Cluster: load *script* on every primary but *node* (which loads and runs it
        now: :func:`~statekit.redis.transport.other_primaries`), in the background:
        the caller never waits for another node (a paused one). One load per script at
        a time; failures are dropped (a node that missed it loads it at its own
        ``NOSCRIPT``); :meth:`aclose` cancels what is under way."""
        sha = script.sha
        if sha in self._loading:
            return
        others = other_primaries(self.client, node.name)
        if not others:
            return
        loading = self._loading[sha] = asyncio.ensure_future(self._load_on(others, script.source))

        def done(future: asyncio.Future[Any]) -> None:
            if self._loading.get(sha) is future:
                del self._loading[sha]

        loading.add_done_callback(done)

    async def _load_on(self, nodes: list[Any], source: str) -> None:
        with contextlib.suppress(Exception):  # best effort (_load_elsewhere)
            await self.client.execute_command("SCRIPT", "LOAD", source, target_nodes=nodes)


class _KeyLane:
    """One key lane of a tracking transport: its connection (``None`` until first
    use, or while a command holds it) and the lock taken per command."""

    __slots__ = ("conn", "lock")

    def __init__(self) -> None:
        self.conn: Any = None
        self.lock = asyncio.Lock()


class _Unsent(Exception):
    """A failure before the command was sent, or a reply saying nothing was applied
    (:func:`~statekit.redis.refused_unapplied`): retryable."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def never_sent(error: BaseException) -> bool:
    """Whether :class:`AsyncTransport` raised *error* (its
    :class:`~statekit.errors.BackendUnavailable`) for a command it never sent, or one
    a reply said was not applied, retried until its retries ran out: it raises that
    error while handling its ``_Unsent``. One sent without a reply is raised from the
    redis-py error itself. The asyncio twin of :func:`statekit.redis.outcome_unknown`
    (negated): the transport that chains the errors is the one that reads them."""
    return isinstance(error.__context__, _Unsent)


_timeout_scope: Any = getattr(asyncio, "timeout", None)  # Python 3.11+


async def within(aw: Awaitable[T], timeout: float) -> T:
    """``await aw``, at most *timeout* seconds (``asyncio.TimeoutError``). On Python
    3.11+ under ``asyncio.timeout``: 3.11's ``wait_for`` can swallow a cancellation
    that lands as *aw* completes (the caller then goes on as if not cancelled)."""
    if _timeout_scope is None:  # pragma: no cover - Python 3.10
        return await asyncio.wait_for(aw, timeout)
    async with _timeout_scope(timeout):
        return await aw


#: redis-py's asyncio metrics hook (the sync transport's :class:`MetricsHook`)
METRICS = MetricsHook("redis.asyncio.observability.recorder", "_async_")


async def _record(args: Sequence[Arg], start: float, conn: Any) -> None:
    """Report a command sent directly to redis-py's own metrics hook (redis-py 7+), as
    redis-py reports its own (called only when :data:`METRICS` is on)."""
    await METRICS.record(command_name=_name(args[0]), duration_seconds=_monotonic() - start,
                         server_address=getattr(conn, "host", None), server_port=getattr(conn, "port", None),
                         db_namespace=str(getattr(conn, "db", 0)))
