"""The near cache: a bounded in-process LRU of decoded values, kept coherent by Redis.

Redis tells us when a key changes: a dedicated connection runs ``CLIENT TRACKING on
REDIRECT <its own id> BCAST PREFIX <prefix>`` and then ``SUBSCRIBE
__redis__:invalidate`` (RESP2 redirect mode, Redis 6.2+ and Valkey). From then on
every write, delete, expiry or eviction of a key under the prefix — by any client
anywhere — sends the key name to that connection, and the entry is dropped here.

Coherence rules:

* The near cache is used only while the invalidation connection is up. Until it is
  (first use, after a drop, after a fork) every read goes to Redis; when it drops,
  the local copies are flushed, because invalidations may have been missed.
* A value read from Redis is stored locally only if no invalidation of that key (or
  flush) reached the near cache while the read was in flight (a sequence number
  taken before the read, checked against the key's latest eviction), so a
  concurrent write can never be hidden behind an older value. Invalidations of
  other keys do not refuse it: under concurrent traffic to many keys a shared check
  would refuse almost every store.
* Local writes drop the local copy before they return (read-your-writes).
* Entries also carry a deadline: the key's Redis TTL, capped by ``max_age``.

How soon a write elsewhere is seen here: the invalidation arrives one network hop
after the write; the listener thread then needs the GIL. A worker that does any I/O
hands it over at once (a few hundred microseconds end to end on loopback), but a
thread spinning in pure Python keeps it for up to the interpreter's switch interval
(``sys.getswitchinterval()``, 5 ms by default).

On Sentinel the listener follows the master (it re-checks the address every few
seconds); on Cluster it keeps one connection per master.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .._fork import reset_in_child
from ..errors import BackendUnavailable

__all__ = ["InvalidationListener", "NearCache"]

#: (value, logical expiry as epoch seconds or 0.0, compute time in seconds)
Entry = tuple[Any, float, float]
T = TypeVar("T")


class NearCache(Generic[T]):
    """Bounded LRU of decoded entries for one namespace.

    Reads (:attr:`data` lookups by :class:`~statekit.cache.Cache`) take no lock;
    :meth:`store`, :meth:`evict` and :meth:`flush` take a short one.

    Race check: a reader takes :attr:`seq` before it reads from Redis and passes it
    to :meth:`store`, which refuses the value if that key was evicted (or the whole
    cache flushed) since. The latest evictions are remembered per key (up to
    ``evictions`` of them); forgetting an older one raises a floor below which
    every store is refused, so memory stays bounded and the check stays safe.
    """

    def __init__(self, maxsize: int = 10_000, max_age: float = 60.0, *, evictions: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError("near cache maxsize must be at least 1")
        self.maxsize = maxsize
        self.max_age = max_age
        self.data: OrderedDict[str, tuple[T, float]] = OrderedDict()
        self.active = False
        self.seq = 0
        self.lock = threading.Lock()
        self._evicted: OrderedDict[str, int] = OrderedDict()  # key -> seq of its latest eviction
        self._max_evicted = max(1, evictions)
        self._floor = 0  # reads that began before this are refused (flushes, forgotten evictions)

    def store(self, key: str, entry: T, ttl_ms: int | None, seq: int) -> None:
        """Keep *entry*, read from Redis after :attr:`seq` was *seq*, unless *key*
        was evicted (or the cache flushed) since."""
        age = self.max_age if ttl_ms is None else min(self.max_age, ttl_ms / 1000.0)
        if age <= 0:
            return
        with self.lock:
            if self._fresh(key, seq):
                self._put(key, entry, age)

    def settle(self, key: str, entry: T | None, seq: int) -> None:
        """After this process changed *key* itself: keep *entry* (the value the
        change left, or ``None``) unless *key* was evicted since *seq*, and in any
        case refuse the values that reads of *key* begun before now would store.
        Needed where the change sends no invalidation back to this process
        (``NOLOOP``)."""
        with self.lock:
            keep = entry is not None and self._fresh(key, seq)
            self._evict(key)
            if keep:
                self._put(key, entry, self.max_age)  # type: ignore[arg-type]

    def _fresh(self, key: str, seq: int) -> bool:
        """Whether a value read after :attr:`seq` was *seq* may be kept (under :attr:`lock`)."""
        return self.active and 0 <= seq and self._floor <= seq and self._evicted.get(key, 0) <= seq

    def _put(self, key: str, entry: T, age: float) -> None:
        """Keep *entry* for *age* seconds, dropping the oldest past ``maxsize`` (under
        :attr:`lock`)."""
        data = self.data
        data[key] = (entry, time.monotonic() + age)
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)

    def _evict(self, key: str) -> None:
        """Drop *key* and remember when (under :attr:`lock`)."""
        self.seq += 1
        self.data.pop(key, None)
        evicted = self._evicted
        evicted[key] = self.seq
        evicted.move_to_end(key)
        if len(evicted) > self._max_evicted:
            self._floor = max(self._floor, evicted.popitem(last=False)[1])

    def evict(self, key: str) -> None:
        with self.lock:
            self._evict(key)

    def flush(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        self.seq += 1
        self._floor = self.seq
        self.data.clear()
        self._evicted.clear()

    def set_active(self, active: bool) -> None:
        with self.lock:
            self._flush()
            self.active = active

    def __len__(self) -> int:
        return len(self.data)


def _tls_context(ep: dict[str, Any]) -> ssl.SSLContext:
    """A client TLS context from redis-py's ``ssl_*`` connection options."""
    ctx = ssl.create_default_context(cafile=ep.get("ssl_ca_certs"), capath=ep.get("ssl_ca_path"))
    reqs = ep.get("ssl_cert_reqs", "required")
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    mode: ssl.VerifyMode = modes.get(reqs, ssl.CERT_REQUIRED) if isinstance(reqs, str) else reqs
    if mode == ssl.CERT_NONE or not ep.get("ssl_check_hostname", True):
        ctx.check_hostname = False
    ctx.verify_mode = mode
    if ep.get("ssl_certfile"):
        ctx.load_cert_chain(ep["ssl_certfile"], ep.get("ssl_keyfile"), ep.get("ssl_password"))
    return ctx


