"""``memory://`` cache backend: the cache contract in one process, for unit tests.

Keys, generations and TTLs behave as on Redis; nothing is shared with other
processes. Every method runs under the store's lock, so each is atomic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..backends.memory import MemoryStore, get_store
from .protocol import CacheBackend

__all__ = ["MemoryCacheBackend"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _secs(ttl_ms: int | None) -> float | None:
    return None if ttl_ms is None else ttl_ms / 1000.0


class MemoryCacheBackend(CacheBackend):
    """A cache backend over :func:`statekit.backends.memory.get_store`."""

    def __init__(self, name: str = "default", base: str = "statekit:{default}:", *,
                 store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else get_store(name)
        self.base = base

    def namespace(self, base: str) -> MemoryCacheBackend:
        return MemoryCacheBackend(base=base, store=self.store)

    def _real(self, key: str) -> str:
        gen = self.store.get(self.base + "gen", 0)
        return f"{self.base}{gen}:{key}"

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self.store.lock:
            return [self.store.get(self._real(k)) for k in keys]

    def get_many_with_ttl(self, keys: Sequence[str]) -> list[tuple[bytes | None, int | None]]:
        out: list[tuple[bytes | None, int | None]] = []
        with self.store.lock:
            for k in keys:
                real = self._real(k)
                value = self.store.get(real)
                left = self.store.ttl(real)
                out.append((value, None if left is None else int(left * 1000)))
        return out

    def set_many(self, items: Mapping[str, bytes], ttl_ms: int | None) -> None:
        with self.store.lock:
            for k, v in items.items():
                self.store.set(self._real(k), bytes(v), _secs(ttl_ms))

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        with self.store.lock:
            return self.store.add(self._real(key), bytes(value), _secs(ttl_ms))

    def delete_many(self, keys: Sequence[str]) -> int:
        with self.store.lock:
            return sum(1 for k in keys if self.store.delete(self._real(k)))

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        if not _INT64_MIN <= delta <= _INT64_MAX:  # as Redis INCRBY: a signed 64-bit delta
            raise ValueError(f"increment {delta} is out of the signed 64-bit range")
        with self.store.lock:
            real = self._real(key)
            left = self.store.ttl(real)
            if left == -2.0:
                if not create:
                    return None
                self.store.set(real, str(delta).encode(), _secs(ttl_ms))
                return delta
            raw = self.store.get(real)
            try:
                value = int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"cache value at {key!r} is not an integer") from None
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"cache value at {key!r} is out of the signed 64-bit range")
            value += delta
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError("increment or decrement would overflow")
            self.store.set(real, str(value).encode(), left)
            return value

    def touch(self, key: str, ttl_ms: int | None) -> bool:
        with self.store.lock:
            return self.store.expire(self._real(key), _secs(ttl_ms))

    def ttl_ms(self, key: str) -> int | None:
        left = self.store.ttl(self._real(key))
        if left == -2.0:
            return None
        return -1 if left is None else int(left * 1000)

    def clear(self) -> None:
        with self.store.lock:
            self.store.set(self.base + "gen", self.store.get(self.base + "gen", 0) + 1)

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        return self.store.add(f"{self.base}lock:{name}", token, _secs(ttl_ms))

    def release_lock(self, name: str, token: str) -> bool:
        with self.store.lock:
            key = f"{self.base}lock:{name}"
            if self.store.get(key) != token:
                return False
            return self.store.delete(key)

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        with self.store.lock:
            key = f"{self.base}lock:{name}"
            if self.store.get(key) != token:
                return False
            return self.store.expire(key, _secs(ttl_ms))
