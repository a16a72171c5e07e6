"""Django cache backend on statekit::

    CACHES = {
        "default": {
            "BACKEND": "django_statekit.cache.StatekitCache",
            "LOCATION": "redis://127.0.0.1:6379/0",   # or STATEKIT_CACHE_URL / _REDIS_URL
            "TIMEOUT": 300,                           # None: never expire; 0: do not cache
            "OPTIONS": {"near_cache": 10_000, "on_error": "miss"},
        }
    }

A full :class:`django.core.cache.backends.base.BaseCache`: versions, ``KEY_PREFIX``,
``KEY_FUNCTION``, timeouts with Django's meaning, atomic ``add`` and ``incr``
(``incr`` of a missing key raises ``ValueError``), one round trip for the
``*_many`` calls. The default codec is statekit's *signed* pickle keyed with
``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``, so keys rotate), so ``cache_page``
and ``{% cache %}`` can store any object while a forged payload in Redis is never
unpickled. An entry the codec refuses (forged, written before a change of codec,
or signed with a ``SECRET_KEY`` no longer listed) reads as a miss, as Django's
own backends treat a missing key: ``get()`` returns the default and
``cache_page`` renders again. ``clear()`` empties this cache's namespace only
(``OPTIONS["namespace"]``, default ``"django"``), never the Redis database.

A value the codec cannot encode raises :class:`UnencodableValue`, both statekit's
:class:`~statekit.errors.SerializationError` and the ``pickle.PickleError`` Django's
cache contract names; ``incr`` of a value that is not an integer raises
``TypeError``, as Django's own backends do.

``OPTIONS`` takes any :class:`statekit.cache.Cache` keyword argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from statekit.cache import Cache
from statekit.errors import StatekitError, UnencodableValue
from statekit.serializers import unencodable_as_pickle_error

from .conf import get_settings

__all__ = ["StatekitCache", "UnencodableValue"]




class StatekitCache(BaseCache):
    """Django ``BaseCache`` backend over :class:`statekit.cache.Cache`. Thread-safe:
    one instance may serve every thread (Django makes one per thread anyway)."""

    def __init__(self, location: str | None, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        settings = get_settings()
        url = location or settings.cache_url
        options.setdefault("namespace", "django")
        options.setdefault("prefix", settings.key_prefix)
        if "serializer" not in options:
            options["serializer"] = "signed-pickle"
        if options["serializer"] == "signed-pickle":
            options.setdefault("secret_keys", settings.secret_keys)
        self._cache = Cache(url or None, default_ttl=None, **options)

    @property
    def statekit(self) -> Cache:
        """The underlying :class:`statekit.cache.Cache` (for ``lock``, ``stats`` ...)."""
        return self._cache

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live; ``None`` for never; a value <= 0 means "expire now"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return float(timeout)

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return not self._cache.has(k)
        with unencodable_as_pickle_error():
            return self._cache.add(k, value, ttl=ttl)

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._cache.get(self.make_and_validate_key(key, version=version), default)

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            self._cache.delete(k)
        else:
            with unencodable_as_pickle_error():
                self._cache.set(k, value, ttl=ttl)

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return self._cache.delete(k)
        return self._cache.touch(k, ttl=ttl)

    def get_or_set(self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> Any:
        """Django's ``get_or_set`` with statekit's stampede protection: one process
        computes a missing value (a callable *default*) while the others wait."""
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return super().get_or_set(key, default, timeout=timeout, version=version)
        with unencodable_as_pickle_error():
            return self._cache.get_or_set(self.make_and_validate_key(key, version=version), default,
                                          ttl=ttl)

    def delete(self, key: str, version: int | None = None) -> bool:
        return self._cache.delete(self.make_and_validate_key(key, version=version))

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        made = {self.make_and_validate_key(k, version=version): k for k in keys}
        return {made[k]: v for k, v in self._cache.get_many(list(made)).items()}

    def has_key(self, key: str, version: int | None = None) -> bool:
        return self._cache.has(self.make_and_validate_key(key, version=version))

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        k = self.make_and_validate_key(key, version=version)
        try:
            return self._cache.incr(k, delta, create=False)
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        except ValueError as e:
            if isinstance(e, StatekitError):
                raise
            raise TypeError(f"the value of key '{key}' is not an integer") from e

    def decr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version=version)

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        made = {self.make_and_validate_key(k, version=version): v for k, v in data.items()}
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            self._cache.delete_many(list(made))
            return []
        with unencodable_as_pickle_error():
            return [] if self._cache.set_many(made, ttl=ttl) else list(data)

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        self._cache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def clear(self) -> None:
        """Empty this cache's namespace in O(1); the rest of Redis is untouched."""
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request: connections are kept (they are
        per thread and reused), so there is nothing to do."""
