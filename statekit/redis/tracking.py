"""Redis client-side caching: the invalidation listener, on redis-py connections.

One background thread keeps a dedicated redis-py connection per server (RESP2,
redirect mode) that runs ``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX
<prefix> [PREFIX ...]`` (:meth:`InvalidationListener.track` adds a prefix: the
thread reconnects to add it; a cache on Cluster without a near cache tracks only
its generation counters this way) (or, with ``bcast=False``, nothing: data connections opt in with ``CLIENT
TRACKING on REDIRECT <id>``, see :class:`~statekit.redis.transport.Transport`) and
then ``SUBSCRIBE __redis__:invalidate``. From then on every write, delete, expiry or
eviction of a tracked key, by any client anywhere, sends the key name here, and the
entry is dropped from the near cache registered for its namespace.

**Refused set-up.** A server that refuses the listener (its ACL: ``CLIENT ID``,
``CLIENT TRACKING``, ``SUBSCRIBE`` or the channel ``__redis__:invalidate``, as Redis
7 and Valkey give a new user no channel; or the command renamed or disabled) leaves
the near caches off, their reads going to Redis; the thread logs it once (a warning
naming the command, and for an ACL the user and what to grant) and keeps asking, as
after a drop, so a grant turns them on.

**Routing is a lookup, not a scan.** A cache namespace's keys start with its base
``<prefix>:{<namespace>}:``; an invalidated key is cut after its first ``}:`` and the
base looked up in a dict: one lookup whatever the number of namespaces. Bases of
another shape (a session store's ``<prefix>:session:``) are found by one lookup per
distinct base length among them. :attr:`InvalidationListener.visits` counts lookups.

**Namespaces are held weakly.** A near cache that nobody else holds (its cache was
dropped) is unregistered by its own finalizer, so a process that makes and drops
namespaces keeps no memory for them.

**Lag.** :meth:`InvalidationListener.pending` says whether invalidations have
reached this process that the thread has not applied yet (bytes waiting on a
listener connection, one zero-timeout ``poll``, or messages being applied). It costs
one system call and takes no lock: callers check it before serving a near copy and
read from Redis instead while it is ``True`` (the session store and
:class:`~statekit.cache.Cache` do). :attr:`InvalidationListener.counter_changes`
counts the applied invalidations of cache generation counters (keys ending in
``}:gen``) and flushes: the Cluster cache trusts the generation it read only while
that count and :attr:`InvalidationListener.generation` are unchanged.

Coherence: near caches are active only while the listener is connected; a drop, a
fork or :meth:`InvalidationListener.stop` flushes and deactivates them
(:meth:`InvalidationListener.ensure_running` after a stop starts a new thread: a
closed cache used again gets its near cache back, flushed, once it is connected). On Sentinel
the listener follows the master (the address is re-checked every *follow*
seconds). On Cluster it keeps one connection per node, replicas included
(:func:`cluster_nodes`: a replica sends the invalidations of the writes it
replicates, so a promoted replica was listened to before its first write), and
re-reads ``CLUSTER NODES`` every :data:`CLUSTER_FOLLOW` seconds: a node added,
removed or failed makes it reconnect to the new set (flushing the near caches).
A lost node's connection fails at once, which flushes and deactivates the near
caches until every node is reachable again or marked failed: during a failover
reads go to Redis. A node added to the cluster is listened to within
:data:`CLUSTER_FOLLOW` seconds; slots moved to it sooner than that could leave a
near copy of one of their keys without invalidations until then (``redis-cli
--cluster add-node`` and ``reshard`` are separate steps). The connections take TLS,
ACL/credential providers and timeouts from the client's own connection settings.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._fork import reset_in_child
from ..errors import BackendUnavailable
from . import PermissionRefused, acl_user, is_cluster, reply_problem, unavailable

__all__ = ["CLUSTER_FOLLOW", "InvalidationListener", "cluster_nodes", "endpoints_of", "unpooled_connection"]

_log = logging.getLogger("statekit.redis")

#: seconds between two checks of a Redis Cluster's nodes by the listener (a node added,
#: removed or failed: the listener reconnects to the new set)
CLUSTER_FOLLOW = 1.0

#: connection options of the client that the listener's own connection does not take
_NOT_FOR_LISTENER = ("connection_class", "connection_pool", "ssl", "retry", "protocol",
                     "health_check_interval", "cache", "cache_config", "maint_notifications_config",
                     "maint_notifications_pool_handler", "event_dispatcher", "max_connections")


def endpoints_of(client: Any) -> list[dict[str, Any]]:
    """Where an invalidation connection for *client* must connect now: the
    connection options of each master (Cluster), of the master Sentinel names, or of
    the server; ``ssl`` says whether to use TLS."""
    import redis

    if is_cluster(client):
        kw = dict(client.nodes_manager.connection_kwargs)
        kw["ssl"] = bool(kw.get("ssl")) or issubclass(kw.get("connection_class", object), redis.SSLConnection)
        return [{**kw, "host": host, "port": port} for host, port in cluster_nodes(client)]
    pool = client.connection_pool
    kw = dict(pool.connection_kwargs)
    kw["ssl"] = issubclass(pool.connection_class, redis.SSLConnection)
    if hasattr(pool, "get_master_address"):  # Sentinel
        host, port = pool.get_master_address()
        kw.update(host=host, port=port)
    return [kw]


def cluster_nodes(client: Any) -> list[tuple[str, int]]:
    """Every node a Redis Cluster knows now (``CLUSTER NODES``), replicas and masters
    without slots included, but not the ones it marked failed: (host, port), sorted.

    The listener listens to all of them: a replica sends the invalidations of the
    writes it replicates, so when it is promoted the near caches miss nothing, and a
    node added to the cluster is listened to before slots move to it.

    A node that never met another (a one-node cluster) lists itself without a host
    (``:6379``): its host is then the one redis-py's client knows for that port (as
    redis-py does, from the address it was given)."""
    known = {int(n.port): n.host for n in client.get_nodes()}
    out = set()
    for addr, info in client.cluster_nodes().items():
        flags = set(str(info.get("flags", "")).split(","))
        if flags & {"fail", "noaddr", "handshake"}:
            continue
        host, _, port = str(addr).rpartition(":")
        host = host or known.get(int(port), "")
        if host:
            out.add((host, int(port)))
    return sorted(out)


def unpooled_connection(ep: dict[str, Any], timeout: float) -> Any:
    """A redis-py connection (not pooled) for the endpoint options *ep* (an
    :func:`endpoints_of` entry): the listener's, and a broadcast subscriber's."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kw = {k: v for k, v in ep.items() if k not in _NOT_FOR_LISTENER and v is not None}
    kw.update(socket_timeout=timeout, protocol=2, retry=Retry(NoBackoff(), 0))  # type: ignore[no-untyped-call]
    kw.setdefault("socket_connect_timeout", timeout)
    if kw.get("path"):
        kw.pop("host", None)
        kw.pop("port", None)
        unix: Any = redis.UnixDomainSocketConnection
        return unix(**kw)
    kw.pop("path", None)
    cls: Any = redis.SSLConnection if ep.get("ssl") else redis.Connection
    return cls(**kw)


