"""The near cache: a bounded in-process LRU of decoded values, kept coherent by Redis.

Redis tells us when a key changes: the invalidation listener
(:class:`statekit.redis.tracking.InvalidationListener`, re-exported here) keeps a
redis-py connection that runs ``CLIENT TRACKING on REDIRECT <its own id> BCAST
PREFIX <prefix>`` and then ``SUBSCRIBE __redis__:invalidate`` (RESP2 redirect mode,
Redis 6.2+ and Valkey). From then on every write, delete, expiry or eviction of a
key under the prefix — by any client anywhere — sends the key name to that
connection, and the entry is dropped from the near cache of its namespace (a dict
lookup). A near cache is registered weakly: dropping its cache unregisters it.

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
* A copy is not served while :meth:`InvalidationListener.pending` says
  invalidations wait to be applied (one zero-timeout poll, no lock): the reader
  goes to Redis instead of racing the listener thread for the GIL. The copy is
  looked up again after that check (one found before it may have been invalidated
  by the time the check ran).
* Local writes drop the local copy before they return (read-your-writes).
* Entries also carry a deadline: the key's Redis TTL, capped by ``max_age``.

How soon a write elsewhere is seen here: the invalidation arrives one network hop
after the write; the listener thread then needs the GIL. A worker that does any I/O
hands it over at once (a few hundred microseconds end to end on loopback), but a
thread spinning in pure Python keeps it for up to the interpreter's switch interval
(``sys.getswitchinterval()``, 5 ms by default).

After a :meth:`~statekit.cache.Cache.clear` (one ``INCR`` of the namespace's
generation counter, also tracked) the near cache is flushed when the counter's
invalidation is applied; a read that starts after the clear returned, in any
process, finds the invalidation applied or still pending (Redis queues it to the
listener before the clearing client gets its reply) and so never serves a value of
the cleared generation (on Cluster the backend's generation is kept current the
same way, near cache or not: see :mod:`statekit.cache.redis`).

On Sentinel the listener follows the master (it re-checks the address every few
seconds); on Cluster it listens to every node, replicas included, and follows nodes
added, removed or failed (see :mod:`statekit.redis.tracking`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from ..redis.tracking import InvalidationListener

__all__ = ["InvalidationListener", "NearCache"]

#: (value, logical expiry as epoch seconds or 0.0, compute time in seconds)
Entry = tuple[Any, float, float]
T = TypeVar("T")


class NearCache(Generic[T]):
    """Bounded LRU of decoded entries for one namespace.

    Reads (:attr:`data` lookups by :class:`~statekit.cache.Cache`) take no lock;
    :meth:`store`, :meth:`evict` and :meth:`flush` take a short one. A :meth:`flush`
    from inside one of those sections on the same thread (a finalizer run by a garbage
    collection there: a dropped connection's, which flushes what it tracked) does not
    wait for the lock its own thread holds: the section flushes as it ends.

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
        self._owner = 0  # the thread inside a locked section of this cache (0: none)
        self._flush_due = False  # a flush asked for from inside that section
        self._evicted: OrderedDict[str, int] = OrderedDict()  # key -> seq of its latest eviction
        self._max_evicted = max(1, evictions)
        self._floor = 0  # reads that began before this are refused (flushes, forgotten evictions)

    def store(self, key: str, entry: T, ttl_ms: int | None, seq: int) -> None:
        """Keep *entry*, read from Redis after :attr:`seq` was *seq*, unless *key*
        was evicted (or the cache flushed) since."""
        age = self.max_age if ttl_ms is None else min(self.max_age, ttl_ms / 1000.0)
        if age <= 0:
            return
        self._enter()
        try:
            if self._fresh(key, seq):
                self._put(key, entry, age)
        finally:
            self._leave()

    def settle(self, key: str, entry: T | None, seq: int) -> None:
        """After this process changed *key* itself: keep *entry* (the value the
        change left, or ``None``) unless *key* was evicted since *seq*, and in any
        case refuse the values that reads of *key* begun before now would store.
        Needed where the change sends no invalidation back to this process
        (``NOLOOP``)."""
        self._enter()
        try:
            keep = entry is not None and self._fresh(key, seq)
            self._evict(key)
            if keep:
                self._put(key, entry, self.max_age)  # type: ignore[arg-type]
        finally:
            self._leave()

    def reset_after_fork(self) -> None:
        """In a forked child: a new lock and no locked section in progress (a parent
        thread may have been in one). The listener switches the copies off next."""
        self.lock = threading.Lock()
        self._owner = 0
        self._flush_due = False

    def _enter(self) -> None:
        self.lock.acquire()
        self._owner = threading.get_ident()

    def _leave(self) -> None:
        try:
            if self._flush_due:
                self._flush_due = False
                self._flush()
        finally:
            self._owner = 0
            self.lock.release()

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
        self._enter()
        try:
            self._evict(key)
        finally:
            self._leave()

    def flush(self) -> None:
        if self._owner == threading.get_ident():  # from inside a section (class docstring)
            self._flush_due = True
            return
        self._enter()
        try:
            self._flush()
        finally:
            self._leave()

    def _flush(self) -> None:
        self.seq += 1
        self._floor = self.seq
        self.data.clear()
        self._evicted.clear()

    def set_active(self, active: bool) -> None:
        self._enter()
        try:
            self._flush()
            self.active = active
        finally:
            self._leave()

    def __len__(self) -> int:
        return len(self.data)
