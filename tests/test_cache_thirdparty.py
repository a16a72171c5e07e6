"""A cache backend from outside the package, as another distribution would add one:
a dict-backed backend registered by entry point (scheme ``dict://``), passing the
shipped contract (statekit.testing.contracts.cache) with nothing else."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from statekit import backends
from statekit.cache import Cache
from statekit.cache.protocol import CacheBackend, Stored, live, persisted, touched
from statekit.errors import ConfigError
from statekit.testing.contracts.cache import CacheContract

_INT64 = range(-(2**63), 2**63)


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, tuple[bytes, float | None]] = {}


_stores: dict[str, _Store] = {}


class DictCacheBackend(CacheBackend):
    """One dict per URL, every method under its lock (so each is atomic); the old
    generation's keys are deleted by clear() itself (a toy: O(n) in process)."""

    def __init__(self, store: _Store, base: str) -> None:
        self.store = store
        self.base = base

    @classmethod
    def from_url(cls, url: str, base: str, options: Mapping[str, Any]) -> DictCacheBackend:
        return cls(_stores.setdefault(url.partition("://")[2], _Store()), base)

    def namespace(self, base: str) -> DictCacheBackend:
        return DictCacheBackend(self.store, base)

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self.store.data.get(key)
        if item is not None and item[1] is not None and item[1] <= time.monotonic():
            del self.store.data[key]
            return None
        return item

    def _gen(self) -> int:
        item = self._live(self.base + "gen")
        return 0 if item is None else int(item[0])

    def _real(self, key: str) -> str:
        return f"{self.base}{self._gen()}:{key}"

    def _put(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        self.store.data[key] = (bytes(value), None if ttl_ms is None else time.monotonic() + ttl_ms / 1000)

    def get_with_ttl(self, key: str) -> Stored:
        with self.store.lock:
            item = self._live(self._real(key))
        if item is None:
            return Stored(None, None)
        left = None if item[1] is None else max(0, int((item[1] - time.monotonic()) * 1000))
        return Stored(item[0], left)

    def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        with self.store.lock:
            self._put(self._real(key), value, ttl_ms)

    def add(self, key: str, value: bytes, ttl_ms: int | None) -> bool:
        with self.store.lock:
            real = self._real(key)
            if self._live(real) is not None:
                return False
            self._put(real, value, ttl_ms)
            return True

    def replace(self, key: str, value: bytes, ttl_ms: int | None, now: float) -> bool:
        with self.store.lock:
            real = self._real(key)
            item = self._live(real)
            if item is None or not live(item[0], now):
                return False
            self._put(real, value, ttl_ms)
            return True

    def delete(self, key: str) -> bool:
        with self.store.lock:
            real = self._real(key)
            found = self._live(real) is not None
            self.store.data.pop(real, None)
            return found

    def incr(self, key: str, delta: int, ttl_ms: int | None, *, create: bool) -> int | None:
        if delta not in _INT64:
            raise ValueError(f"increment {delta} is outside the signed 64-bit range")
        with self.store.lock:
            real = self._real(key)
            item = self._live(real)
            if item is None:
                if not create:
                    return None
                self._put(real, b"%d" % delta, ttl_ms)
                return delta
            try:
                value = int(item[0]) + delta
            except ValueError:
                raise ValueError(f"the value at {key!r} is not an integer") from None
            if value not in _INT64:
                raise ValueError("increment or decrement would overflow")
            self.store.data[real] = (b"%d" % value, item[1])
            return value

    def touch(self, key: str, ttl_ms: int | None, now: float, stale_ms: int) -> bool:
        with self.store.lock:
            real = self._real(key)
            item = self._live(real)
            left = None if item is None or item[1] is None else int((item[1] - time.monotonic()) * 1000)
            new = None if item is None else touched(item[0], left, ttl_ms, now, stale_ms)
            if new is None:
                return False
            self._put(real, *new)
            return True

    def persist(self, key: str, now: float) -> bool:
        with self.store.lock:
            real = self._real(key)
            item = self._live(real)
            if item is None or not live(item[0], now):
                return False
            value = persisted(item[0])
            if item[1] is None and value == item[0]:
                return False
            self._put(real, value, None)
            return True

    def clear(self) -> None:
        with self.store.lock:
            old = f"{self.base}{self._gen()}:"
            self.store.data[self.base + "gen"] = (b"%d" % (self._gen() + 1), None)
            for k in [k for k in self.store.data if k.startswith(old)]:
                del self.store.data[k]

    def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        with self.store.lock:
            key = f"{self.base}lock:{name}"
            if self._live(key) is not None:
                return False
            self._put(key, token.encode(), ttl_ms)
            return True

    def release_lock(self, name: str, token: str) -> bool:
        with self.store.lock:
            key = f"{self.base}lock:{name}"
            item = self._live(key)
            if item is None or item[0] != token.encode():
                return False
            del self.store.data[key]
            return True

    def extend_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        with self.store.lock:
            key = f"{self.base}lock:{name}"
            item = self._live(key)
            if item is None or item[0] != token.encode():
                return False
            self._put(key, item[0], ttl_ms)
            return True


@pytest.fixture
def dict_entry_point(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``dict://`` registered as another distribution's entry point would be."""
    real = backends._entry_points

    def entry_points(capability: str) -> list[Any]:
        mine = [EntryPoint("dict", f"{__name__}:DictCacheBackend", "statekit.cache")]
        return [*real(capability), *(mine if capability == "cache" else [])]

    monkeypatch.setattr(backends, "_entry_points", entry_points)
    yield
    _stores.clear()


class TestThirdPartyCache(CacheContract):
    @pytest.fixture
    def make(self, dict_entry_point: None) -> Any:
        return lambda **kw: Cache("dict://contract", **kw)


def test_unregistered_scheme_names_the_entry_point_group() -> None:
    with pytest.raises(ConfigError, match=r"no cache backend for dict:// URLs.*'statekit\.cache'"):
        Cache("dict://x")


def test_the_entry_point_cannot_take_over_a_builtin_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_entry_points", lambda capability: [
        EntryPoint("memory", f"{__name__}:DictCacheBackend", "statekit.cache")])
    c = Cache("memory://builtin")
    c.set("k", 1)
    assert type(c._be()).__name__ == "MemoryCacheBackend"
