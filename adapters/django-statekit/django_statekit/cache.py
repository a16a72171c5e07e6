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

**Async, natively.** Django's async cache API is a set of ``a``-prefixed methods on the
same backend object (``await cache.aget(k)`` beside ``cache.get(k)``), so one
``StatekitCache`` serves both: every ``a*`` method runs on a
:class:`statekit.cache.AsyncCache` over redis-py's asyncio client (one client per
running event loop) with no ``sync_to_async`` thread hop, and both sides share the
namespace, keys, codec and generation, so a value set by a sync view is read by an
async one and back. Each operation's Django semantics (timeouts ``<= 0``, versions,
error types) is written once as a plan (:mod:`statekit.cache.plan`) that the sync
method runs with calls and the async one with awaits.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Iterable
from typing import Any, TypeVar

from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    memcached_error_chars_re,
)

from statekit.cache import AsyncCache, Cache
from statekit.cache.plan import Plan, adrive, drive
from statekit.errors import StatekitError, UnencodableValue
from statekit.serializers import unencodable_as_pickle_error

from .conf import get_settings

__all__ = ["StatekitCache", "UnencodableValue"]

T = TypeVar("T")
AnyCache = Cache | AsyncCache

#: Django's test for characters memcached refuses, compiled here (Django's is a lazy object)
_unportable = re.compile(memcached_error_chars_re.pattern).search
_validate_key = BaseCache.validate_key

_shared: dict[str, tuple[Cache, AsyncCache]] = {}
_shared_lock = threading.Lock()


def _statekit_caches(url: str | None, options: dict[str, Any]) -> tuple[Cache, AsyncCache]:
    """The :class:`Cache` and :class:`AsyncCache` of one configuration, made once and
    shared by every ``StatekitCache`` built with it: Django's cache handler is
    context-local, so under ASGI it builds a backend object per request, and an
    ``AsyncCache`` of its own per request opened a Redis connection per request
    (left open until garbage collection) and an empty near cache."""
    key = repr((url, sorted(options.items())))
    with _shared_lock:
        pair = _shared.get(key)
        if pair is None:
            pair = _shared[key] = (Cache(url, default_ttl=None, **options),
                                   AsyncCache(url, default_ttl=None, **options))
        return pair


