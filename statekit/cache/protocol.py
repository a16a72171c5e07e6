"""The byte-level contract every cache backend implements.

A backend stores opaque ``bytes`` (or, for counters, the decimal text of an
integer) under string keys inside one *namespace*. :class:`~statekit.cache.Cache`
does the encoding, the stampede protection, the near cache and the failure policy;
a backend only moves bytes, and must:

* make every method one atomic step with respect to other callers (one Redis
  round trip, or one critical section in process);
* resolve the namespace's *generation* inside that same step, so :meth:`clear`
  is O(1): it bumps the generation and every older key becomes unreachable (it
  then expires on its own TTL);
* raise :class:`~statekit.errors.BackendUnavailable` for an unreachable or slow
  backend (never hang: every network call has a timeout), and ``ValueError`` when
  :meth:`incr` meets a value that is not an integer.

TTLs are integer milliseconds; ``None`` means no expiry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["CacheBackend"]


class CacheBackend:
    """Base class of cache backends. Required methods raise ``NotImplementedError``;
    the single-key methods have working defaults built on the bulk ones."""

    #: the namespace this backend instance serves (``"<prefix>:{<namespace>}:"``)
    base: str = ""

    def namespace(self, base: str) -> CacheBackend:
        """A backend for another namespace that shares this one's connections."""
        raise NotImplementedError(f"{type(self).__name__} must implement namespace()")

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of *keys*, in order, ``None`` for a missing key."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_many()")

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[tuple[bytes | None, int | None]]:
        """Values with their remaining TTL in ms (``None``: no expiry), for the near cache."""
        values = self.get_many(keys)
        return [(v, self.ttl_ms(k) if v is not None else None) for k, v in zip(keys, values, strict=True)]

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        """Store every item with the same TTL."""
        raise NotImplementedError(f"{type(self).__name__} must implement set_many()")

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        """Store *value* only if *key* is missing; ``True`` if stored."""
        raise NotImplementedError(f"{type(self).__name__} must implement add()")

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete *keys*; return how many existed."""
        raise NotImplementedError(f"{type(self).__name__} must implement delete_many()")

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        """Add *delta* to the integer at *key* and return the new value. A missing
        key starts at 0 (and gets *ttl_ms*) when *create*, else nothing changes and
        the result is ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must implement incr()")

    def touch(self, key: str, ttl_ms: int | None) -> bool:
        """Set a new TTL on an existing key; ``False`` if it is missing."""
        raise NotImplementedError(f"{type(self).__name__} must implement touch()")

    def ttl_ms(self, key: str) -> int | None:
        """Remaining TTL in ms; ``-1`` for no expiry, ``None`` for a missing key."""
        raise NotImplementedError(f"{type(self).__name__} must implement ttl_ms()")

    def clear(self) -> None:
        """Make every key of this namespace unreachable (bump the generation)."""
        raise NotImplementedError(f"{type(self).__name__} must implement clear()")

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take lock *name* for *token* if free; ``True`` if taken."""
        raise NotImplementedError(f"{type(self).__name__} must implement acquire_lock()")

    def release_lock(self, name: str, token: str) -> bool:
        """Release lock *name* if *token* still holds it; ``True`` if released."""
        raise NotImplementedError(f"{type(self).__name__} must implement release_lock()")

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Reset the TTL of lock *name* if *token* still holds it."""
        raise NotImplementedError(f"{type(self).__name__} must implement extend_lock()")

    # -- defaults built on the required methods ----------------------------------

    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[0]

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        self.set_many({key: value}, ttl_ms)

    def delete(self, key: str) -> bool:
        return self.delete_many([key]) > 0

    def has(self, key: str) -> bool:
        return self.ttl_ms(key) is not None

    def close(self) -> None:
        """Release connections (the backend reconnects if used again)."""
