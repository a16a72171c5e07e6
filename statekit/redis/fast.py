"""A pool-free Redis fast path shared by the cache and the session store.

redis-py's connection pool costs more than a round trip to a Redis on the same host:
checking a connection out and in takes locks, runs health checks and builds reply
objects. :class:`FastTransport` skips it on plain TCP and unix-socket clients: each
thread keeps one dedicated socket (:class:`_FastConnection`) with a hiredis reply
parser (a pure-Python RESP2 reader when ``hiredis`` is not installed), so a command
costs one ``sendall`` and one ``recv``.

**When it applies.** Only for a standalone ``redis.Redis`` over ``redis.Connection``
or ``redis.UnixDomainSocketConnection`` speaking RESP2, without a credential
provider and without ``decode_responses``. Cluster, Sentinel, TLS and RESP3 clients
go through redis-py (its redirection, failover and TLS handling), with the same
error mapping, so callers need not care which path served them.

**Concurrency.** One socket per thread (a ``threading.local``): threads never share
a socket, so no locking is needed and a slow reply on one thread never delays
another. A thread's socket is closed when the thread ends. After ``fork()`` the
child drops every inherited socket (``os.register_at_fork``) and opens its own on
first use, so a gunicorn worker never shares a reply stream with its parent.

**Failures.** Every send and receive is bounded by the client's ``socket_timeout``
and every connect by its ``socket_connect_timeout`` (enforced by the kernel). The
retry rule is the one of :mod:`statekit.redis`: before a command is sent on
a socket that has been idle, the socket is checked (a non-blocking peek) and, if the
server closed it (Redis restarted, idle timeout), replaced: nothing was sent, so
nothing is lost or doubled. Once a command went out, a timeout, a reset or any other
socket error closes the socket and raises :class:`~statekit.errors.BackendUnavailable`
(the reply stream is out of step, so the socket is never reused) and the command is
never sent again, except an idempotent read after a dropped connection (once).
Error replies that mean "not now" or "wrong node" (``READONLY``, also inside a
script error; ``LOADING``, ``MASTERDOWN``, ``CLUSTERDOWN``, ``TRYAGAIN``) and
authentication failures (``NOAUTH``, ``WRONGPASS``, ``unauthenticated multibulk
length``) raise ``BackendUnavailable`` and drop the socket (the next call connects
anew, to whatever the address now names); other error replies raise
:class:`RedisReplyError` (or what a subclass's :meth:`FastTransport.reply_error`
returns).
"""

from __future__ import annotations

import hashlib
import math
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .._fork import reset_in_child
from ..errors import BackendUnavailable, StatekitError
from . import (
    IDEMPOTENT_READS,
    Problem,
    RedisClient,
    is_cluster,
    outcome_unknown,
    reply_problem,
    translate_errors,
    unavailable,
    with_rule,
)

__all__ = [
    "SPIN_SECONDS",
    "FastTransport",
    "RedisReplyError",
    "SharedConnection",
    "fast_params",
    "make_reader",
    "pack_command",
    "script_sha",
]

Arg = bytes | str | int | float


class RedisReplyError(StatekitError):
    """Redis answered a command with an error reply (a bug or a wrong type, not an
    outage: outages raise :class:`~statekit.errors.BackendUnavailable`)."""



def script_sha(source: str) -> bytes:
    """The SHA1 Redis names the Lua script *source* by (for ``EVALSHA``)."""
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()


