"""A `cachelib <https://cachelib.readthedocs.io>`_ cache on statekit.

``StatekitCache`` is a ``cachelib.BaseCache`` with cachelib's semantics (``timeout``
in seconds, ``None`` for the default, ``0`` for never expires; ``get_many(*keys)``
returns a list; ``inc`` creates missing keys; ``key_prefix`` a string, a callable
returning one, or ``None``), backed by :class:`statekit.cache.Cache` — so it gets
namespaces, one-round-trip bulk calls on Redis Cluster, the circuit breaker and,
optionally, the near cache.

With Flask-Caching::

    app.config.update(
        CACHE_TYPE="statekit.compat.cachelib.StatekitCache",
        CACHE_OPTIONS={"url": "redis://127.0.0.1:6379/0", "on_error": "miss"},
    )

Values go through :class:`~statekit.serializers.WebJSONSerializer` by default:
JSON, plus what Flask-Caching stores for views and templates — a ``Response``
(``jsonify``, ``make_response``), an ``abort()`` and a ``{% cache %}`` fragment
— kept as status, headers and body or as the rendered text, never pickled.
``memoize`` stores whatever a function returns: for values JSON cannot carry pass
``serializer="signed-pickle"`` and ``secret_keys=[...]``. A cachelib serializer
set as ``cache.serializer`` (Flask-Caching's ``CACHE_SERIALIZER``) is used, except
cachelib's pickle serializers, which are refused: unpickling what Redis holds runs
the code of whoever can write to it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cachelib import BaseCache
from cachelib.serializers import BaseRedisSerializer, BaseSerializer

from ..cache import Cache
from ..errors import ConfigError, SerializationError, UnencodableValue
from ..serializers import WebJSONSerializer, unencodable_as_pickle_error

__all__ = ["CachelibCodec", "StatekitCache", "UnencodableValue"]




_PICKLING = {BaseSerializer.dumps, BaseSerializer.loads, BaseRedisSerializer.dumps,
             BaseRedisSerializer.loads}


class CachelibCodec:
    """A cachelib serializer (``dumps``/``loads``) as a statekit codec. cachelib's
    serializers return ``None`` when they cannot encode (after logging): that raises
    :class:`UnencodableValue` here, so nothing is stored silently wrong. Bytes the
    serializer cannot read (another codec wrote them) are a miss."""

    def __init__(self, serializer: Any) -> None:
        kind = type(serializer)
        if getattr(kind, "dumps", None) in _PICKLING or getattr(kind, "loads", None) in _PICKLING:
            raise ConfigError(
                f"cachelib's {kind.__name__} unpickles what the store holds, which runs the code "
                "of whoever can write to it: statekit does not read pickle it has not signed. "
                "Use serializer='signed-pickle' with secret_keys=[...], or a JSON serializer"
            )
        self.serializer = serializer
        self.name = f"cachelib:{kind.__name__}"

    def dumps(self, value: Any) -> bytes:
        data = self.serializer.dumps(value)
        if data is None:
            raise UnencodableValue(f"{self.name} could not serialize a value of type "
                                   f"{type(value).__name__!r}")
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def loads(self, data: bytes) -> Any:
        try:
            return self.serializer.loads(data)
        except Exception as e:  # written by another codec: a miss, as the cache treats it
            raise SerializationError(f"{self.name} refused a payload of {len(data)} bytes") from e


class StatekitCache(BaseCache):  # type: ignore[misc]
    """cachelib cache on statekit.

    :param url: backend URL (``STATEKIT_CACHE_URL`` / ``STATEKIT_REDIS_URL`` if
        ``None``); or pass ``client=``.
    :param default_timeout: seconds; ``0`` means values never expire.
    :param key_prefix: prepended to every key (cachelib's convention): a string, a
        callable returning one (called on every operation), or ``None``.
    :param options: any :class:`~statekit.cache.Cache` keyword (``namespace``,
        ``serializer``, ``secret_keys``, ``near_cache``, ``on_error`` ...).

    Errors follow ``on_error``: with ``"miss"`` an outage reads as a miss and
    writes return ``False`` (cachelib's "not stored"); with ``"raise"`` it raises
    :class:`~statekit.errors.BackendUnavailable`. A value the codec cannot encode
    raises :class:`UnencodableValue` (a ``pickle.PickleError``, as cachelib says).
    Thread-safe, like the :class:`~statekit.cache.Cache` under it.
    """

    #: a cachelib serializer to use instead of the statekit codec (``None``: the codec)
    serializer: Any = None

    def __init__(
        self,
        url: str | None = None,
        *,
        default_timeout: int | dt.timedelta = 300,
        key_prefix: str | Callable[[], str] | None = None,
        ignore_delete_many_errors: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(default_timeout=default_timeout,
                         ignore_delete_many_errors=ignore_delete_many_errors)
        options.setdefault("namespace", "cachelib")
        if options.get("serializer") is None:
            options["serializer"] = WebJSONSerializer()
        self.key_prefix = key_prefix or ""
        self._url = url
        self._options = options
        self.cache = self._build(self.serializer)  # a subclass may set serializer

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting ``serializer`` (as Flask-Caching does for ``CACHE_SERIALIZER``)
        switches the codec."""
        super().__setattr__(name, value)
        if name == "serializer" and "cache" in self.__dict__:
            old = self.cache
            self.cache = self._build(value)
            if self._options.get("client") is None:
                old.close()

    def _build(self, serializer: Any) -> Cache:
        options = dict(self._options)
        if serializer is not None:
            options["serializer"] = CachelibCodec(serializer)
        return Cache(self._url, default_ttl=None, **options)

    def _ttl(self, timeout: int | dt.timedelta | None) -> float | None:
        seconds = self._normalize_timeout(timeout)
        return None if seconds == 0 else float(seconds)

    def _k(self, key: Any) -> str:
        prefix = self.key_prefix if isinstance(self.key_prefix, str) else self.key_prefix()
        return f"{prefix}{key}"  # as cachelib's Redis cache does, for a callable key too

    def get(self, key: str) -> Any:
        return self.cache.get(self._k(key))

    def get_many(self, *keys: str) -> list[Any]:
        made = [self._k(k) for k in keys]
        found = self.cache.get_many(made)
        return [found.get(k) for k in made]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def set(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.cache.delete(self._k(key))
            return True
        with unencodable_as_pickle_error():
            return self.cache.set(self._k(key), value, ttl=ttl)

    def add(self, key: str, value: Any, timeout: int | dt.timedelta | None = None) -> bool:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            return not self.cache.has(self._k(key))
        with unencodable_as_pickle_error():
            return self.cache.add(self._k(key), value, ttl=ttl)

    def set_many(self, mapping: dict[str, Any], timeout: int | dt.timedelta | None = None) -> list[Any]:
        ttl = self._ttl(timeout)
        if ttl is not None and ttl < 0:
            self.cache.delete_many([self._k(k) for k in mapping])
            return list(mapping)
        with unencodable_as_pickle_error():
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
