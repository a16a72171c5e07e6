"""A `cachelib <https://cachelib.readthedocs.io>`_ cache on statekit.

``StatekitCache`` is a ``cachelib.BaseCache`` with cachelib's semantics (``timeout``
in seconds, ``None`` for the default, ``0`` for never expires; ``get_many(*keys)``
returns a list; ``inc`` creates missing keys), backed by :class:`statekit.cache.Cache`
— so it gets namespaces, one-round-trip bulk calls on Redis Cluster, the circuit
breaker and, optionally, the near cache.

With Flask-Caching::

    app.config.update(
        CACHE_TYPE="statekit.compat.cachelib.StatekitCache",
        CACHE_OPTIONS={"url": "redis://127.0.0.1:6379/0", "on_error": "miss"},
    )

Flask-Caching's ``memoize`` stores whatever a function returns: for values JSON
cannot carry pass ``serializer="signed-pickle"`` and ``secret_keys=[...]``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cachelib import BaseCache

from ..cache import Cache

__all__ = ["StatekitCache"]


class StatekitCache(BaseCache):  # type: ignore[misc]
    """cachelib cache on statekit.

    :param url: backend URL (``STATEKIT_CACHE_URL`` / ``STATEKIT_REDIS_URL`` if
        ``None``); or pass ``client=``.
    :param default_timeout: seconds; ``0`` means values never expire.
    :param key_prefix: prepended to every key (cachelib's convention).
    :param options: any :class:`~statekit.cache.Cache` keyword (``namespace``,
        ``serializer``, ``secret_keys``, ``near_cache``, ``on_error`` ...).

    Errors follow ``on_error``: with ``"miss"`` an outage reads as a miss and
    writes return ``False`` (cachelib's "not stored"); with ``"raise"`` it raises
    :class:`~statekit.errors.BackendUnavailable`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        default_timeout: int | dt.timedelta = 300,
        key_prefix: str = "",
        ignore_delete_many_errors: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(default_timeout=default_timeout,
                         ignore_delete_many_errors=ignore_delete_many_errors)
        options.setdefault("namespace", "cachelib")
        self.key_prefix = key_prefix
        self.cache = Cache(url, default_ttl=None, **options)

    def _ttl(self, timeout: int | dt.timedelta | None) -> float | None:
        seconds = self._normalize_timeout(timeout)
        return None if seconds == 0 else float(seconds)

    def _k(self, key: str) -> str:
        return self.key_prefix + key

    def get(self, key: str) -> Any:
        return self.cache.get(self._k(key))

    def get_many(self, *keys: str) -> list[Any]:
        found = self.cache.get_many([self._k(k) for k in keys])
        return [found.get(self._k(k)) for k in keys]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.cache.delete(self._k(key))
            return True
        return self.cache.set(self._k(key), value, ttl=ttl)

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            return not self.cache.has(self._k(key))
        return self.cache.add(self._k(key), value, ttl=ttl)

    def set_many(self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None) -> list[Any]:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.cache.delete_many([self._k(k) for k in mapping])
            return list(mapping)
        stored = self.cache.set_many({self._k(k): v for k, v in mapping.items()}, ttl=ttl)
        return list(mapping) if stored else []

    def delete(self, key: str) -> bool:
        return self.cache.delete(self._k(key))

    def delete_many(self, *keys: str) -> list[Any]:
        self.cache.delete_many([self._k(k) for k in keys])
        return list(keys)

    def has(self, key: str) -> bool:
        return self.cache.has(self._k(key))

    def clear(self) -> bool:
        """Empty this cache's namespace (O(1)); other data in Redis is untouched."""
        return self.cache.clear()

    def inc(self, key: str, delta: int = 1) -> int | None:
        return self.cache.incr(self._k(key), delta)

    def dec(self, key: str, delta: int = 1) -> int | None:
        return self.cache.incr(self._k(key), -delta)