class StatekitCache(BaseCache):
    """Django ``BaseCache`` backend over :class:`statekit.cache.Cache` (sync methods)
    and :class:`statekit.cache.AsyncCache` (the ``a*`` methods, natively async).
    Thread-safe: one instance may serve every thread (Django makes one per thread
    anyway, and one per request under ASGI) and every event loop; the instances of
    one configuration share their statekit caches (connections, near cache,
    breaker, counters)."""

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
        self._cache, self._acache = _statekit_caches(url or None, options)

    @property
    def statekit(self) -> Cache:
        """The underlying :class:`statekit.cache.Cache` (for ``lock``, ``stats`` ...)."""
        return self._cache

    @property
    def statekit_async(self) -> AsyncCache:
        """The underlying :class:`statekit.cache.AsyncCache` of the ``a*`` methods."""
        return self._acache

    def make_and_validate_key(self, key: Any, version: int | None = None) -> str:
        """Django's, with its memcached portability check skipped where it has nothing
        to say: a key of at most 250 characters with no control character or space
        gives no warning. Any other key, and every key under a ``validate_key`` of a
        subclass (or patched on the object), goes through ``validate_key`` as in
        Django, so the warnings are the same; only their cost changes (Django's
        check builds a generator and touches a lazy regex per call: ~1.6 µs of an
        ``aget``)."""
        made: str = self.make_key(key, version=version)
        if (type(made) is not str or len(made) > MEMCACHE_MAX_KEY_LENGTH or _unportable(made) is not None
                or getattr(self.validate_key, "__func__", None) is not _validate_key):
            self.validate_key(made)
        return made

    def _run(self, plan: Plan[T]) -> T:
        return drive(plan, self._cache._effect)

    async def _arun(self, plan: Plan[T]) -> T:
        return await adrive(plan, self._acache._effect)

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live; ``None`` for never; a value <= 0 means "expire now"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return float(timeout)

    # -- each operation once, as a plan on either cache --------------------------------

    def _add(self, c: AnyCache, key: str, value: Any, timeout: Any, version: int | None) -> Plan[bool]:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return (yield from c._ttl(k)) is None
        with unencodable_as_pickle_error():
            return (yield from c._add(k, value, ttl))

    def _set(self, c: AnyCache, key: str, value: Any, timeout: Any, version: int | None) -> Plan[None]:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            yield from c._delete(k)
        else:
            with unencodable_as_pickle_error():
                yield from c._set(k, value, ttl)

    def _touch(self, c: AnyCache, key: str, timeout: Any, version: int | None) -> Plan[bool]:
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return (yield from c._delete(k))
        return (yield from c._touch(k, ttl))

    def _get_or_set(self, c: AnyCache, key: str, default: Any, ttl: float | None,
                    version: int | None) -> Plan[Any]:
        with unencodable_as_pickle_error():
            return (yield from c._get_or_set(self.make_and_validate_key(key, version=version), default,
                                             ttl, None))

    def _get_many(self, c: AnyCache, keys: Iterable[str], version: int | None) -> Plan[dict[str, Any]]:
        made = {self.make_and_validate_key(k, version=version): k for k in keys}
        return {made[k]: v for k, v in (yield from c._get_many(list(made))).items()}

    def _incr(self, c: AnyCache, key: str, delta: int, version: int | None) -> Plan[int]:
        k = self.make_and_validate_key(key, version=version)
        try:
            return (yield from c._incr(k, delta, None, False))
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        except ValueError as e:
            if isinstance(e, StatekitError):
                raise
            raise TypeError(f"the value of key '{key}' is not an integer") from e

    def _set_many(self, c: AnyCache, data: dict[str, Any], timeout: Any,
                  version: int | None) -> Plan[list[str]]:
        made = {self.make_and_validate_key(k, version=version): v for k, v in data.items()}
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            yield from c._delete_many(list(made))
            return []
        with unencodable_as_pickle_error():
            return [] if (yield from c._set_many(made, ttl)) else list(data)

    # -- sync -------------------------------------------------------------------------

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._run(self._add(self._cache, key, value, timeout, version))

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._cache.get(self.make_and_validate_key(key, version=version), default)

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        self._run(self._set(self._cache, key, value, timeout, version))

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._run(self._touch(self._cache, key, timeout, version))

    def get_or_set(self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> Any:
        """Django's ``get_or_set`` with statekit's stampede protection: one process
        computes a missing value (a callable *default*) while the others wait."""
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return super().get_or_set(key, default, timeout=timeout, version=version)
        return self._run(self._get_or_set(self._cache, key, default, ttl, version))

    def delete(self, key: str, version: int | None = None) -> bool:
        return self._cache.delete(self.make_and_validate_key(key, version=version))

    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        return self._run(self._get_many(self._cache, keys, version))

    def has_key(self, key: str, version: int | None = None) -> bool:
        return self._cache.has(self.make_and_validate_key(key, version=version))

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self._run(self._incr(self._cache, key, delta, version))

    def decr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return self.incr(key, -delta, version=version)

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        return self._run(self._set_many(self._cache, data, timeout, version))

    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        self._cache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    def clear(self) -> None:
        """Empty this cache's namespace in O(1); the rest of Redis is untouched."""
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request: connections are kept (they are
        per thread and reused), so there is nothing to do."""

    # -- async: the same plans, awaited on the AsyncCache (no thread hop) ------------------

    async def aadd(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool:
        return await self._arun(self._add(self._acache, key, value, timeout, version))

    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return await self._acache.get(self.make_and_validate_key(key, version=version), default)

    async def aset(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> None:
        await self._arun(self._set(self._acache, key, value, timeout, version))

    async def atouch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return await self._arun(self._touch(self._acache, key, timeout, version))

    async def aget_or_set(self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT,
                          version: int | None = None) -> Any:
        """:meth:`get_or_set`, awaited (a *default* that is an ``async def`` is awaited)."""
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:  # nothing is stored: Django's own, the default awaited here
            if callable(default):
                default = default()
                if inspect.isawaitable(default):
                    default = await default
            return await super().aget_or_set(key, default, timeout=timeout, version=version)
        return await self._arun(self._get_or_set(self._acache, key, default, ttl, version))

    async def adelete(self, key: str, version: int | None = None) -> bool:
        return await self._acache.delete(self.make_and_validate_key(key, version=version))

    async def aget_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        return await self._arun(self._get_many(self._acache, keys, version))

    async def ahas_key(self, key: str, version: int | None = None) -> bool:
        return await self._acache.has(self.make_and_validate_key(key, version=version))

    async def aincr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return await self._arun(self._incr(self._acache, key, delta, version))

    async def adecr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version=version)

    async def aset_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: int | None = None) -> list[str]:
        return await self._arun(self._set_many(self._acache, data, timeout, version))

    async def adelete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        await self._acache.delete_many([self.make_and_validate_key(k, version=version) for k in keys])

    async def aclear(self) -> None:
        """:meth:`clear`, awaited."""
        await self._acache.clear()

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to do, as :meth:`close`: each loop's connections are kept for reuse."""
