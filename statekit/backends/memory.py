"""An in-process store with expiry, for ``memory://`` backends.

``memory://`` exists for users' unit tests and single-process scripts: it behaves
like the Redis backends (same contract, same errors) but shares nothing with other
processes. Stores are named (``memory://name``) and live for the life of the process;
:func:`reset` empties them between tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["MemoryStore", "get_store", "reset"]

_MISSING = object()


class MemoryStore:
    """A thread-safe dict whose entries may expire (monotonic clock).

    ``lock`` is public so backends can make compound operations atomic.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._data: dict[str, tuple[Any, float | None]] = {}

    def _live(self, key: str, now: float) -> tuple[Any, float | None] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def get(self, key: str, default: Any = None) -> Any:
        with self.lock:
            item = self._live(key, time.monotonic())
            return default if item is None else item[0]

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store *value*; ``ttl`` in seconds, ``None`` for no expiry."""
        with self.lock:
            self._data[key] = (value, None if ttl is None else time.monotonic() + ttl)

    def add(self, key: str, value: Any, ttl: float | None = None) -> bool:
        with self.lock:
            if self._live(key, time.monotonic()) is not None:
                return False
            self.set(key, value, ttl)
            return True

    def delete(self, key: str) -> bool:
        with self.lock:
            return self._data.pop(key, _MISSING) is not _MISSING and True

    def ttl(self, key: str) -> float | None:
        """Seconds left; ``None`` for no expiry; ``-2.0`` when the key is missing."""
        with self.lock:
            item = self._live(key, time.monotonic())
            if item is None:
                return -2.0
            return None if item[1] is None else max(0.0, item[1] - time.monotonic())

    def expire(self, key: str, ttl: float | None) -> bool:
        with self.lock:
            item = self._live(key, time.monotonic())
            if item is None:
                return False
            self.set(key, item[0], ttl)
            return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        with self.lock:
            now = time.monotonic()
            found = [k for k in list(self._data) if k.startswith(prefix) and self._live(k, now)]
        return iter(found)

    def clear(self) -> None:
        with self.lock:
            self._data.clear()


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def get_store(name: str = "default") -> MemoryStore:
    """The process-wide store called *name* (``memory://name``)."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore()
        return store


def reset() -> None:
    """Empty every memory store and every ``memory://`` in-process Redis (call
    between tests); shared values of ``memory://`` stores show their default again."""
    import sys

    from ..redis import reset_memory

    with _stores_lock:
        for store in _stores.values():
            store.clear()
    reset_memory()
    values = sys.modules.get("statekit.broadcast.values")  # loaded only if a value exists
    if values is not None:
        values._unload_memory()