class InvalidationListener:
    """One background thread that receives Redis invalidation messages for a key
    prefix and drops the matching entries from the registered near caches.

    :param endpoints: returns the connection parameters (``host``/``port`` or
        ``path``, ``username``, ``password``) of every master to listen to.
    :param prefix: the key prefix to track (``"<prefix>:"``).
    :param follow: re-check :func:`endpoints` every this many seconds and reconnect
        when they change (Sentinel failover); ``0`` to never re-check.
    :param bcast: track every key under *prefix* (``BCAST``, the cache). ``False``
        tracks nothing itself: data connections opt in with ``CLIENT TRACKING on
        REDIRECT`` :attr:`client_id` and get invalidations only for the keys they
        read (sessions; one endpoint only). A reconnect changes :attr:`client_id` and
        bumps :attr:`generation`, so those connections must be opened again.
    """

    def __init__(self, endpoints: Callable[[], list[dict[str, Any]]], prefix: str, *,
                 follow: float = 0.0, timeout: float = 1.0, bcast: bool = True) -> None:
        self.endpoints = endpoints
        self.prefix = prefix
        self.follow = follow
        self.timeout = timeout
        self.bcast = bcast
        self._nears: dict[str, NearCache[Any]] = {}
        self._whole: set[str] = set()
        self._socks: list[socket.socket] = []
        self._handling = False
        #: the connection id of the (first) invalidation connection, for ``REDIRECT``
        self.client_id: int | None = None
        #: bumped on every (re)connect, after :attr:`client_id` is set
        self.generation = 0
        self._readers: dict[socket.socket, Any] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.reconnects = 0
        self.messages = 0
        #: (host, port, path) of each server the thread listens to now
        self.current: list[tuple[Any, Any, Any]] = []
        reset_in_child(self)

    def register(self, base: str, near: NearCache[Any], *, whole_keys: bool = False) -> None:
        """Drop entries of *near* for invalidated keys starting with *base*. The cache
        keys its entries by the rest of a versioned key; with *whole_keys* the entries
        are keyed by the whole Redis key."""
        with self._lock:
            self._nears[base] = near
            if whole_keys:
                self._whole.add(base)
            if self.connected.is_set():
                near.set_active(True)

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running (cheap to call)."""
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="statekit-near-cache", daemon=True)
            self._thread.start()

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._thread = None
        self._pid = 0
        self.connected = threading.Event()
        for near in list(self._nears.values()):
            near.lock = threading.Lock()
            near.set_active(False)

    def stop(self) -> None:
        self._stop.set()
        self._set_active(False)

    def pending(self) -> bool:
        """Whether invalidations have arrived that the thread has not handled yet
        (bytes waiting on its socket, by a zero-timeout ``select``, or taken off it
        but not yet applied): a reader then bypasses its near cache instead of
        waiting for the thread to get the GIL."""
        if self._handling:
            return True
        socks = self._socks
        if not socks:
            return False
        try:
            return bool(select.select(socks, [], [], 0)[0])
        except (OSError, ValueError):  # closed under us: the thread is reconnecting
            return True

    def _set_active(self, active: bool) -> None:
        if active:
            self.connected.set()
        else:
            self.connected.clear()
        for near in list(self._nears.values()):
            near.set_active(active)

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            socks: list[socket.socket] = []
            try:
                eps = self.endpoints()
                socks = [self._connect(ep) for ep in eps]
                self.current = [(ep.get("host"), ep.get("port"), ep.get("path")) for ep in eps]
                self._socks = socks
                self.generation += 1  # after client_id: readers pair an id with its generation
                self._set_active(True)
                backoff = 0.05
                self._listen(socks, eps)
            except Exception:  # noqa: BLE001,S110 - any failure: flush, bypass, reconnect
                pass
            finally:
                self._set_active(False)
                self._socks = []
                for s in socks:
                    self._readers.pop(s, None)
                    s.close()
            if self._stop.wait(backoff):
                return
            self.reconnects += 1
            backoff = min(backoff * 2, 2.0)

    def _connect(self, ep: dict[str, Any]) -> socket.socket:
        from .redis import make_reader, pack_command

        if ep.get("path"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(ep["path"])
        else:
            sock = socket.create_connection((ep["host"], ep["port"]), timeout=self.timeout)
            if ep.get("ssl"):
                try:
                    sock = _tls_context(ep).wrap_socket(sock, server_hostname=ep["host"])
                except BaseException:
                    sock.close()
                    raise
        reader = make_reader()

        def call(*args: Any) -> Any:
            sock.sendall(pack_command(args))
            reply = reader.gets()
            while reply is False:
                data = sock.recv(65536)
                if not data:
                    raise BackendUnavailable("invalidation connection closed")
                reader.feed(data)
                reply = reader.gets()
            if isinstance(reply, Exception):
                raise BackendUnavailable(f"invalidation connection setup refused: {reply}")
            return reply

        try:
            if ep.get("password"):
                call("AUTH", *([ep["username"]] if ep.get("username") else []), ep["password"])
            client_id = call("CLIENT", "ID")
            if self.bcast:
                call("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", "PREFIX", self.prefix)
            # else the data connections track the keys they read (CLIENT TRACKING on
            # REDIRECT client_id), and only those keys' invalidations come here
            call("SUBSCRIBE", "__redis__:invalidate")
            if not self.bcast:
                self.client_id = int(client_id)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self._readers[sock] = reader
        return sock

    def _listen(self, socks: list[socket.socket], eps: list[dict[str, Any]]) -> None:
        from .redis import pack_command

        last_seen = {s: time.monotonic() for s in socks}
        last_ping = time.monotonic()
        last_follow = time.monotonic()
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.5)
            now = time.monotonic()
            for s in ready:
                # from taking bytes off the socket until they are handled, readers
                # must not trust their copies (see pending())
                self._handling = True
                try:
                    data = s.recv(65536)
                    if not data:
                        raise BackendUnavailable("invalidation connection closed")
                    while isinstance(s, ssl.SSLSocket) and s.pending():  # decrypted, not yet read
                        data += s.recv(65536)
                    last_seen[s] = now
                    reader = self._readers[s]
                    reader.feed(data)
                    msg = reader.gets()
                    while msg is not False:
                        self._handle(msg)
                        msg = reader.gets()
                finally:
                    self._handling = False
            if now - last_ping >= self.timeout:
                for s in socks:
                    s.sendall(pack_command(("PING",)))
                last_ping = now
            if any(now - seen > 3 * self.timeout + 0.5 for seen in last_seen.values()):
                raise BackendUnavailable("invalidation connection stopped answering")
            if self.follow and now - last_follow >= self.follow:
                last_follow = now
                if self.endpoints() != eps:
                    raise BackendUnavailable("the master moved")

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] != b"message":
            return
        self.messages += 1
        keys = msg[2]
        nears = list(self._nears.items())
        if keys is None:  # FLUSHDB / FLUSHALL
            for _base, near in nears:
                near.flush()
            return
        whole = self._whole
        for raw in keys:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            for base, near in nears:
                if not key.startswith(base):
                    continue
                if base in whole:
                    near.evict(key)
                    continue
                rest = key[len(base):]
                if rest == "gen":
                    near.flush()
                elif rest[:1].isdigit():
                    near.evict(rest.partition(":")[2])