def _pack_python(args: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _pack_any(args: Sequence[Any]) -> bytes:
    return _pack_python([a if isinstance(a, bytes) else str(a).encode() for a in args])


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound every send and receive on *sock* by *seconds*.

    On Linux the kernel enforces it (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking
    socket): a round trip is then two system calls, where Python's own socket
    timeout adds a ``poll()`` before each. A timeout raises ``BlockingIOError``."""
    seconds = max(seconds, 0.001)  # a zero timeval would mean "wait for ever"
    if sys.platform.startswith("linux"):
        tv = struct.pack("@ll", int(seconds), int((seconds % 1) * 1_000_000))
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            return
        except OSError:  # pragma: no cover - fall back to Python's timeout
            pass
    sock.settimeout(seconds)


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_poll: Any = getattr(select, "poll", None)
_allocate_lock = threading.Lock
_perf = time.perf_counter
#: how long a call polls for the reply before it blocks (see _FastConnection)
SPIN_SECONDS = 60e-6
#: a socket idle for longer is checked before a command is sent on it
STALE_CHECK_AFTER = 0.001


class _CpuPressure:
    """Whether this machine has more runnable tasks than CPUs, from the kernel's
    instantaneous count in ``/proc/loadavg``, sampled at most every 20 ms and
    smoothed. Busy-polling then only takes CPU time from the processes that would
    answer (Redis, the other workers), so :class:`_FastConnection` blocks instead.
    Always ``False`` where ``/proc/loadavg`` does not exist."""

    __slots__ = ("avg", "busy", "cpus", "next", "path")

    def __init__(self, path: str = "/proc/loadavg") -> None:
        self.path = path
        try:
            self.cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            self.cpus = os.cpu_count() or 1
        self.avg = 0.0
        self.busy = False
        self.next = 0.0 if os.path.exists(path) else math.inf

    def __call__(self) -> bool:
        t = _perf()
        if t < self.next:
            return self.busy
        self.next = t + 0.02
        try:
            with open(self.path, "rb") as f:
                running = int(f.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):  # pragma: no cover
            self.next = math.inf
            return False
        # the sampling thread is one of the running tasks
        self.avg = 0.6 * self.avg + 0.4 * (running - 1)
        self.busy = self.avg >= self.cpus
        return self.busy


_cpu_pressure = _CpuPressure()


class _FastConnection:
    """One socket and one reply parser, used by one thread only.

    After sending a command it first polls the socket without blocking a few times
    (adaptive busy-polling): a Redis on the same host or LAN usually answers within
    those microseconds, and the thread is spared a sleep and a scheduler wake-up,
    which on virtual machines costs more than the round trip itself. It does not
    poll while the machine has more runnable tasks than CPUs (the spin would take
    CPU time from Redis and the other workers). After 16
    replies in a row slower than the spin (a distant Redis) it stops spinning, and
    probes again every 1024 calls.

    ``AUTH`` and ``SELECT`` (when the client has a password or a non-zero db) are sent
    once, when the socket is opened."""

    __slots__ = ("calls", "last", "misses", "poller", "reader", "sock", "spin", "spin_seconds", "tag")

    def __init__(self, params: Mapping[str, Any], reader_factory: Any,
                 spin_seconds: float = SPIN_SECONDS) -> None:
        self.spin_seconds = spin_seconds
        timeout = params.get("socket_connect_timeout") or params.get("socket_timeout") or 1.0
        path = params.get("path")
        try:
            if path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((params["host"], params["port"]), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise BackendUnavailable(f"cannot connect to Redis: {e}") from e
        _set_timeout(sock, params.get("socket_timeout") or 1.0)
        self.sock = sock
        self.reader = reader_factory()
        self.spin = bool(_DONTWAIT) and spin_seconds > 0
        self.calls = self.misses = 0
        self.last = _perf()  # when the last reply came (see stale())
        self.poller: Any = None
        if _poll is not None:
            self.poller = _poll()
            self.poller.register(sock, select.POLLIN)
        self.tag = 0  # what a FastTransport subclass set up on this socket (tracking)
        if params.get("password"):
            auth = ["AUTH", params["password"]]
            if params.get("username"):
                auth.insert(1, params["username"])
            self._checked(auth)
        if params.get("db"):
            self._checked(["SELECT", str(params["db"])])

    def _checked(self, args: list[str]) -> None:
        try:
            reply = self.call(_pack_python([a.encode() for a in args]))
        except OSError:
            self.close()
            raise
        if isinstance(reply, Exception):
            self.close()
            problem = "authentication" if args[0] == "AUTH" else reply_problem(str(reply))
            raise unavailable(f"connection setup ({args[0]})", str(reply), problem)

    def stale(self) -> bool:
        """Whether the server closed this socket while it was idle (or left bytes
        nobody asked for): checked before a command is sent on a socket idle for
        more than :data:`STALE_CHECK_AFTER`, so a restarted Redis or an idle timeout
        costs no failed call and no command is sent twice. One ``poll()`` with no
        wait: an idle socket has nothing to read unless the server closed it (or, out
        of step, sent bytes nobody asked for)."""
        if self.poller is None or _perf() - self.last < STALE_CHECK_AFTER:
            return False
        return bool(self.poller.poll(0))

    def call(self, packed: bytes) -> Any:
        """Send *packed* and return the reply (an error reply is returned, not
        raised). Socket errors propagate as ``OSError``."""
        self.sock.sendall(packed)
        return self.read_reply()

    def read_reply(self) -> Any:
        """Wait for the next reply (polling first, see the class docstring). Expects
        no complete reply in :attr:`reader` yet (pipelining callers check first)."""
        sock = self.sock
        reader = self.reader
        if self.spin and not _cpu_pressure():
            recv = sock.recv
            deadline = _perf() + self.spin_seconds
            while True:
                try:
                    data = recv(65536, _DONTWAIT)
                except BlockingIOError:
                    if _perf() < deadline:
                        continue
                    self.misses += 1  # the reply is slower than a spin
                    if self.misses >= 16:
                        self.spin = False
                        self.calls = 0
                    break
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                reader.feed(data)
                self.misses = 0
                break
        else:
            self.calls += 1
            if self.calls >= 1024 and _DONTWAIT and self.spin_seconds > 0:  # probe: is Redis close again?
                self.spin = True
                self.misses = 8
        reply = reader.gets()
        while reply is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
        self.last = _perf()
        return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass

    def __del__(self) -> None:  # the owning thread ended: no unclosed-socket warning
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()


class _Waiter:
    """A command in flight on a :class:`SharedConnection`.

    A thread that must sleep blocks on :attr:`lock`, a plain lock used as a
    one-shot signal (cheaper than ``threading.Event``): it is held while the thread
    is :attr:`armed`, and whoever wakes the thread releases it, once, under the
    connection's state lock. A waiter whose thread was interrupted while waiting is
    :attr:`abandoned`: its reply is still taken off the socket (the stream stays in
    step), but it is never handed the lead."""

    __slots__ = ("abandoned", "armed", "done", "error", "lock", "reply")

    def __init__(self) -> None:
        self.done = False
        self.reply: Any = None
        self.error: BaseException | None = None
        self.lock: Any = None  # made only if the thread must sleep
        self.armed = False
        self.abandoned = False

    def wake(self) -> None:
        """Wake the thread if it sleeps (under the connection's state lock)."""
        if self.armed:
            self.armed = False
            self.lock.release()


class SharedConnection:
    """One :class:`_FastConnection` shared by all threads of a process, pipelined.

    A thread queues itself and sends its command under a short lock, then waits for
    its reply. Replies come back in the order the commands were sent: whichever
    waiting thread holds the read lock (the leader) takes them off the socket and
    hands each to its thread; once it has its own, it passes the lead to the oldest
    thread still waiting. So one thread's round trip never holds the other threads'
    commands back (as a lock around the whole call would: measured, 4 threads then
    ran slower on one socket than on four), while the process keeps a single
    connection, and what Redis ties to a connection (``CLIENT TRACKING ...
    NOLOOP``) holds for all its threads.

    Any failure that may put the reply stream out of step with the queue (a socket
    error, a parser error, an exception such as ``KeyboardInterrupt`` landing while a
    command is being queued, sent or handed its reply) fails every command in flight
    (as an ``OSError``, like :meth:`_FastConnection.call`), shuts the socket and
    marks the connection :attr:`broken`; callers open a new one. A reply is never
    handed to the wrong thread."""

    __slots__ = ("_queue", "_read", "_send", "_state", "broken", "conn", "rechecks")

    #: a waiting thread re-checks at least this often (a safety net: hand-offs wake it)
    RECHECK = 0.05

    def __init__(self, conn: _FastConnection) -> None:
        self.conn = conn
        self.broken: OSError | None = None
        self.rechecks = 0
        self._queue: deque[_Waiter] = deque()
        self._send = threading.Lock()
        self._read = threading.Lock()
        self._state = threading.Lock()  # the queue, the waiters' flags, broken

    def call(self, packed: bytes) -> Any:
        """Send *packed* and return its reply (error replies returned, not raised).

        :raises OSError: the socket failed (now or for a command sent before)."""
        me = _Waiter()
        with self._send:
            try:
                with self._state:  # so a failure either fails this waiter or is seen here
                    if self.broken is not None:
                        raise ConnectionResetError(f"shared Redis connection failed: {self.broken}")
                    self._queue.append(me)  # before sending: its reply may be read at once
                self.conn.sock.sendall(packed)
            except BaseException as e:
                if not me.done and me not in self._queue:  # nothing queued: nothing out of step
                    raise
                if not isinstance(e, OSError):  # queued, maybe not (wholly) sent: out of step
                    self._fail(ConnectionAbortedError(f"send abandoned: {e!r}"))
                    raise
                self._fail(e)  # this waiter fails with it, below
        try:
            while not me.done:
                if self._read.acquire(blocking=False):
                    try:
                        self._lead(me)
                    finally:
                        self._read.release()
                        self._pass_lead()
                else:
                    self._sleep(me)
        except BaseException:
            with self._state:  # interrupted while waiting: never hand it the lead again
                me.abandoned = True
            self._pass_lead()
            raise
        if me.error is not None:
            raise me.error
        return me.reply

    def _lead(self, me: _Waiter) -> None:
        """Read replies in order and hand them out until *me* has its own (and those
        that came in the same reads)."""
        conn, queue, state = self.conn, self._queue, self._state
        reader = conn.reader
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    if me.done:  # and the replies already read are handed out
                        return
                    reply = conn.read_reply()
                with state:
                    if not queue:  # failed meanwhile
                        return
                    # in this order, an interrupt anywhere leaves the waiter either
                    # undone on the queue or done (_fail then fails or wakes it)
                    w = queue[0]
                    w.reply = reply
                    w.done = True
                    w.wake()
                    queue.popleft()
        except OSError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001 - a parser error: the stream is out of step
            self._fail(ConnectionAbortedError(f"unreadable reply from Redis: {e!r}"))
        except BaseException as e:  # an interrupt: the stream is out of step
            self._fail(ConnectionAbortedError(f"reply stream abandoned: {e!r}"))
            raise

    def _pass_lead(self) -> None:
        with self._state:
            for w in self._queue:
                if not w.abandoned:
                    w.wake()
                    return

    def _sleep(self, me: _Waiter) -> None:
        with self._state:
            # the leader may have let go before this thread was armed to be woken
            # (_pass_lead runs under this lock, after the read lock is released)
            if me.done or not self._read.locked():
                return
            lock = me.lock
            if lock is None:
                lock = me.lock = _allocate_lock()
                lock.acquire()  # held while armed: the sleep below blocks on it
            me.armed = True
        if not lock.acquire(True, self.RECHECK):
            with self._state:
                if me.armed:  # nobody woke it: still held
                    me.armed = False
                    self.rechecks += 1  # should stay 0 (tests check)
                else:  # woken just after the timeout: take the lock back (at once)
                    lock.acquire()

    def _fail(self, error: OSError) -> None:
        with self._state:
            if self.broken is None:
                self.broken = error
            for w in self._queue:
                if not w.done:  # a done one was handed its reply when interrupted
                    w.error = error
                    w.done = True
                w.wake()
            self._queue.clear()
        try:  # wakes a leader blocked in recv at once (close alone would not)
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()

    def close(self) -> None:
        """Close the socket (commands in flight fail)."""
        self._fail(ConnectionResetError("connection closed"))

    def stale(self) -> bool:
        """:meth:`_FastConnection.stale`, checked only while no command is in flight;
        a stale connection is marked :attr:`broken` (callers open a new one)."""
        conn = self.conn
        if conn.poller is None or _perf() - conn.last < STALE_CHECK_AFTER:
            return False
        with self._send:  # nothing can be queued meanwhile
            if self._queue or self.broken is not None or not conn.stale():
                return False
        self._fail(ConnectionResetError("Redis closed the idle connection"))
        return True


class _ReplyError(Exception):
    pass


class _PyReader:
    """A minimal RESP2 reader, used when hiredis is not installed."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def gets(self) -> Any:
        try:
            value, pos = self._parse(0)
        except IndexError:
            return False
        del self.buf[:pos]
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self.buf.find(b"\r\n", pos)
        if end < 0:
            raise IndexError
        return bytes(self.buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self.buf):
            raise IndexError
        line, nxt = self._line(pos)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest, nxt
        if kind == b"-":
            return _ReplyError(rest.decode(errors="replace")), nxt
        if kind == b":":
            return int(rest), nxt
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None, nxt
            if len(self.buf) < nxt + size + 2:
                raise IndexError
            return bytes(self.buf[nxt : nxt + size]), nxt + size + 2
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None, nxt
            items = []
            for _ in range(count):
                item, nxt = self._parse(nxt)
                items.append(item)
            return items, nxt
        raise BackendUnavailable(f"unexpected reply from Redis: {line[:40]!r}")


try:
    import hiredis

    #: a RESP reply parser (``feed(bytes)``, ``gets()`` -> reply or ``False``)
    make_reader: Any = hiredis.Reader
    #: encode one command (a tuple of str/bytes/int) as RESP
    pack_command: Any = hiredis.pack_command
except ImportError:  # pragma: no cover - hiredis is optional (pip install 'statekit[hiredis]')
    make_reader = _PyReader
    pack_command = _pack_any


def fast_params(client: Any) -> dict[str, Any] | None:
    """The connection parameters of *client* if the fast path can serve it (a
    standalone RESP2 client over TCP or a unix socket, bytes replies), else ``None``."""
    if is_cluster(client):
        return None
    import redis

    get_encoder = getattr(client, "get_encoder", None)
    if get_encoder is not None and get_encoder().decode_responses:
        return None
    pool = getattr(client, "connection_pool", None)
    plain = (redis.Connection, redis.UnixDomainSocketConnection)
    if pool is None or pool.connection_class not in (*plain, *map(with_rule, plain)):
        return None
    kw = pool.connection_kwargs
    if kw.get("credential_provider") or kw.get("protocol") in (3, "3"):
        return None
    return {k: kw.get(k) for k in ("host", "port", "path", "db", "username", "password",
                                   "socket_timeout", "socket_connect_timeout")}


def _timed_out(exc: BaseException | None) -> bool:
    import redis

    while exc is not None:
        if isinstance(exc, (redis.TimeoutError, TimeoutError)):
            return True
        exc = exc.__cause__
    return False


class FastTransport:
    """Commands and scripts for one redis-py *client*, through a per-thread socket
    when the fast path applies (see the module docstring), else through *client*.

    :param client: a redis-py client (any kind); kept as :attr:`client` for what the
        fast path does not cover (pipelines, pub/sub).
    :param fast_path: ``False`` sends everything through redis-py.
    :param what: names the caller in error messages (``"cache"``, ``"session"``).
    :param reader_factory: the reply parser class (default :data:`make_reader`).
    :param pack: the command encoder (default :data:`pack_command`).
    :param spin: how long a call polls for the reply before blocking (seconds; ``0``
        never polls). Longer pays off for callers that make one call per web request:
        Redis has then been idle and needs 50-150 us to wake up on virtual machines.

    Safe to share between threads (each gets its own socket) and across ``fork()``.
    """

    def __init__(self, client: RedisClient, *, fast_path: bool = True, what: str = "Redis",
                 reader_factory: Any = None, pack: Any = None, spin: float = SPIN_SECONDS) -> None:
        self.client = client
        self.spin = spin
        self.cluster = is_cluster(client)
        self.what = what
        self.fast_params = fast_params(client) if fast_path else None
        self._reader_factory: Any = reader_factory or make_reader
        self._pack: Any = pack or pack_command
        self._local = threading.local()
        reset_in_child(self)

    # -- error mapping -------------------------------------------------------------

    def reply_error(self, message: str) -> Exception:
        """The exception to raise for the Redis error reply *message* (an error of the
        command: replies about the server are mapped before, see :meth:`_refused`).
        Subclasses override it to map errors to their own types."""
        return RedisReplyError(f"Redis refused a {self.what} command: {message}")

    # -- the fast path ---------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """Forget the parent's sockets (called in a forked child)."""
        self._local = threading.local()

    def _existing(self) -> _FastConnection | SharedConnection | None:
        """The socket this thread's call would use, if one is open (it may be stale)."""
        conn: _FastConnection | None = getattr(self._local, "conn", None)
        return conn

    def _fast(self) -> _FastConnection | SharedConnection:
        """The socket for this thread's call, opened if needed."""
        conn: _FastConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self.fast_params is not None
            conn = self._local.conn = _FastConnection(self.fast_params, self._reader_factory, self.spin)
        return conn

    def _drop_fast(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def fast_call(self, packed: bytes, *, read: bool = False) -> Any:
        """Send a packed command on this thread's socket and return the reply (an
        error reply is returned, not raised). Only valid when :attr:`fast_params` is
        set.

        The retry rule (:mod:`statekit.redis`): an idle socket the server
        closed is replaced before anything is sent; once the command went out, any
        failure closes the socket and raises
        :class:`~statekit.errors.BackendUnavailable` without sending it again, except
        a *read* (an idempotent command) after the connection dropped: once.

        :param read: the command only reads (see
            :data:`~statekit.redis.IDEMPOTENT_READS`).
        """
        conn = self._existing()
        if conn is not None and conn.stale():
            self._drop_fast()  # closed while idle: nothing was sent on it
        retried = False
        while True:
            try:
                return self._fast().call(packed)
            except BackendUnavailable:  # could not connect: nothing was sent
                self._drop_fast()
                raise
            except OSError as e:  # timeouts included: the reply stream is out of step
                self._drop_fast()
                if read and not retried and isinstance(e, ConnectionError):
                    retried = True  # an idempotent read after a dropped connection: once
                    continue
                raise BackendUnavailable(
                    f"Redis did not answer a {self.what} call (it may or may not have been "
                    f"applied; not sent again): {e}"
                ) from e
            except BaseException:
                # interrupted (a signal handler's exception, a time limit) between send
                # and reply: the socket is a reply behind, and its next command would
                # read this one's reply
                self._drop_fast()
                raise

    def _refused(self, message: str) -> Exception:
        """The exception for the error reply *message*: the error map's
        ``BackendUnavailable`` for a reply about the server (the socket is dropped
        after a wrong-node or authentication reply), else :meth:`reply_error`."""
        problem: Problem | None = reply_problem(message)
        if problem is None:
            return self.reply_error(message)
        if problem != "not now":
            self._drop_fast()
        return unavailable(f"a {self.what} call", message, problem)

    # -- commands and scripts ---------------------------------------------------------

    def command(self, *args: Arg) -> Any:
        """Run one Redis command: one round trip. Replies are raw RESP values on the
        fast path; through redis-py its reply callbacks apply (``HGETALL`` gives a
        dict there, a flat list here). An idempotent read is sent once more after a
        dropped connection; nothing else is ever sent twice.

        :raises BackendUnavailable: Redis unreachable or timed out, or refusing
            service (read-only replica, loading, cluster down, authentication).
        :raises RedisReplyError: any other error reply (see :meth:`reply_error`).
        """
        name = args[0] if isinstance(args[0], bytes) else str(args[0]).encode()
        read = name.upper() in IDEMPOTENT_READS
        if self.fast_params is not None:
            reply = self.fast_call(self._pack(args), read=read)
            if isinstance(reply, Exception):
                raise self._refused(str(reply))
            return reply
        try:
            return self._redis_py(lambda client: client.execute_command(name.decode(), *args[1:]))
        except BackendUnavailable as e:
            if not (read and outcome_unknown(e) and not _timed_out(e)):
                raise
        return self._redis_py(lambda client: client.execute_command(name.decode(), *args[1:]))

    def _redis_py(self, call: Any) -> Any:
        """``call(client)`` through redis-py, errors mapped as on the fast path."""
        import redis

        with translate_errors(f"a {self.what} call"):
            try:
                return call(self.client)
            except redis.exceptions.ResponseError as e:
                code = getattr(e, "status_code", None)
                message = f"{code} {e}" if code and not str(e).startswith(code) else str(e)
                if reply_problem(message) is not None or isinstance(e, redis.exceptions.ReadOnlyError):
                    raise  # the error map's (translate_errors)
                raise self.reply_error(message) from e

    def script(self, sha: bytes, source: str, keys: Sequence[str | bytes], args: Sequence[Arg]) -> Any:
        """Run the Lua script *source* (SHA1 *sha*, see :func:`script_sha`) by
        ``EVALSHA``; on ``NOSCRIPT`` (a restarted or flushed server) load it and run it
        again. One round trip when the script is cached. Never sent again once its
        outcome is unknown. Errors as :meth:`command`."""
        if self.fast_params is not None:
            packed = self._pack((b"EVALSHA", sha, len(keys), *keys, *args))
            reply = self.fast_call(packed)
            if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
                loaded = self.fast_call(self._pack((b"SCRIPT", b"LOAD", source)))
                if isinstance(loaded, Exception):
                    raise self._refused(str(loaded))
                reply = self.fast_call(packed)
            if isinstance(reply, Exception):
                raise self._refused(str(reply))
            return reply
        import redis

        def run(client: Any) -> Any:
            try:
                return client.evalsha(sha.decode(), len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                client.script_load(source)
                return client.evalsha(sha.decode(), len(keys), *keys, *args)

        return self._redis_py(run)

    def close(self) -> None:
        """Close this thread's socket (other threads' close when they end)."""
        self._drop_fast()