class _SetupRefused(BackendUnavailable):
    """The server answered a listener set-up command with an error reply."""


def _refusal(conn: Any, what: str, error: Exception) -> BackendUnavailable:
    """The error for the error reply *error* to a tracking set-up command (*what*)
    on the redis-py connection *conn* (``None``: through a client): the ACL's (naming
    its user), or a command renamed or disabled."""
    if reply_problem(str(error)) == "permission":
        # (no connection: the user is unknown; the message names it on Redis 7+ and Valkey)
        return unavailable(what, str(error), "permission", acl_user(conn))
    return _SetupRefused(f"Redis refused {what}: {error} (renamed or disabled? a near cache needs "
                         "CLIENT ID, CLIENT TRACKING and SUBSCRIBE)")


def _call(conn: Any, *args: Any) -> Any:
    conn.send_command(*args)
    try:
        return conn.read_response()
    except Exception as e:
        import redis

        if isinstance(e, redis.ResponseError):
            what = f"the near cache's invalidation listener ({' '.join(map(str, args[:2]))})"
            raise _refusal(conn, what, e) from e
        raise


def _poller(conns: list[Any]) -> Callable[[], bool]:
    """Whether any of *conns* has bytes waiting (a zero-timeout poll, no lock). A
    ``poll`` object refuses concurrent ``poll()`` calls (``RuntimeError``), so each
    thread gets its own."""
    fds = [c._sock.fileno() for c in conns]
    make = getattr(select, "poll", None)  # gevent removes it when it patches select
    if make is None:
        return lambda: bool(select.select(fds, [], [], 0)[0])
    local = threading.local()

    def check() -> bool:
        poll = getattr(local, "poll", None)
        if poll is None:
            poll = local.poll = make()
            for fd in fds:
                poll.register(fd, select.POLLIN)
        return bool(poll.poll(0))

    return check


