"""The one Redis transport: commands and Lua scripts on redis-py connections.

Every statekit hot path (a cache get, a session load or save, a broadcast publish)
sends its commands through a :class:`Transport`. Nothing here speaks RESP or opens
a socket: connections, TLS, ACL and credential providers, ``client_name``,
keepalive, RESP2/RESP3, timeouts and the reply parser (hiredis when installed) are
redis-py's, taken from the client's own connection pool.

**Node routing is the only difference between URL kinds.** A standalone client
(TCP, TLS, unix socket) and a Sentinel master client keep one dedicated pool
connection per thread: a command is packed by the connection's packer and costs one
``send_packed_command`` and one ``read_response`` (no pool checkout per call). On
Sentinel the connection is the master's (it asks the sentinels again after a
wrong-node reply dropped it). On Cluster a command whose key is known (the
commands of :data:`KEY_AT` and ``EVALSHA`` with keys) goes the same way to the
key's node as redis-py's slot map gives it: one dedicated connection per thread and
node, from that node's pool. A script that node lacks (``NOSCRIPT``: a restarted
node, or a flushed one) is loaded there and on every other primary, as
``RedisCluster``'s ``SCRIPT LOAD`` would, and run again there: on this thread's
connections to the other primaries, whose replies are read only if they came
meanwhile (a paused one is never waited for: its connection, owing a reply, is
dropped before its next command), and on a primary it has no connection to yet from
a thread of its own (connecting waits for the handshake, a paused primary's up to
the socket timeout: a call to a healthy one does not wait for it). Anything
else, and a command that node answers with ``MOVED``/``ASK``/``TRYAGAIN``/
``CLUSTERDOWN``, whose connection cannot be made, or that must run once more (an
idempotent read after a dropped connection), goes through ``RedisCluster``, which
routes by slot, follows redirections and refreshes its slot map (so the next direct
call finds the new node). A write whose outcome is unknown is never sent again on
either path. (``RedisCluster.execute_command`` costs ~60 µs of CPU per command on
its own; the direct path about what a standalone command costs.)

**Reply shape.** On the per-thread connection replies are raw, as the connection's
protocol gives them (``SET`` gives ``b"OK"``; ``HGETALL`` a flat list in RESP2, a
dict in RESP3, redis-py 8's default), also when the call goes through an
instrumented ``execute_command`` (below). Through ``RedisCluster`` redis-py's reply
callbacks apply (``SET`` gives ``True``, ``HGETALL`` a dict): callers that run on
Cluster accept both (a Cluster command takes either path).

**Observability.** When ``redis.Redis.execute_command`` is wrapped (OpenTelemetry's
redis instrumentation wraps it; detected by ``__wrapped__`` at each call), the
per-thread connection is driven through a ``redis.Redis`` bound to it, so every
command gets its span. Each command sent directly is reported to redis-py's own
metrics hook (``redis.observability.recorder.record_operation_duration``, redis-py
7 and later) as redis-py reports its own (:class:`MetricsHook`).

**Concurrency.** Safe to share between threads: threads never share a connection
(a ``threading.local``), so no lock is taken per call and a slow reply on one thread
never delays another. The exception is a *tracking* transport (a session near
cache's): its commands go to one of :data:`TRACKED_LANES` shared connections chosen
by the command's key, each used by one thread at a time (a lock per connection), so
every command on a key runs on the same connection and ``NOLOOP`` keeps this
process's own writes from invalidating the copies its other threads read (with a
connection per thread, a save on one thread sent an invalidation for the copy the
load of another had tracked: the near cache reloaded the session on every request
under concurrency). A tracked connection that closes or reconnects takes what it
tracked with it (Redis sends no invalidation for it any more): the listener's near
caches are flushed then, also when redis-py closed it after a timeout or an error.
A command waits for its lane at most the socket timeout, then raises
``BackendUnavailable`` unsent (:func:`lane_busy`).

**A bounded pool** (``max_connections``). The connections kept between calls (each
thread's, a tracking transport's lanes, a thread's Cluster node connections) are
counted per pool, for every transport of the process on it (stores on one URL share
its pool): at most :func:`kept_share` of it (all but a quarter, at most 8, and one
at least: 0 of a pool of 1, 1 of 2, 3 of 4), so the client's own pipelines and
pub/sub always find a connection. A thread past the share borrows a connection for
each command (a pool checkout and release per command; on Cluster the command goes
through ``RedisCluster``), a tracking transport's lane past it serves its keys
untracked (their reads are not kept near): slower, never refused. Statekit's
clients of a URL with ``max_connections`` wait for a connection when all are in use
(a ``BlockingConnectionPool``, up to the socket timeout, then ``BackendUnavailable``
unsent: :func:`pool_busy`), so every operation works with any ``max_connections``
>= 1 and the server never sees more of the pool's connections than it (a near
cache's invalidation listener has one of its own, outside the pool). A caller's own
client with redis-py's plain pool refuses a checkout past it at once, as redis-py
does. A kept connection goes back to the pool, and its place in the share, when its
thread ends (or on :meth:`Transport.close`). After ``fork()`` the child forgets every
inherited connection (:func:`statekit._fork.reset_in_child`) and opens its own on
first use.

**Failures.** The retry rule and the error map of :mod:`statekit.redis`, nothing
else: connecting is retried (redis-py's ``Retry``); an idle connection the server
closed (a restart, an idle timeout) is found before a write or a script is sent on it,
and replaced (an idempotent read goes without that check: on such a connection it fails
as dropped and is sent once more, as below); once a command went out, a timeout or a
dropped connection raises :class:`~statekit.errors.BackendUnavailable` and the command
is never sent again, except an idempotent read after a dropped connection (once).
Wrong-node, not-now and authentication replies raise ``BackendUnavailable``; other
error replies raise what *reply_error* returns (:class:`RedisReplyError` by default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .._fork import reset_in_child
from ..errors import StatekitError
from . import (
    RedisClient,
    _rule,
    _timed_out,
    acl_user,
    call_with_rule,
    cluster_client_glitch,
    cluster_unapplied,
    is_cluster,
    is_read,
    key_slot,
    reply_problem,
    retry_policy,
    translate_errors,
    unavailable,
    with_rule,
)
from .scripts import Script

_hiredis_pack: Any
try:  # commands packed by hiredis where installed (the redis extra has it)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - redis-py's own packer
    _hiredis_pack = None


class MetricsHook:
    """redis-py's metrics hook (redis-py 7 and later: *module*'s
    ``record_operation_duration``) for the commands statekit sends directly, called
    as redis-py calls it. :meth:`on` reads redis-py's own cached lookup (*prefix*
    ``metrics_collector`` / ``collector_resolved``): while redis-py has found
    observability off, the call is skipped (~2 us of CPU a command: its asyncio
    client makes it every time). ``ObservabilityInstance.init()`` clears that cache,
    so observability enabled later is seen at the next command; a redis-py without
    those names gets every call."""

    def __init__(self, module: str, prefix: str) -> None:
        import importlib

        try:
            found: Any = importlib.import_module(module)
        except ImportError:  # pragma: no cover - redis-py 6
            found = None
        #: the hook, ``None`` where redis-py has none
        self.record: Any = getattr(found, "record_operation_duration", None)
        self._collector, self._resolved = f"{prefix}metrics_collector", f"{prefix}collector_resolved"
        state = vars(found) if found is not None else {}
        self._state = state if self._collector in state and self._resolved in state else None

    def on(self) -> bool:
        """Whether to call :attr:`record` for the command just run."""
        state = self._state
        if state is None:
            return self.record is not None
        return not state[self._resolved] or state[self._collector] is not None


#: redis-py's metrics hook for the commands this module's transport sends
METRICS = MetricsHook("redis.observability.recorder", "_")

_log = logging.getLogger("statekit.redis")

__all__ = ["KEY_AT", "STALE_CHECK_AFTER", "TRACKED_LANES", "RedisReplyError", "Transport", "command_key",
           "kept_share", "lane_busy", "lane_index", "lane_wait", "other_primaries", "pool_share"]

Arg = bytes | str | int | float

#: a connection idle for longer is checked (one non-blocking read) before a command
#: other than an idempotent read (:func:`~statekit.redis.is_read`) is sent on it
STALE_CHECK_AFTER = 0.001

_monotonic = time.monotonic

#: Cluster: commands sent straight to their key's node, and where their (first) key
#: is; every key of a command must be in that key's slot (as ``RedisCluster`` needs)
KEY_AT: dict[Arg, int] = {
    name: 1
    for text in ("GET", "SET", "MGET", "INCR", "INCRBY", "DEL", "UNLINK", "EXISTS", "PTTL", "PEXPIRE",
                 "HGETALL", "HGET", "HMGET", "HSET", "HDEL", "HINCRBY", "SMEMBERS", "SADD", "SREM")
    for name in (text.encode(), text)
}


#: shared connections of a tracking transport (sync and asyncio): a command's key
#: picks one, so every command on a key runs on the same connection
TRACKED_LANES = 8


def command_key(args: Sequence[Arg]) -> bytes | None:
    """The (first) key of command *args* (a command of :data:`KEY_AT`, or ``EVALSHA``
    with keys) as bytes, else ``None``."""
    at = KEY_AT.get(args[0])
    if at is None:
        if args[0] != b"EVALSHA" or len(args) < 4 or not int(args[2]):
            return None
        at = 3
    if len(args) <= at:
        return None
    key = args[at]
    return key if isinstance(key, bytes) else str(key).encode()


def pool_share(size: int) -> int:
    """All but a quarter of a pool of *size* connections (at most 8 left; the whole of
    a pool of 1 to 3), left for the client's own pipelines and pub/sub, whose checkouts
    would fail (or wait) if the transports kept every connection: what
    :func:`kept_share` keeps at most, one connection at least left."""
    return max(1, size - min(8, size // 4))


def kept_share(size: int) -> int:
    """How many connections of a pool of *size* the transports of a process keep
    between calls, all of them together, sync and asyncio (a thread's own, a tracking
    transport's shared ones or key lanes, Cluster node connections, an
    :class:`~statekit.redis.aio.AsyncTransport`'s idle ones): :func:`pool_share`, and
    one at least left for everything else: the client's pipelines and pub/sub, and
    the commands past the share (a thread's, a task's), which borrow a connection for
    each command (0 for a pool of 1: every command borrows its connection)."""
    return min(pool_share(size), size - 1)


class _Kept:
    """How many connections of each pool the transports of this process keep, sync
    and asyncio (:func:`kept_share` at most): the count lives on the pool, with the
    process it was made in (a forked child's pool starts empty, as redis-py resets
    it)."""

    def __init__(self) -> None:
        self.reset_after_fork()
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        """A new lock (a parent thread may have held the old one at fork time)."""
        # reentrant: a lane's __del__, run by a collection while this thread holds it,
        # gives its connection back under it (held for no I/O)
        self.lock = threading.RLock()

    def take(self, pool: Any) -> bool:
        """Count one more kept connection of *pool*, if its share has room."""
        size = getattr(pool, "max_connections", None)
        pid = os.getpid()
        with self.lock:
            kept = getattr(pool, "_statekit_kept", None)
            if kept is None or kept[0] != pid:
                kept = pool._statekit_kept = [pid, 0]
            if size and kept[1] >= kept_share(size):
                return False
            kept[1] += 1
        return True

    def give(self, pool: Any) -> None:
        """Count one kept connection of *pool* less (given back, or never made)."""
        with self.lock:
            kept = getattr(pool, "_statekit_kept", None)
            if kept is not None and kept[0] == os.getpid() and kept[1] > 0:
                kept[1] -= 1


_KEPT = _Kept()


def pool_busy(where: str, pool: Any) -> Exception:
    """The error of a command whose borrowed connection did not come free in time:
    every connection of *pool* was in use (a ``BlockingConnectionPool`` waited its
    timeout for one; redis-py's plain pool does not wait)."""
    timeout = getattr(pool, "timeout", None)
    waited = f"within {timeout:g} s" if timeout else "at once"
    return unavailable(where, f"all {pool.max_connections} connections of the pool (max_connections) were "
                       f"in use and none came free {waited} (nothing was sent)", None)


def _exhausted(error: BaseException) -> bool:
    """Whether *error*, raised by a pool's ``get_connection``, says every connection
    was in use (redis-py's ``MaxConnectionsError``, or a ``BlockingConnectionPool``
    that waited its timeout): nothing was sent, and waiting again is no retry."""
    import redis

    return isinstance(error, getattr(redis.exceptions, "MaxConnectionsError", ())) or (
        type(error) is redis.ConnectionError and str(error) == "No connection available.")


def lane_wait(pool: Any) -> float | None:
    """How long a command waits for its key lane (the connection another command
    uses): the socket timeout of *pool*'s connections (``None``: as long as it
    takes). Past it the command fails unsent (:func:`lane_busy`): each request of a
    paused Redis fails within its own timeouts, not after every command queued on its
    lane before it timed out in turn."""
    timeout = pool.connection_kwargs.get("socket_timeout")
    return float(timeout) if timeout else None


def lane_busy(where: str, timeout: float) -> Exception:
    """The error of a command whose key lane stayed busy for *timeout* seconds."""
    return unavailable(where, f"its connection stayed busy with other commands for {timeout:g} s (the "
                       "socket timeout; nothing was sent)", None)


def lane_index(key: str | bytes | None, count: int) -> int:
    """Which of *count* shared tracked connections serves *key* (``None``: a keyless
    command, any one: this thread's, by a hash of its id: thread ids are aligned
    addresses, all of them 0 modulo 8)."""
    if key is None:
        return zlib.crc32(threading.get_ident().to_bytes(8, "little")) % count
    return zlib.crc32(key if isinstance(key, bytes) else key.encode()) % count


def other_primaries(client: Any, name: str) -> list[Any]:
    """Cluster: the primaries of *client* (a ``RedisCluster``, sync or asyncio) other
    than the node named *name*. A script a node answered ``NOSCRIPT`` for is loaded on
    that node, which runs it, and on these too (sync and asyncio transports alike), as
    ``RedisCluster``'s ``SCRIPT LOAD`` loads on every primary: a bulk call's
    pipelines then find it on each node. Best effort, never waited for by the
    caller: a paused primary's reply or handshake is not waited for (a node that
    missed the load loads the script at its own ``NOSCRIPT``)."""
    return [node for node in client.get_primaries() if node.name != name]


def packer(pool: Any) -> Callable[[Sequence[Arg]], Any] | None:
    """hiredis's ``pack_command`` (one C call) when installed and *pool* encodes text
    as strict UTF-8, else ``None`` (the connection's own packer: redis-py's encoder
    per argument). For the sync and the asyncio transports alike."""
    kwargs = pool.connection_kwargs
    if _hiredis_pack is not None and kwargs.get("encoding", "utf-8").lower().replace("-", "") == "utf8" \
            and kwargs.get("encoding_errors", "strict") == "strict":
        return _hiredis_pack  # type: ignore[no-any-return]
    return None


class RedisReplyError(StatekitError):
    """Redis answered a command with an error reply (a bug or a wrong type, not an
    outage: outages raise :class:`~statekit.errors.BackendUnavailable`)."""


def _name(command: Arg) -> str:
    """A command's name as redis-py spells it (``"GET"``), for spans and metrics."""
    return (command.decode() if isinstance(command, bytes) else str(command)).upper()


def _message(error: Exception) -> str:
    """The error reply as the server sent it (redis-py strips some codes)."""
    code = getattr(error, "status_code", None)
    text = str(error)
    return f"{code} {text}" if code and not text.startswith(code) else text


def _unmarked() -> bool:
    """``should_reconnect`` of a redis-py without it (before 6.4): never marked."""
    return False


class _Lane:
    """One thread's pool connection (and what was set up on it)."""

    __slots__ = ("__weakref__", "bound", "conn", "db", "kept", "last", "marked", "original",
                 "original_retry", "pack", "pool", "stale", "tag", "tracking")

    def __init__(self, transport: Transport, pool: Any, conn: Any, kept: bool = True) -> None:
        # not the transport itself: a dropped transport gives its connections back at
        # once, with no reference cycle for the garbage collector to find first.
        # Borrowed for one command (not *kept*): never tracked
        self.tracking: Any = transport.tracking if kept else None
        #: counted in the pool's kept share (:class:`_Kept`) until released
        self.kept = kept
        self.pool = pool
        self.conn = conn
        self.pack = transport._pack if transport.direct else packer(pool)
        self.original = type(conn)
        # a caller's pool: the rule applies to this connection too, while it is lent
        conn.__class__ = with_rule(self.original)
        self.original_retry = conn.retry
        conn.retry = transport._retry
        self.bound: Any = None
        self.last = _monotonic()
        self.db = str(getattr(conn, "db", 0))
        #: the listener generation this connection reports to (negative: refused)
        self.tag = 0
        #: drop the connection before its next command (an error reply about the server)
        self.stale = False
        #: whether redis-py marked the connection for reconnect (redis-py 6.4+)
        self.marked: Callable[[], bool] = getattr(conn, "should_reconnect", _unmarked)
        if self.tracking is not None:
            conn.register_connect_callback(self.on_connect)

    @property
    def host(self) -> Any:
        """The host the connection is (or will be) connected to, read now: a Sentinel
        connection's is the master's at its last connect, and a maintenance
        notification (``MOVING``) moves it (``None``: a unix socket, or released)."""
        return getattr(self.conn, "host", None)

    @property
    def port(self) -> Any:
        """The port of :attr:`host`, read now."""
        return getattr(self.conn, "port", None)

    def on_connect(self, conn: Any) -> None:
        """After each (re)connect: ``CLIENT TRACKING on REDIRECT <listener>`` while the
        listener is up (the tracking transport)."""
        listener = self.tracking
        self.forget()  # reconnected: what the old connection tracked is forgotten
        self.tag = 0
        if listener is None:
            return
        generation, client_id = listener.generation, listener.client_id
        if client_id is None or not listener.connected.is_set():
            return
        import redis

        try:
            conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "NOLOOP")
            conn.read_response()
        except redis.ResponseError as e:  # refused (an ACL, a proxy): serve untracked
            self.tag = -generation
            listener.tracking_refused(conn, e)
        except BaseException:
            # interrupted (KeyboardInterrupt, a gevent Timeout) with its reply maybe in
            # flight: a connect callback runs outside redis-py's handshake, which drops
            # the connection on any error, so drop it here (else the next command read
            # this +OK as its reply)
            conn.disconnect()
            raise
        else:
            self.tag = generation

    def freshen(self, args: Sequence[Arg] | None = None) -> None:
        """Before commands are sent on the connection: drop it (it reconnects on send)
        when the last call was cut between send and reply (its reply may still come,
        and must not be read as another's), redis-py marked it for reconnect (a
        server that announced a move, a Cluster node that left the topology: "closed
        once its current command completes"), it was set up for an earlier listener
        connection, or the server closed it while idle (found before anything is
        sent, so the command is not one whose outcome is unknown). That last check
        (a ``poll``) is skipped for the one command *args* when it is an idempotent
        read (:func:`~statekit.redis.is_read`): on a closed connection it fails as
        dropped and the retry rule sends it once more, on a new connection; a write
        is never resent, so it is checked."""
        conn = self.conn
        listener = self.tracking
        if conn._statekit_unread or self.stale or self.marked():
            self.disconnect()
        elif listener is not None and abs(self.tag) != listener.generation and listener.connected.is_set():
            self.disconnect()
        elif conn._sock is not None and _monotonic() - self.last > STALE_CHECK_AFTER \
                and (args is None or not is_read(args)):
            try:
                stale = conn.can_read(timeout=0)
            except _rule().redis.ConnectionError:
                stale = True
            if stale:  # closed by the server while idle (or out of step)
                self.disconnect()

    def disconnect(self) -> None:
        """Close the connection (it reconnects on the next send); with tracking on, the
        keys it tracked lose their invalidations: the listener's near caches are
        flushed (:meth:`on_connect` does it too, for a reconnect redis-py made)."""
        self.stale = False
        self.forget()
        self.conn.disconnect()

    def forget(self) -> None:
        """The connection closed, or is about to: Redis forgets the keys it tracked and
        sends no invalidation for them any more, so the listener's near caches are
        flushed (if it reported to the listener)."""
        if self.tag > 0:
            tag, self.tag = self.tag, 0
            self.tracking.tracking_lost(tag)

    def client(self) -> Any:
        """A ``redis.Redis`` driving this connection (for an instrumented
        ``execute_command``), with no reply callbacks: raw replies as on the direct
        path."""
        bound = self.bound
        if bound is None:
            import redis
            from redis.client import CaseInsensitiveDict

            bound = self.bound = redis.Redis(connection_pool=self.pool)
            bound.response_callbacks = CaseInsensitiveDict({})
            bound.connection = self.conn
        return bound

    def release(self) -> None:
        """Give the connection back to its pool (tracking turned off by closing it),
        and its place in the pool's kept share."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            self._give_back(conn)
        finally:
            if self.kept:
                self.kept = False
                _KEPT.give(self.pool)

    def _give_back(self, conn: Any) -> None:
        """*conn* back to the pool as redis-py made it."""
        if self.bound is not None:
            self.bound.connection = None  # its close() must not release it again
            self.bound = None
        if self.tag or conn._statekit_unread:  # tracking on, or a reply in flight: never lent on
            self.forget()
            conn.disconnect()
        try:
            conn.deregister_connect_callback(self.on_connect)
        except (AttributeError, ValueError):  # pragma: no cover
            pass
        conn.__class__ = self.original
        conn.retry = self.original_retry
        try:
            self.pool.release(conn)
        except Exception:  # noqa: BLE001,S110 - a pool closed or reset under us
            pass

    def __del__(self) -> None:  # the owning thread ended
        try:
            self.release()
        except Exception:  # noqa: BLE001,S110 - interpreter shutdown
            pass


class Transport:
    """Commands and scripts for one redis-py *client* (see the module docstring).

    :param client: a redis-py client of any kind; kept as :attr:`client` for what the
        transport does not cover (pipelines, pub/sub).
    :param what: names the caller in error messages (``"cache"``, ``"session"``).
    :param tracking: an invalidation listener (:mod:`statekit.redis.tracking`):
        each thread's connection then runs ``CLIENT TRACKING on REDIRECT <id>
        NOLOOP`` after connecting while the listener is up, and :meth:`tracked`
        says whether it reports to the live listener. Standalone and Sentinel only.
    :param reply_error: makes the exception for an error reply of the command
        (default :class:`RedisReplyError`); subclasses may override
        :meth:`reply_error` instead.

    Safe to share between threads and across ``fork()``.
    """

    def __init__(self, client: RedisClient, *, what: str = "Redis", tracking: Any = None,
                 reply_error: Callable[[str], Exception] | None = None) -> None:
        self.client: Any = client
        self._client_type = type(client)
        self.cluster = is_cluster(client)
        self.what = what
        self.tracking = tracking
        self._reply_error = reply_error
        self._where = f"a {what} call"
        # not asked of a cluster client: statekit's connects on first attribute use
        pool: Any = None if self.cluster else getattr(client, "connection_pool", None)
        #: whether commands go through this thread's own pool connection
        self.direct = not self.cluster and pool is not None and getattr(pool, "cache", None) is None
        self._pool = pool
        #: packs a command: hiredis directly (one C call) when the pool encodes text as
        #: UTF-8, else the connection's packer (redis-py's encoder per argument)
        self._pack = packer(pool) if self.direct else None
        if self.cluster and tracking is not None:
            raise ValueError("a tracking transport needs a standalone or Sentinel client")
        #: Cluster: commands of :data:`KEY_AT` go straight to their key's node
        self.cluster_direct = self.cluster  # (not asked of the client: statekit's connects on first use)
        retry = None
        if self.direct:
            retry = pool.connection_kwargs.get("retry")
        self._retry = retry if isinstance(retry, _rule().Retry) else retry_policy()
        import redis

        self._response_error = redis.ResponseError
        self._no_script = redis.exceptions.NoScriptError
        self._connection_error = redis.ConnectionError
        self._local = threading.local()
        #: Cluster: script loads under way in the background, by (node name, source)
        #: (:meth:`_load_behind`), and the lock guarding the table
        self._loads: dict[tuple[str, Arg], threading.Event] = {}
        self._loads_lock = threading.Lock()
        #: a tracking transport's shared connections (see the module docstring)
        shared = tracking is not None and self.direct
        # within the pool's share, one left at least for the client's pipelines: a lane
        # holds its connection for good (a pool of 4 gave all 4 to lanes: the keys of
        # the other lanes and every pipeline got none)
        size = getattr(pool, "max_connections", None)
        lanes = max(1, min(TRACKED_LANES, kept_share(size))) if size else TRACKED_LANES
        self._shared: list[_Lane | None] | None = [None] * lanes if shared else None
        #: one lock per shared connection, held while a command (or the connect of its
        #: first one) uses it; made on first use (:meth:`_lane_lock`)
        self._lane_locks: list[threading.Lock | None] = [None] * lanes if shared else []
        self._lane_locks_made = threading.Lock()
        #: how long a command waits for its shared connection (-1: no bound)
        self._lane_wait = (lane_wait(pool) or -1) if shared else -1
        reset_in_child(self)

    # -- errors ----------------------------------------------------------------------

    def reply_error(self, message: str) -> Exception:
        """The exception for the error reply *message* of a command (replies about the
        server are mapped before: they raise ``BackendUnavailable``)."""
        if self._reply_error is not None:
            return self._reply_error(message)
        return RedisReplyError(f"Redis refused a {self.what} command: {message}")

    def _refused(self, error: Exception) -> Exception:
        message = _message(error)
        problem = reply_problem(message)
        if problem is None:
            return self.reply_error(message)
        if problem == "permission":  # the ACL's: the connection is fine
            return unavailable(self._where, message, problem, acl_user(self.client))
        if problem != "not now":
            self._drop()
        return unavailable(self._where, message, problem)

    # -- this thread's connection ------------------------------------------------------

    def reset_after_fork(self) -> None:
        """Forget the parent's connections (called in a forked child)."""
        lanes = [getattr(self._local, "lane", None), *getattr(self._local, "nodes", {}).values()]
        for lane in lanes:
            if lane is not None:
                lane.conn = None  # the parent's: neither used nor released here
                lane.bound = None
        self._local = threading.local()
        self._loads = {}  # the parent's loading threads are not here: none would end
        self._loads_lock = threading.Lock()
        if self._shared is not None:
            for lane in self._shared:
                if lane is not None:
                    lane.conn = None
                    lane.bound = None
            self._shared = [None] * len(self._shared)
            self._lane_locks = [None] * len(self._shared)  # other threads may have held them
            self._lane_locks_made = threading.Lock()

    def _here(self) -> threading.local:
        """This thread's (or greenlet's) state. A transport made before gevent patched
        ``threading`` (an app preloaded by gunicorn's master) holds a real thread
        local, which every greenlet of the worker would share, one connection for
        all: it is replaced by a patched one the first time it is used after."""
        local = self._local
        if type(local) is not threading.local:
            local = self._local = threading.local()
        return local

    def _lane(self) -> _Lane | None:
        """This thread's own connection, made on first use while the pool's kept share
        has room (:func:`kept_share`), else ``None``: the command borrows one
        (:meth:`_send_borrowed`)."""
        lane: _Lane | None = getattr(self._here(), "lane", None)
        if lane is None or lane.conn is None:
            lane = self._local.lane = self._kept_lane(self._pool)
        return lane

    def _kept_lane(self, pool: Any) -> _Lane | None:
        """A connection of *pool* kept between calls, when its kept share has room
        (else ``None``)."""
        if not _KEPT.take(pool):
            return None
        try:
            conn = self._checkout(pool)
        except BaseException:
            _KEPT.give(pool)
            raise
        return _Lane(self, pool, conn)

    def _checkout(self, pool: Any) -> Any:
        """A connection of *pool* (connected and checked by redis-py); every one in
        use past the pool's wait raises :func:`pool_busy`, not retried: the wait
        was the pool's."""
        try:
            return pool.get_connection()
        except self._connection_error as e:
            if _exhausted(e):
                raise pool_busy(self._where, pool) from e
            raise

    def _send_borrowed(self, args: Sequence[Arg]) -> Any:
        """One command on a connection of the pool checked out for it alone (the
        pool's kept share is full): waited for as the pool waits (a
        ``BlockingConnectionPool``, statekit's for a URL with ``max_connections``: up
        to its timeout), given back after the reply; untracked."""
        pool = self._pool
        conn = self._checkout(pool)
        lane = _Lane(self, pool, conn, kept=False)
        if self.tracking is not None:  # for tracked(): its key's lane may be made before it asks
            self._here().borrowed = True
        try:
            return self._send_on(args, lane)
        except self._response_error as e:
            if reply_problem(_message(e)) is not None:  # about the server (a replica now): not lent on
                conn.disconnect()
            raise
        finally:
            lane.release()

    def _lane_lock(self, i: int) -> threading.Lock:
        """The lock of shared connection *i*, made on first use: by the
        ``threading.Lock`` of that moment, so a store made before gevent patched
        threading (a preloaded app) gets gevent's, and a greenlet waiting for a lane
        yields to the others instead of blocking the worker. (The lock guarding its
        making is held for no I/O.)"""
        lock = self._lane_locks[i]
        if lock is None:
            with self._lane_locks_made:
                lock = self._lane_locks[i]
                if lock is None:
                    lock = self._lane_locks[i] = threading.Lock()
        return lock

    def _shared_lane(self, i: int) -> _Lane | None:
        """The tracking transport's shared connection *i*, made on first use (under
        its lock: a connect that hangs holds up the commands of this lane only) while
        the pool's kept share has room, else ``None``: the command borrows an
        untracked one (its key's reads are not kept near)."""
        shared = self._shared
        assert shared is not None
        lane = shared[i]
        if lane is None or lane.conn is None:
            lane = shared[i] = self._kept_lane(self._pool)
        return lane

    def _drop(self, shared: bool = True) -> None:
        """Drop this thread's connections, and with *shared* mark a tracking
        transport's shared ones for a reconnect (a wrong-node reply: they all point to
        the old master)."""
        local = self._here()
        for lane in (getattr(local, "lane", None), *getattr(local, "nodes", {}).values()):
            if lane is not None and lane.conn is not None:
                lane.conn.disconnect()
        for lane in (self._shared or ()) if shared else ():
            if lane is not None:
                lane.stale = True  # another thread may be using it: dropped before its next command

    def _node_lane(self, args: Sequence[Arg]) -> _Lane | None:
        """Cluster: this thread's connection to the node of *args*'s key (see the
        module docstring), or ``None``: the command goes through ``RedisCluster``."""
        key = command_key(args)
        if key is None or getattr(type(self.client).execute_command, "__wrapped__", None) is not None:
            return None  # keyless, or instrumented: redis-py's own path gives the spans
        slot = key_slot(key)
        try:  # redis-py replaces its slot map whole when it refreshes it: read without its lock
            owner = self.client.nodes_manager.slots_cache.get(slot)
        except AttributeError:  # not connected yet, or another kind of client
            _through("%s: no slot map yet", _name(args[0]))
            return None
        if not owner:  # an uncovered slot, no map yet: RedisCluster says why
            _through("%s: slot %d is not in the slot map", _name(args[0]), slot)
            return None
        return self.node_lane(owner[0])

    def node_lane(self, node: Any) -> _Lane | None:
        """Cluster: this thread's connection to the redis-py ``ClusterNode`` *node*
        (made on first use, from the node's pool; ``lane.conn``), or ``None`` when
        it cannot be made (nothing was sent; :func:`_through` logs why). Bulk calls
        send their pipelines on it too (:func:`statekit.cache.redis.cluster_batch`),
        so a thread holds one connection per node: as it makes one, it lets go of those
        to nodes redis-py marked for reconnect or dropped from the topology, and waits
        for a script load :meth:`_load_behind` sends to *node* (after the handshake)."""
        nodes: dict[str, _Lane] = self._here().__dict__.setdefault("nodes", {})
        lane = nodes.get(node.name)
        if lane is None or lane.conn is None:
            redis_conn = node.redis_connection
            if redis_conn is None:
                _through("redis-py has no client for %s", node.name)
                return None
            pool = redis_conn.connection_pool
            if not _KEPT.take(pool):  # the node's kept share is full: RedisCluster's checkout per command
                _through("%s: the pool's kept share (max_connections) is in use", node.name)
                return None
            try:
                conn = pool.get_connection()
            except BaseException as e:
                _KEPT.give(pool)
                if not isinstance(e, (self._connection_error, _rule().redis.TimeoutError)):
                    raise
                _through("no connection to %s: %s: %s", node.name, type(e).__name__, e)
                return None  # nothing sent: RedisCluster finds the node's successor
            known = self.client.nodes_manager.nodes_cache  # (replaced whole at a refresh)
            for name, old in list(nodes.items()):  # (a new connection: the topology may have changed)
                if old.conn is not None and (old.marked() or name not in known):
                    # its node left (or moved): not kept for good. redis-py marks the
                    # connections of a node its refresh dropped, but a disconnect clears
                    # the mark (its refresh closes a dead node's), hence the topology
                    # too. Given back when the last reference goes (_Lane.__del__): a
                    # bulk call of this thread may hold it now, between its
                    # connections' sends and reads
                    del nodes[name]
            lane = nodes[node.name] = _Lane(self, pool, conn)
            self._await_loads(node.name, pool)
        return lane

    def _node_failed(self, lane: _Lane, args: Sequence[Arg], error: Exception) -> None:
        """After *args* failed with *error* on its node's connection: raise, or return
        when the rule lets it go through ``RedisCluster`` (once): a reply that says
        the node applied nothing (a redirection, a slot on the move, a script the
        node lacks), a connection refused or dropped before sending, an idempotent
        read after a dropped connection. A write whose outcome is unknown raises;
        other error replies are mapped."""
        rule = _rule()
        if isinstance(error, self._response_error):
            if not cluster_unapplied(error):  # a redirection, a slot on the move, NOSCRIPT
                with translate_errors(self._where):
                    raise self._refused(error) from error
        elif isinstance(error, (self._connection_error, rule.redis.TimeoutError)):
            if lane.conn is not None:
                lane.conn.disconnect()
            if isinstance(error, rule.OutcomeUnknown) and (not is_read(args) or _timed_out(error)):
                with translate_errors(self._where):
                    raise error
        else:
            raise error
        _through("%s on %s:%s: %s: %s", _name(args[0]), lane.host, lane.port, type(error).__name__, error)

    def tracked(self, key: str | bytes | None = None) -> bool:
        """Whether the connection that serves *key* (this thread's, or a tracking
        transport's shared one) reports its reads to the live listener (set up for
        its current generation), asked right after this thread's read of *key*:
        ``False`` once after a command of this thread went out on a borrowed
        connection (the kept share full), even if another thread made the key's
        lane since (the read was not tracked: no invalidation will come for it)."""
        listener = self.tracking
        local = self._here()
        if getattr(local, "borrowed", False):
            local.borrowed = False
            return False
        lane: _Lane | None
        if self._shared is not None:
            lane = self._shared[lane_index(key, len(self._shared))]
        else:
            lane = getattr(local, "lane", None)
        if listener is None or lane is None or lane.conn is None or not lane.conn._sock:
            return False
        return lane.tag > 0 and lane.tag == listener.generation

    def close(self) -> None:
        """Give this thread's connection back to the pool (other threads' go back when
        they end)."""
        local = self._here()
        lane: _Lane | None = getattr(local, "lane", None)
        if lane is not None:
            lane.release()
            local.lane = None
        for lane in getattr(local, "nodes", {}).values():
            lane.release()
        local.nodes = {}
        shared = self._shared
        if shared is not None:  # a tracking transport's: closed with the store
            for i in range(len(shared)):
                with self._lane_lock(i):
                    lane, shared[i] = shared[i], None
                    if lane is not None:
                        lane.release()

    # -- commands --------------------------------------------------------------------

    def _send(self, args: Sequence[Arg], lane: _Lane | None = None) -> Any:
        """One command on this thread's connection (a tracking transport: the shared
        one of its key; or *lane*'s): raw reply, error replies raised as redis-py
        exceptions."""
        if lane is None:
            if self._shared is not None:
                i = lane_index(command_key(args), len(self._shared))
                lock = self._lane_lock(i)
                if not lock.acquire(timeout=self._lane_wait):
                    raise lane_busy(self._where, self._lane_wait)
                try:
                    lane = self._shared_lane(i)
                    if lane is None:
                        return self._send_borrowed(args)
                    try:
                        return self._send_on(args, lane)
                    except BaseException:
                        if not lane.conn._sock:  # closed by redis-py (a timeout, an error):
                            lane.forget()  # its copies go now, not at the lane's next command
                        raise
                finally:
                    lock.release()
            lane = self._lane()
            if lane is None:
                return self._send_borrowed(args)
        return self._send_on(args, lane)

    def _send_on(self, args: Sequence[Arg], lane: _Lane) -> Any:
        conn = lane.conn
        lane.freshen(args)
        if getattr(self._client_type.execute_command, "__wrapped__", None) is not None:
            reply = lane.client().execute_command(_name(args[0]), *args[1:])
            lane.last = _monotonic()
            return reply
        start = _monotonic()
        pack = lane.pack
        conn.send_packed_command([pack(args)] if pack is not None else conn.pack_command(*args))
        reply = conn.read_response()
        lane.last = end = _monotonic()
        if METRICS.on():
            # (the address read now, as redis-py does: a failover or a MOVING moves it)
            METRICS.record(_name(args[0]), end - start, lane.host, lane.port, lane.db)
        return reply

    def _fail(self, error: Exception) -> None:
        # a timeout or a dropped connection closed the failed command's connection
        # (redis-py does): the other shared ones stay (a reconnect of each flushed every
        # near copy again); a wrong-node reply sends them all to the new master
        self._drop(shared=isinstance(error, _rule().NotApplied))

    def command(self, *args: Arg) -> Any:
        """Run one Redis command: one round trip, raw reply (see the module
        docstring for Cluster). An idempotent read is sent once more after a dropped
        connection; nothing else is ever sent twice.

        :raises BackendUnavailable: Redis unreachable or timed out, or refusing
            service (read-only replica, loading, cluster down, authentication).
        :raises RedisReplyError: any other error reply (see :meth:`reply_error`).
        """
        if self.direct:
            try:
                return self._send(args)
            except Exception as e:  # the rule and the error map, off the hot path
                return self._recover(args, e)
        if self.cluster_direct:
            lane = self._node_lane(args)
            if lane is not None:
                try:
                    return self._send(args, lane)
                except Exception as e:  # noqa: BLE001 - the rule decides
                    self._node_failed(lane, args, e)
        return self._through_client(args)

    def _recover(self, args: Sequence[Arg], error: Exception, keep: type[Exception] | None = None) -> Any:
        """After the first attempt of *args* on this thread's connection failed with
        *error*: the retry rule (:func:`~statekit.redis.call_with_rule`) and the error
        map (an error reply of type *keep* is raised as redis-py raised it)."""
        with translate_errors(self._where):
            try:
                return call_with_rule(lambda: self._send(args), self._fail, self._retry, read=is_read(args),
                                      error=error)
            except self._response_error as e:
                if keep is not None and isinstance(e, keep):
                    raise
                raise self._refused(e) from e

    def script(self, script: Script, keys: Sequence[str | bytes], args: Sequence[Arg]) -> Any:
        """Run *script* by ``EVALSHA``; on ``NOSCRIPT`` (a restarted or flushed
        server: nothing ran) load it and run it again. One round trip when the
        script is cached. Never sent again once its outcome is unknown. Errors as
        :meth:`command`."""
        evalsha = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        if self.direct:
            try:
                try:
                    return self._send(evalsha)
                except self._no_script:
                    raise
                except Exception as e:  # retried where the rule allows (a failover): the
                    return self._recover(evalsha, e, keep=self._no_script)  # new node may lack it
            except self._no_script:
                self.command(b"SCRIPT", b"LOAD", script.source)
                return self.command(*evalsha)
        if self.cluster_direct:
            lane = self._node_lane(evalsha)
            if lane is not None:
                sent: Sequence[Arg] = evalsha
                try:
                    try:
                        return self._send(evalsha, lane)
                    except self._no_script:  # nothing ran: loaded on every primary, run here
                        sent = (b"SCRIPT", b"LOAD", script.source)
                        owed = self._load_elsewhere(sent, lane)
                        try:
                            self._send(sent, lane)
                            sent = evalsha
                            return self._send(evalsha, lane)
                        finally:
                            self._collect(owed)
                except Exception as e:  # noqa: BLE001 - the rule decides
                    self._node_failed(lane, sent, e)
        with translate_errors(self._where):
            try:
                try:
                    return self._routed_call(evalsha)
                except self._no_script:
                    self.client.script_load(script.source)
                    return self._routed_call(evalsha)
            except self._response_error as e:
                raise self._refused(e) from e

    def _load_elsewhere(self, load: Sequence[Arg], lane: _Lane) -> list[_Lane]:
        """Cluster: send *load* (a ``SCRIPT LOAD`` for *lane*'s node) on this thread's
        open connection to every other primary (:func:`other_primaries`), before the
        caller's own load and command, without reading the replies: returns the
        connections that owe one (:meth:`_collect`). A bulk call's pipelines then find
        the script on each node (:func:`statekit.cache.redis.cluster_batch` sends a
        command answered ``NOSCRIPT`` again alone, and raises before that when another
        node's outcome is unknown). A primary this thread has no connection to yet is
        not connected here (the handshake waits for a paused one, up to the socket
        timeout, on a call that does not need it): its load is sent from a thread of
        its own (:meth:`_load_behind`). Best effort: a node that fails loads it at its
        own ``NOSCRIPT``: a connection that is closed, still owes a reply (a primary
        paused at an earlier load) or is due for a reconnect is left alone, since
        reconnecting waits for a paused primary's handshake."""
        failed = (self._connection_error, self._response_error, _rule().redis.TimeoutError)
        owed = []
        nodes: dict[str, _Lane] = self._here().__dict__.get("nodes", {})
        for node in other_primaries(self.client, f"{lane.host}:{lane.port}"):
            other = nodes.get(node.name)
            if other is None or other.conn is None:
                self._load_behind(node, load)
                continue
            if other is lane:
                continue
            conn, pack = other.conn, other.pack
            if conn._sock is None or conn._statekit_unread or other.stale or other.marked():
                continue
            packed = [pack(load)] if pack is not None else conn.pack_command(*load)
            with contextlib.suppress(*failed):
                conn.send_packed_command(packed, False)  # (no health check: it would wait for the reply)
                owed.append(other)
        return owed

    def _load_behind(self, node: Any, load: Sequence[Arg]) -> None:
        """Cluster: send *load* to *node*, a primary this thread has no connection to,
        from a thread of its own through the node's client (redis-py's, as
        ``RedisCluster`` runs it): connecting waits for the node's handshake, a paused
        one's up to the socket timeout, which a call to another node must not wait
        for. Its connection takes a place of the node's kept share
        (:func:`kept_share`), as the connection a thread keeps there would, or the
        load is not sent: the connections outside that share are the turns of the
        client's gate (:class:`~statekit.redis.ClusterGate`), which a caller in a turn
        counts on finding free (taken outside one, it waited in the node's pool for
        the load's); a turn held by the load instead would keep every caller of the
        client waiting while a paused primary's handshake hangs. One load per node and
        script at a time; its failures are dropped (the node loads the script at its
        own ``NOSCRIPT``). A thread's first connection to
        *node* waits for the load to end (:meth:`_await_loads`), so its first bulk
        call's pipeline there finds the script as one sent on a connection it had."""
        key = (node.name, load[-1])
        with self._loads_lock:
            if key in self._loads:
                return
            done = self._loads[key] = threading.Event()

        def run() -> None:
            try:
                redis_node = self.client.get_redis_connection(node)
                pool = redis_node.connection_pool
                if not _KEPT.take(pool):
                    _log.debug("Cluster: a script load on %s not sent: its pool's kept share is in use",
                               node.name)
                    return
                try:
                    redis_node.execute_command(*load)
                finally:
                    _KEPT.give(pool)
            except Exception as e:  # noqa: BLE001 - best effort (the docstring)
                _log.debug("Cluster: a script load on %s failed: %s: %s", node.name, type(e).__name__, e)
            finally:
                done.set()
                with self._loads_lock:
                    if self._loads.get(key) is done:
                        del self._loads[key]

        threading.Thread(target=run, name=f"statekit-script-load-{node.name}", daemon=True).start()

    def _await_loads(self, name: str, pool: Any) -> None:
        """Wait for the loads :meth:`_load_behind` sends to the node named *name* (at
        most the socket timeout of *pool*, the node's, each): called as this thread
        connects to the node, after the handshake, so only a caller that talks to that
        node waits, and not twice for a paused one."""
        with self._loads_lock:
            pending = [done for (node, _), done in self._loads.items() if node == name]
        for done in pending:
            done.wait(lane_wait(pool))

    def _collect(self, owed: list[_Lane]) -> None:
        """Read the replies of :meth:`_load_elsewhere`'s loads that have come, without
        waiting for any (a paused primary's): a reply not there yet is left unread,
        and its connection is dropped before its next command (:meth:`_Lane.freshen`),
        so it is never read as another command's."""
        failed = (self._connection_error, self._response_error, _rule().redis.TimeoutError, OSError)
        for other in owed:
            conn = other.conn
            with contextlib.suppress(*failed):
                if conn is not None and conn._sock is not None and conn._statekit_unread \
                        and conn.can_read(timeout=0):
                    conn.read_response()

    def _routed_call(self, args: Sequence[Arg]) -> Any:
        # RedisCluster finds a script's slot from its keys by the command's name
        return call_with_rule(lambda: _routed(self.client.execute_command, _name(args[0]), *args[1:]), _noop)

    def _through_client(self, args: Sequence[Arg]) -> Any:
        """*args* through the client's own ``execute_command`` (``RedisCluster``
        routing, or a client whose pool the transport does not drive), under the rule
        (an idempotent read once more after a dropped connection) and the error map."""
        with translate_errors(self._where):
            try:
                return call_with_rule(lambda: _routed(self.client.execute_command, _name(args[0]), *args[1:]),
                                      _noop, read=is_read(args))
            except self._response_error as e:
                raise self._refused(e) from e


def _through(why: str, *detail: Any) -> None:
    """Log (``statekit.redis``, debug) why a Cluster command whose key is known goes
    through ``RedisCluster`` instead of its node's connection. Off the hot path: only
    a command that falls back calls it."""
    _log.debug("Cluster: through RedisCluster: " + why, *detail)


def _noop(error: Exception) -> None:
    """Nothing to drop: redis-py's client dropped its connection itself."""


def _routed(execute: Callable[..., Any], *args: Any) -> Any:
    """``RedisCluster.execute_command(*args)``, once more after a moment when redis-py's
    cluster client fails before sending because a reshard dropped a node's connection
    under it (:func:`~statekit.redis.cluster_client_glitch`: nothing was sent)."""
    try:
        return execute(*args)
    except AttributeError as e:
        if not cluster_client_glitch(e):
            raise
        time.sleep(0.05)
        return execute(*args)


