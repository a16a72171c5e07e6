"""The byte-level contract every cache backend implements.

A backend stores opaque ``bytes`` (or, for counters, the decimal text of an
integer) under string keys inside one *namespace* (its :attr:`CacheBackend.base`,
``"<prefix>:{<namespace>}:"``). :class:`~statekit.cache.Cache` does the encoding,
the stampede protection, the near cache and the failure policy; a backend only
moves bytes.

Backends are found by URL scheme (:data:`statekit.cache.BACKENDS`, or an entry point
in the group ``statekit.cache`` whose name is the scheme and whose value is
``"module:Class"``) and built with :meth:`CacheBackend.from_url`. A third-party
backend subclasses :class:`CacheBackend`, implements the required methods (they
raise ``NotImplementedError`` naming themselves until it does) and runs the shipped
contract suite, :class:`statekit.testing.contracts.cache.CacheContract`.

**Concurrency.** One backend instance (and every :meth:`~CacheBackend.namespace`
of it) is shared by all the threads of a process: methods must be thread-safe.
Every *required* method is one atomic step with respect to every other caller, in
this process or another (one Redis round trip or script, one transaction, one
critical section in process), and resolves the namespace's *generation* inside
that same step, so :meth:`~CacheBackend.clear` is O(1). The bulk methods'
defaults loop over the single-key ones, so they are atomic per key only; a backend
that can do better overrides them (the Redis backend is atomic per chunk of
:data:`statekit.cache.redis.CHUNK` keys).

**Failures.** Never hang: every network call has a timeout. An unreachable, slow or
refusing backend raises :class:`~statekit.errors.BackendUnavailable`; a write whose
outcome is unknown (sent, no reply) is never sent again. :meth:`~CacheBackend.incr`
raises ``ValueError`` for a value that is not an integer, or a result outside the
signed 64-bit range, and changes nothing. Nothing else is raised for a well-formed
call.

TTLs are integer milliseconds; ``None`` means no expiry.

**Envelopes.** A value :meth:`Cache.get_or_set <statekit.cache.Cache.get_or_set>`
stored lives in the backend past its ttl, to be served stale while one caller
recomputes it: its bytes start with ``0x02``, then :data:`ENVELOPE` (its logical
expiry, epoch seconds, and its compute time). :func:`expiry` reads that header
(one reading for every Python caller), :func:`live` says whether such bytes are a
value ``get()`` finds; :meth:`CacheBackend.replace` stores only over those,
:meth:`CacheBackend.persist` makes such a value permanent (:func:`persisted`) and
:meth:`CacheBackend.touch` gives it a new one (:func:`touched`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ..redis.tracking import InvalidationListener

__all__ = ["ENVELOPE", "CacheBackend", "Stored", "deadline", "expiry", "live", "persisted", "touched"]

#: the header after a get_or_set value's ``0x02`` mark: its logical expiry (epoch
#: seconds, little-endian double) and compute time (seconds)
ENVELOPE = struct.Struct("<dd")


class Stored(NamedTuple):
    """What a key holds: its *value* (``None``: the key is missing) and the
    milliseconds it has left (``None``: no expiry, or missing)."""

    value: bytes | None
    ttl_ms: int | None


MISSING = Stored(None, None)


def expiry(data: bytes) -> float:
    """When stored *data* stops being a value ``get()`` finds (epoch seconds, as
    ``time.time()``): a get_or_set envelope's logical expiry (``math.inf`` once
    :meth:`~CacheBackend.persist` made it permanent); ``math.inf`` for any other value;
    ``-math.inf`` for bytes ``get()`` never finds (empty, or a truncated envelope).
    Only the header is read, as ``has()`` does."""
    if not data:
        return -math.inf
    if data[0] != 2:
        return math.inf
    if len(data) <= 1 + ENVELOPE.size:
        return -math.inf
    end: float = ENVELOPE.unpack_from(data, 1)[0]
    return end


def live(data: bytes, now: float) -> bool:
    """Whether stored *data* is a value ``get()`` finds at *now* (``time.time()``):
    :func:`expiry` after *now*."""
    return expiry(data) > now


def deadline(now: float, ttl_ms: int | None) -> bytes:
    """A get_or_set envelope's logical expiry (the first field of :data:`ENVELOPE`,
    packed) for a lifetime of *ttl_ms* from *now*: ``math.inf`` (never due) for
    ``None``."""
    return struct.pack("<d", math.inf if ttl_ms is None else now + ttl_ms / 1000)


#: a logical expiry that never comes (what :func:`persisted` writes)
_FOREVER = deadline(0.0, None)


def persisted(data: bytes) -> bytes:
    """*data* as :meth:`CacheBackend.persist` leaves it: a get_or_set envelope's logical
    expiry made ``math.inf`` (never due, never stale, as the key it is stored at no
    longer expires); any other value unchanged."""
    if data[:1] != b"\x02" or len(data) <= 1 + ENVELOPE.size:
        return data
    return data[:1] + _FOREVER + data[1 + len(_FOREVER):]


def touched(data: bytes, left_ms: int | None, ttl_ms: int | None,
            now: float, stale_ms: int) -> tuple[bytes, int | None] | None:
    """What :meth:`CacheBackend.touch` stores for *data* (stored with *left_ms* of its
    TTL left, ``None`` for none) given a new lifetime of *ttl_ms* (``None``: none) at
    *now*: the bytes and their TTL, or ``None`` if *data* is not :func:`live` at *now*
    (nothing changes). A get_or_set envelope becomes due at *now* + *ttl_ms*
    (:func:`deadline`; never for ``None``, as :func:`persisted`) and is kept as long
    past that, to be served stale, as it was kept past its old deadline; *stale_ms*
    past it if it kept no such window (made permanent, or no TTL). Any other value is
    kept as it is, for *ttl_ms*."""
    end = expiry(data)
    if end <= now:
        return None
    if data[0] != 2:
        return data, ttl_ms
    stored = data[:1] + deadline(now, ttl_ms) + data[1 + len(_FOREVER):]
    if ttl_ms is not None:  # its stale window, or the caller's if it kept none
        ttl_ms += (max(0, left_ms - math.floor((end - now) * 1000))
                   if left_ms is not None and end != math.inf else stale_ms)
    return stored, ttl_ms


class CacheBackend:
    """Base class of cache backends (see the module docstring for the concurrency
    and failure rules every method follows). Required methods raise
    ``NotImplementedError`` naming the method; the bulk methods and :meth:`get`,
    :meth:`has` have working defaults built on the required ones."""

    #: the namespace this backend instance serves (``"<prefix>:{<namespace>}:"``)
    base: str = ""

    @classmethod
    def from_url(cls, url: str, base: str, options: Mapping[str, Any]) -> CacheBackend:
        """A backend for *url* serving namespace *base*. *options* are the
        :class:`~statekit.cache.Cache` settings a backend may use (``timeout``:
        seconds or ``None``); ignore the ones you do not know.

        :raises ConfigError: a bad URL, or a missing extra (say which to install).
        """
        raise NotImplementedError(f"{cls.__name__} must implement from_url()")

    # -- required ------------------------------------------------------------------

    def namespace(self, base: str) -> CacheBackend:
        """A backend for another namespace that shares this one's connections."""
        raise NotImplementedError(f"{type(self).__name__} must implement namespace()")

    def get_with_ttl(self, key: str) -> Stored:
        """The value at *key* and the milliseconds it has left, in one step."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_with_ttl()")

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        """Store *value* at *key*, replacing what is there (and its TTL)."""
        raise NotImplementedError(f"{type(self).__name__} must implement set()")

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        """Store *value* only if *key* is missing; ``True`` if stored. Of concurrent
        callers exactly one succeeds."""
        raise NotImplementedError(f"{type(self).__name__} must implement add()")

    def replace(self, key: str, value: bytes, ttl_ms: int | None, now: float) -> bool:
        """Store *value* at *key* (with *ttl_ms*) only if *key* holds a value
        ``get()`` finds at *now* (:func:`live`: a get_or_set value past its logical
        expiry is not one); ``True`` if stored. The test and the write are one step."""
        raise NotImplementedError(f"{type(self).__name__} must implement replace()")

    def delete(self, key: str) -> bool:
        """Delete *key*; ``True`` if it existed."""
        raise NotImplementedError(f"{type(self).__name__} must implement delete()")

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        """Add *delta* to the integer at *key* and return the new value, keeping the
        key's TTL. A missing key starts at 0 (and gets *ttl_ms*) when *create*; else
        nothing changes and the result is ``None``.

        :raises ValueError: the value is not an integer, or *delta* or the result is
            outside the signed 64-bit range (nothing changes).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement incr()")

    def touch(self, key: str, ttl_ms: int | None, now: float, stale_ms: int) -> bool:
        """Give *key* a new lifetime of *ttl_ms* (``None``: none), in one step, if it
        holds a value ``get()`` finds at *now* (:func:`live`): store it as :func:`touched`
        says (a get_or_set value's logical expiry moves with its TTL, and it is kept
        past it as long as before, or *stale_ms*, the cache's ``stale_ttl``, if it was
        permanent). ``False`` if it is missing or not :func:`live`."""
        raise NotImplementedError(f"{type(self).__name__} must implement touch()")

    def persist(self, key: str, now: float) -> bool:
        """Make *key* never expire, in one step, if it holds a value ``get()`` finds at
        *now* (:func:`live`): remove its TTL, and store a get_or_set value as
        :func:`persisted` makes it (its logical expiry removed too). ``True`` only if an
        expiry was removed (``False``: missing, not :func:`live`, or no expiry), as
        Redis' ``PERSIST``."""
        raise NotImplementedError(f"{type(self).__name__} must implement persist()")

    def clear(self) -> None:
        """Make every key of this namespace unreachable at once (O(1), whatever the
        namespace holds), locks excepted. The unreachable entries must not stay for
        ever: remove them afterwards (in bounded steps) or let them expire."""
        raise NotImplementedError(f"{type(self).__name__} must implement clear()")

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take lock *name* for *token* for *ttl_ms* if it is free; ``True`` if taken."""
        raise NotImplementedError(f"{type(self).__name__} must implement acquire_lock()")

    def release_lock(self, name: str, token: str) -> bool:
        """Release lock *name* if *token* still holds it; ``True`` if released."""
        raise NotImplementedError(f"{type(self).__name__} must implement release_lock()")

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Reset the TTL of lock *name* to *ttl_ms* if *token* still holds it."""
        raise NotImplementedError(f"{type(self).__name__} must implement extend_lock()")

    # -- optional: defaults built on the required methods -----------------------------

    def get(self, key: str) -> bytes | None:
        """The value at *key*, ``None`` if it is missing."""
        return self.get_with_ttl(key).value

    def has(self, key: str) -> bool:
        return self.get_with_ttl(key).value is not None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of *keys*, in order, ``None`` for a missing key."""
        return [self.get(k) for k in keys]

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[Stored]:
        """:meth:`get_with_ttl` of each key, in order (for the near cache and ttl())."""
        return [self.get_with_ttl(k) for k in keys]

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        """Store every item with the same TTL."""
        for k, v in items.items():
            self.set(k, v, ttl_ms)

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete *keys*; return how many existed."""
        return sum(1 for k in keys if self.delete(k))

    def near_listener(self, prefix: str) -> InvalidationListener | None:
        """The invalidation listener that keeps a near cache of keys under *prefix*
        coherent, or ``None`` if this backend cannot tell when another process
        changes a key (then :class:`~statekit.cache.Cache` keeps no near cache)."""
        return None

    def close(self) -> None:
        """Release connections (the backend reconnects if used again)."""