class InvalidationListener:
    """One background thread that receives Redis invalidation messages for a key
    prefix and drops the matching entries from the registered near caches.

    :param source: a redis-py client (any kind) whose servers to listen to, or a
        callable returning the connection options of every master (see
        :func:`endpoints_of`).
    :param prefix: the key prefix to track (``"<prefix>:"``).
    :param follow: re-check the endpoints every this many seconds and reconnect when
        they change (Sentinel failover; on Cluster a node added, removed or failed);
        ``0`` never; default: 2 s for a Sentinel client, :data:`CLUSTER_FOLLOW` for a
        Cluster client, else 0.
    :param bcast: track every key under *prefix* (``BCAST``, the cache). ``False``
        tracks nothing itself: data connections opt in with ``CLIENT TRACKING on
        REDIRECT`` :attr:`client_id` and get invalidations only for the keys they
        read (sessions; one endpoint only). A reconnect changes :attr:`client_id` and
        bumps :attr:`generation`, so those connections must be set up again.

    Thread safety: :meth:`register`, :meth:`pending`, :meth:`ensure_running` and
    :meth:`stop` may be called from any thread.
    """

    def __init__(self, source: Any, prefix: str, *, follow: float | None = None,
                 timeout: float = 1.0, bcast: bool = True) -> None:
        if callable(source) and not hasattr(source, "execute_command"):
            self.endpoints: Callable[[], list[dict[str, Any]]] = source
        else:
            self.endpoints = lambda: endpoints_of(source)
            if follow is None and hasattr(getattr(source, "connection_pool", None), "get_master_address"):
                follow = 2.0
            elif follow is None and is_cluster(source):
                follow = CLUSTER_FOLLOW
        self.prefix = prefix
        #: the prefixes to track (BCAST): *prefix* and the ones :meth:`track` added
        self.prefixes: tuple[str, ...] = (prefix,)
        #: the prefixes the current connections track (set before :attr:`generation`
        #: is bumped; empty before the first connect)
        self.tracked: tuple[str, ...] = ()
        #: invalidations of a cache generation counter (``...}:gen``) or flushes
        #: applied (see :meth:`pending` for the ones not applied yet)
        self.counter_changes = 0
        self._restart = False
        self.follow = follow or 0.0
        self.timeout = timeout
        self.bcast = bcast
        # base -> weak references to its near caches (a family may hold two of one
        # namespace); tagged bases ("...}:") by exact cut, the others by length (see
        # the module docstring)
        self._tagged: dict[str, tuple[weakref.ref[Any], ...]] = {}
        self._others: dict[str, tuple[weakref.ref[Any], ...]] = {}
        self._other_lengths: tuple[int, ...] = ()
        self._whole: set[str] = set()
        self._pending: Callable[[], bool] | None = None
        self._handling = False
        #: the connection id of the (first) invalidation connection, for ``REDIRECT``
        self.client_id: int | None = None
        #: bumped on every (re)connect, after :attr:`client_id` is set
        self.generation = 0
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.reconnects = 0
        self._refusal = ""  # the set-up refusal logged last (said once until connected)
        self._tracking_refused = False  # a data connection's CLIENT TRACKING refusal was logged
        self.messages = 0
        #: dict lookups made to route invalidated keys (see the module docstring)
        self.visits = 0
        #: (host, port, path) of each server the thread listens to now
        self.current: list[tuple[Any, Any, Any]] = []
        reset_in_child(self)

    # -- namespaces ----------------------------------------------------------------

    def register(self, base: str, near: Any, *, whole_keys: bool = False) -> None:
        """Drop entries of *near* for invalidated keys starting with *base* (held
        weakly: unregistered when *near* is freed). The cache keys its entries by
        the rest of a versioned key; with *whole_keys* the entries are keyed by the
        whole Redis key. Several near caches may share a base (two caches of one
        namespace in a family): each gets the invalidations."""
        tagged = base.find("}:") == len(base) - 2
        table = self._tagged if tagged else self._others

        def gone(ref: weakref.ref[Any], base: str = base, table: dict[str, Any] = table) -> None:
            # no lock: a finalizer may run inside a locked section
            refs = table.get(base, ())
            if ref not in refs:
                return
            rest = tuple(r for r in refs if r is not ref)
            if rest:
                table[base] = rest
                return
            table.pop(base, None)
            self._whole.discard(base)
            if table is self._others:
                self._other_lengths = tuple(sorted({len(b) for b in list(self._others)}))

        with self._lock:
            table[base] = (*table.get(base, ()), weakref.ref(near, gone))
            if whole_keys:
                self._whole.add(base)
            if not tagged:
                self._other_lengths = tuple(sorted({len(b) for b in self._others}))
            if self.connected.is_set():
                near.set_active(True)

    def unregister(self, base: str) -> None:
        """Stop routing invalidations to the near cache of *base*."""
        with self._lock:
            self._tagged.pop(base, None)
            if self._others.pop(base, None) is not None:
                self._other_lengths = tuple(sorted({len(b) for b in self._others}))
            self._whole.discard(base)

    def track(self, prefix: str) -> None:
        """Also track the keys under *prefix* (``BCAST``; nothing if a tracked prefix
        covers it already). A running thread reconnects to add it (the near caches
        are flushed, and :attr:`generation` is bumped once it tracks it)."""
        with self._lock:
            if any(prefix.startswith(p) for p in self.prefixes):
                return
            self.prefixes = (*self.prefixes, prefix)
            self._restart = True

    def covers(self, key: str) -> bool:
        """Whether the current connections track *key* (see :attr:`tracked`)."""
        return any(key.startswith(p) for p in self.tracked)

    def registered(self) -> int:
        """How many near caches are registered (dropped ones are not)."""
        return sum(len(refs) for refs in [*self._tagged.values(), *self._others.values()])

    def _nears(self) -> list[Any]:
        tables = (self._tagged, self._others)
        refs = [ref for table in tables for refs in list(table.values()) for ref in refs]
        return [near for near in (ref() for ref in refs) if near is not None]

    # -- life cycle ------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (cheap to call): also
        after :meth:`stop` (a closed cache or session store used again reopens its
        near cache, as its connections). The stopped thread is waited for first (it
        ends within about a second): one thread at a time applies invalidations and
        switches the near caches; they come back on, flushed, once the new one is
        connected, so no copy kept while nothing listened is served."""
        if self._pid == os.getpid() and self._thread is not None and not self._stop.is_set():
            return
        old = self._thread if self._pid == os.getpid() else None
        if old is not None and old is not threading.current_thread():
            old.join(2 * self.timeout + 1.0)  # not under the lock: the ending thread takes it
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and (
                    not self._stop.is_set() or self._thread.is_alive()):
                return  # running, or still ending (a connect in flight): the next call starts it
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="statekit-near-cache", daemon=True)
            self._thread.start()

    def reset_after_fork(self) -> None:
        self._lock = threading.RLock()  # another thread may have held it at fork time
        self._thread = None
        self._pid = 0
        self._pending = None
        # set by the parent's thread mid-message at fork time, it would say "pending"
        # until the child's thread handled a message: every read bypassed the near caches
        self._handling = False
        self.tracked, self.current = (), []  # the parent's connections
        self.connected = threading.Event()
        for near in self._nears():
            near.reset_after_fork()
            near.set_active(False)

    def stop(self) -> None:
        self._stop.set()
        self._set_active(False)

    def stop_soon(self) -> None:
        """Tell the thread to stop, and nothing more: the stop of a dropped cache's or
        session store's finalizer. A finalizer runs on whatever thread frees its
        object, maybe this listener's own while it holds a near cache's lock (a garbage
        collection inside ``evict``): :meth:`stop` takes that lock to switch the near
        caches off and would wait for ever; the thread switches them off itself as it
        ends (within its half-second ``select``), and applies every invalidation until
        then."""
        self._stop.set()

    def pending(self) -> bool:
        """Whether invalidations have arrived that the thread has not applied yet
        (one zero-timeout ``poll`` of the listener connections, no lock): a reader
        then bypasses its near cache instead of waiting for the thread to get the
        GIL. ``False`` while disconnected (near caches are inactive then).

        The socket is polled *before* ``_handling`` is read: the thread sets it
        before it takes bytes off the socket and clears it after applying them, so
        a message gone from the socket at the poll is either applied or still being
        handled when the flag is read. (Read first, the flag could say "idle" just
        before the thread took the message off: then neither check saw it, and a copy
        it invalidates was served.)"""
        check = self._pending
        if check is not None:
            try:
                if check():
                    return True
            except (OSError, ValueError):  # closed under us: the thread is reconnecting
                return True
        return self._handling

    def tracking_lost(self, generation: int) -> None:
        """A data connection that tracked keys for this listener's *generation* closed
        or reconnected: Redis forgot what it read and sends no invalidation for those
        keys any more, so every near copy goes (its next load reads Redis again).
        Nothing to do for a past generation: its copies went when this listener
        reconnected (and those kept since were tracked for the current one)."""
        if generation != self.generation:
            return
        for near in self._nears():
            near.flush()

    def tracking_refused(self, conn: Any, error: Exception) -> None:
        """A data connection's ``CLIENT TRACKING on REDIRECT`` (``bcast=False``) was
        answered *error* (an ACL without ``client|tracking``, the command renamed or
        disabled): that connection serves untracked, from Redis. Logged once per
        listener (every connection would say the same); a REDIRECT to a listener
        connection replaced meanwhile (``The client ID you want redirect to does not
        exist``) is not a refusal and is not logged."""
        if self._tracking_refused:
            return
        message = str(error).lower()
        if reply_problem(str(error)) != "permission" and "unknown command" not in message \
                and "unknown subcommand" not in message:
            return  # not the server's set-up: a REDIRECT to a listener connection just replaced
        self._tracking_refused = True
        _log.warning("near cache off: %s; until that changes, reads go to Redis",
                     _refusal(conn, "the near cache's CLIENT TRACKING on its data connections", error))

    def _set_active(self, active: bool) -> None:
        # under the lock :meth:`register` checks ``connected`` and activates under:
        # else a near cache registered while the connection dropped could be
        # activated after this loop deactivated it, and stay active with nothing
        # listening (re-entrant: a dropped cache's finalizer may call stop() here)
        with self._lock:
            if active:
                self.connected.set()
            else:
                self.connected.clear()
            for near in self._nears():
                near.set_active(active)

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            conns: list[Any] = []
            try:
                self._restart = False
                prefixes = self.prefixes
                eps = self._endpoints()
                for ep in eps:
                    conns.append(self._connect(ep, prefixes))
                self.current = [(ep.get("host"), ep.get("port"), ep.get("path")) for ep in eps]
                self.tracked = prefixes if self.bcast else ()
                self._pending = _poller(conns)
                self.generation += 1  # after client_id: readers pair an id with its generation
                self._set_active(True)
                backoff = 0.05
                if self._refusal:
                    _log.info("near cache invalidation listener set up: near caches are on")
                    self._refusal = ""
                self._listen(conns, eps)
            except (PermissionRefused, _SetupRefused) as e:  # said once, asked again as after a drop
                if str(e) != self._refusal:
                    self._refusal = str(e)
                    _log.warning("near cache off: %s; until that changes, reads go to Redis", e)
            except Exception:  # noqa: BLE001,S110 - any failure: flush, bypass, reconnect
                pass
            finally:
                self._set_active(False)
                self._handling = False  # what a failed read took off the socket: flushed above
                self._pending = None
                for conn in conns:
                    conn.disconnect()
            if self._stop.wait(backoff):
                return
            self.reconnects += 1
            backoff = min(backoff * 2, 2.0)

    def _endpoints(self) -> list[dict[str, Any]]:
        """:attr:`endpoints`, an error reply to what it asks (a Cluster's ``CLUSTER
        NODES`` the ACL refuses, a Sentinel's refusal) raised as a set-up refusal."""
        import redis

        try:
            return self.endpoints()
        except redis.ResponseError as e:
            raise _refusal(None, "the near cache's invalidation listener asking where the servers are "
                                 "(CLUSTER NODES on a Cluster)", e) from e

    def _connect(self, ep: dict[str, Any], prefixes: tuple[str, ...]) -> Any:
        conn = unpooled_connection(ep, self.timeout)
        try:
            conn.connect()  # AUTH, SELECT, CLIENT SETNAME: redis-py's handshake
            client_id = _call(conn, "CLIENT", "ID")
            if self.bcast:
                _call(conn, "CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST",
                      *[arg for p in prefixes for arg in ("PREFIX", p)])
            # else the data connections track the keys they read (CLIENT TRACKING on
            # REDIRECT client_id), and only those keys' invalidations come here
            _call(conn, "SUBSCRIBE", "__redis__:invalidate")
            if not self.bcast:
                self.client_id = int(client_id)
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def _listen(self, conns: list[Any], eps: list[dict[str, Any]]) -> None:
        by_fd = {c._sock.fileno(): c for c in conns}
        last_seen = {c: time.monotonic() for c in conns}
        last_ping = last_follow = time.monotonic()
        while not self._stop.is_set():
            if self._restart:
                raise BackendUnavailable("a prefix to track was added")
            ready, _, _ = select.select(list(by_fd), [], [], 0.5)
            now = time.monotonic()
            for fd in ready:
                conn = by_fd[fd]
                # from taking bytes off the connection until they are applied, readers
                # must not trust their copies (see pending()); a read that fails keeps
                # it set until _run has flushed the near caches
                self._handling = True
                while True:
                    self._handle(conn.read_response())
                    if not conn.can_read(0):  # TLS: decrypted bytes count too
                        break
                self._handling = False
                last_seen[conn] = now
            if now - last_ping >= self.timeout:
                for conn in conns:
                    conn.send_command("PING")
                last_ping = now
            if any(now - seen > 3 * self.timeout + 0.5 for seen in last_seen.values()):
                raise BackendUnavailable("invalidation connection stopped answering")
            if self.follow and now - last_follow >= self.follow:
                last_follow = now
                try:
                    moved = self.endpoints() != eps
                except Exception:  # noqa: BLE001 - asked in a failover: a lost node's own connection says so
                    moved = False
                if moved:
                    raise BackendUnavailable("the master moved, or the cluster's nodes changed")

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] != b"message":
            return
        self.messages += 1
        keys = msg[2]
        if keys is None:  # FLUSHDB / FLUSHALL
            self.counter_changes += 1
            for near in self._nears():
                near.flush()
            return
        for raw in keys:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if key.endswith("}:gen"):
                self.counter_changes += 1
            self._route(key)

    def _route(self, key: str) -> None:
        """Drop *key* from the near cache(s) whose base it starts with."""
        visits = 0
        cut = key.find("}:")
        if cut >= 0:
            visits += 1
            refs = self._tagged.get(key[: cut + 2])
            if refs is not None:
                self._drop(key, key[: cut + 2], refs)
        others = self._others
        for length in self._other_lengths:
            visits += 1
            base = key[:length]
            refs = others.get(base)
            if refs is not None:
                self._drop(key, base, refs)
        self.visits += visits

    def _drop(self, key: str, base: str, refs: tuple[weakref.ref[Any], ...]) -> None:
        # what the key means is worked out once, then applied to each near cache of base
        flush, name = False, key
        if base not in self._whole:
            rest = key[len(base):]
            if rest == "gen":
                flush = True
            elif rest[:1].isdigit():
                name = rest.partition(":")[2]
            else:
                return
        for ref in refs:
            near = ref()
            if near is None:
                continue
            if flush:
                near.flush()
            else:
                near.evict(name)
