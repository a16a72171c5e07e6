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
``TypeError``, as Django's own backends do, and one whose result leaves Redis'
signed 64-bit integers ``OverflowError`` (the value unchanged). ``incr_version``
keeps the time the value had left, as django-redis's does.

``OPTIONS`` takes any :class:`statekit.cache.Cache` keyword argument, and
django-redis's ``REVERSE_KEY_FUNCTION`` (see :meth:`StatekitCache.iter_keys`); any
other key (django-redis's ``CLIENT_CLASS``, ``PASSWORD``, ``SOCKET_TIMEOUT`` ...,
Django's ``MAX_ENTRIES``) is an ``ImproperlyConfigured`` naming it and what statekit
takes instead. ``LOCATION`` is one URL (a list of one is taken); several servers
(django-redis's replicas) are refused: replicas come through ``redis+sentinel://``.
With no ``LOCATION`` and no ``STATEKIT_CACHE_URL``/``STATEKIT_REDIS_URL``, the backend
is refused at its creation (``ImproperlyConfigured`` naming ``LOCATION``).
django-redis's ``DJANGO_REDIS_IGNORE_EXCEPTIONS = True`` is not read: a warning, once
per configuration at creation, names ``OPTIONS["on_error"] = "miss"`` (unless set).

**django-redis's extras**, with its semantics, so a django-redis codebase keeps
working: ``ttl``/``pttl`` (``None`` for no expiry, ``0`` for a missing key),
``expire``/``pexpire``/``expire_at``/``pexpire_at``, ``persist``, ``lock`` (a
:class:`statekit.cache.Lock` on the made key with redis-py's ``locked``/``owned`` and
errors, see :class:`RedisStyleLock`; ``timeout=None`` holds it until released),
``delete_pattern``/``iter_keys``/``keys`` (``SCAN`` of this cache's namespace on every
master, never ``KEYS``), ``delete_many`` answering how many it deleted,
``incr(..., ignore_key_check=True)``
and ``set(..., nx=True)``/``set(..., xx=True)``; each with its ``a``-prefixed twin but
``lock``.

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

import contextlib
import datetime as dt
import inspect
import math
import re
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis.exceptions
from django.conf import settings as django_settings
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    default_key_func,
    get_key_func,
    memcached_error_chars_re,
)
from django.core.exceptions import ImproperlyConfigured

from statekit.cache import AsyncCache, Cache, Lock
from statekit.cache.plan import BE, Plan, adrive, drive
from statekit.cache.redis import _glob_escape
from statekit.cache.tools import MAX_TTL, lock_keeper
from statekit.errors import LockError, StatekitError, UnencodableValue
from statekit.serializers import unencodable_as_pickle_error

from .conf import get_settings

__all__ = ["LockNotAcquired", "LockNotOwned", "RedisStyleLock", "StatekitCache", "UnencodableValue"]

T = TypeVar("T")
AnyCache = Cache | AsyncCache
#: names a ``SCAN`` page asks each node for, unless ``itersize`` says otherwise
SCAN_COUNT = 1000

#: Django's test for characters memcached refuses, compiled here (Django's is a lazy object)
_unportable = re.compile(memcached_error_chars_re.pattern).search
_validate_key = BaseCache.validate_key

#: what ``OPTIONS`` takes: :class:`statekit.cache.Cache`'s keyword arguments
_CACHE_OPTIONS = frozenset(inspect.signature(Cache).parameters) - {"url", "_parent"}
_OPTIONS_TAKEN = ("OPTIONS takes statekit.cache.Cache's keyword arguments "
                  f"({', '.join(sorted(_CACHE_OPTIONS))}) and REVERSE_KEY_FUNCTION")
_NOT_CULLED = ("nothing is culled: Redis bounds its memory itself (maxmemory and maxmemory-policy "
               "allkeys-lru on the server)")
#: django-redis's ``OPTIONS`` (and Django's culling ones), with what statekit takes instead
_FOREIGN_OPTIONS = {
    "CLIENT_CLASS": "Sentinel and Cluster come from LOCATION's scheme (redis+sentinel://, redis+cluster://)",
    "PASSWORD": "put it in LOCATION: redis://:password@host:6379/0",
    "SOCKET_TIMEOUT": "a LOCATION option: ?socket_timeout=0.5 (or OPTIONS['timeout'])",
    "SOCKET_CONNECT_TIMEOUT": "a LOCATION option: ?socket_connect_timeout=0.5",
    "CONNECTION_POOL_KWARGS": "LOCATION options: ?max_connections=50, rediss://...?ssl_cert_reqs=none",
    "IGNORE_EXCEPTIONS": "OPTIONS['on_error'] = 'miss'",
    "SERIALIZER": "OPTIONS['serializer']: 'signed-pickle' (the default), 'json' or 'msgpack'",
    "COMPRESSOR": "values are not compressed (compress large values yourself)",
    "MAX_ENTRIES": _NOT_CULLED,
    "CULL_FREQUENCY": _NOT_CULLED,
}
#: where a ``LOCATION`` string names a second server (Django's ``RedisCache`` splits on
#: ``,`` and ``;``): before a scheme, not between a sentinel URL's hosts
_NEXT_SERVER = re.compile(r"[;,](?=[A-Za-z][A-Za-z0-9+.-]*://)")


def _one_url(location: Any) -> str | None:
    """``LOCATION``'s one URL: django-redis and Django take a list (or a ``,``/``;``
    separated string) of servers, primary first; statekit talks to one.

    :raises ImproperlyConfigured: more than one server."""
    servers = list(location) if isinstance(location, list | tuple) else (
        _NEXT_SERVER.split(location) if isinstance(location, str) else [location])
    if len(servers) > 1:
        raise ImproperlyConfigured(
            f"CACHES LOCATION names {len(servers)} servers; a StatekitCache takes one Redis URL: for a "
            "primary with replicas, redis+sentinel://sentinel-host:26379/service; for a cluster, "
            "redis+cluster://host:port")
    return servers[0] if servers else None


#: the configurations already warned about DJANGO_REDIS_IGNORE_EXCEPTIONS (once each)
_warned_ignore_exceptions: set[str] = set()


def _warn_ignore_exceptions(options: dict[str, Any]) -> None:
    """One warning per configuration when django-redis's ``DJANGO_REDIS_IGNORE_EXCEPTIONS``
    is true and ``on_error`` is not ``"miss"``: StatekitCache does not read it (other
    django-redis caches may: a warning, not a refusal)."""
    ignored = getattr(django_settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False)
    if not ignored or options.get("on_error") == "miss":
        return
    key = repr(sorted(options.items()))
    with _shared_lock:
        if key in _warned_ignore_exceptions:
            return
        _warned_ignore_exceptions.add(key)
    warnings.warn("DJANGO_REDIS_IGNORE_EXCEPTIONS = True is django-redis's and a StatekitCache does not "
                  "read it (an outage raises): set OPTIONS['on_error'] = 'miss' in its CACHES entry for "
                  "django-redis's misses", UserWarning, stacklevel=3)


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
        if self.default_timeout is not None and self.default_timeout > MAX_TTL:
            # refused now: each set() and add() without a timeout would raise ValueError
            raise ImproperlyConfigured(f"CACHES TIMEOUT={self.default_timeout!r} is more than a statekit "
                                       f"cache keeps a value ({MAX_TTL:g} s); None keeps values for ever")
        options = dict(params.get("OPTIONS") or {})
        reverse = options.pop("REVERSE_KEY_FUNCTION", None)
        self._reverse_key: Callable[[str], str] | None = None if reverse is None else get_key_func(reverse)
        for name in options:
            if name not in _CACHE_OPTIONS:
                raise ImproperlyConfigured(f"CACHES OPTIONS[{name!r}] is not a StatekitCache option: "
                                           + _FOREIGN_OPTIONS.get(name, _OPTIONS_TAKEN))
        settings = get_settings()
        url = _one_url(location) or settings.cache_url
        if not url:  # refused now, not at the first use (where Cache says "pass Cache(url=...)")
            raise ImproperlyConfigured("a StatekitCache needs a Redis URL: set CACHES[alias]['LOCATION'] "
                                       "(or STATEKIT_CACHE_URL / STATEKIT_REDIS_URL)")
        _warn_ignore_exceptions(options)
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

    def _arun(self, plan: Plan[T]) -> Awaitable[T]:
        """*plan* run on the async cache: :func:`adrive`'s coroutine itself (no frame of
        its own to await it through)."""
        return adrive(plan, self._acache._effect)

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

    def _replace(self, c: AnyCache, key: str, value: Any, timeout: Any, version: int | None) -> Plan[bool]:
        """django-redis' ``set(xx=True)``: store only over a value ``get`` finds; a
        timeout <= 0 deletes it, answering whether it was there (as django-redis)."""
        k = self.make_and_validate_key(key, version=version)
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            return (yield from c._delete(k))
        with unencodable_as_pickle_error():
            return (yield from c._replace(k, value, ttl))

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

    def _incr(self, c: AnyCache, key: str, delta: int, version: int | None, create: bool) -> Plan[int]:
        """``incr``; with django-redis's *create* (``ignore_key_check``) a missing key
        starts at 0 (no expiry), else it raises ``ValueError`` as Django's. A value that
        is not an integer is ``TypeError``; an integer whose sum leaves Redis' signed
        64 bits (or that is outside them) is ``OverflowError``, the value unchanged."""
        k = self.make_and_validate_key(key, version=version)
        if type(delta) is int and delta not in _INT64:  # no value could take it
            raise _overflow(key, delta, str(delta))
        try:
            return (yield from c._incr(k, delta, None, create))
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        except ValueError as e:
            if isinstance(e, StatekitError):
                raise
            refused = e
        value = yield from c._get(k, None)  # Redis' one reply covers both cases: tell them apart
        if type(value) is int:
            raise _overflow(key, delta, f"{value} {'-' if delta < 0 else '+'} {abs(delta)}") from refused
        raise TypeError(f"the value of key '{key}' is not an integer") from refused

    def _set_many(self, c: AnyCache, data: dict[str, Any], timeout: Any,
                  version: int | None) -> Plan[list[str]]:
        made = {self.make_and_validate_key(k, version=version): v for k, v in data.items()}
        ttl = self._ttl(timeout)
        if ttl is not None and ttl <= 0:
            yield from c._delete_many(list(made))
            return []
        with unencodable_as_pickle_error():
            return [] if (yield from c._set_many(made, ttl)) else list(data)

    def _seconds_left(self, c: AnyCache, key: str, version: int | None) -> Plan[float | None]:
        return (yield from c._ttl(self.make_and_validate_key(key, version=version)))

    def _incr_version(self, c: AnyCache, key: str, delta: int, version: int | None) -> Plan[int]:
        """``incr_version`` as django-redis': the value moves to ``version + delta``
        with the time it had left (Django's own gives it the default ``TIMEOUT``, so a
        value that never expired did 300 s later). Not atomic, as either: a ``get``
        and ``ttl``, a ``set``, a ``delete``."""
        if version is None:
            version = self.version
        old = self.make_and_validate_key(key, version=version)
        left = yield from c._ttl(old)
        value = yield from c._get(old, self._missing_key)
        if left is None or value is self._missing_key:
            raise ValueError(f"Key '{key}' not found")
        new = self.make_and_validate_key(key, version=version + delta)
        with unencodable_as_pickle_error():
            stored = yield from c._set(new, value, None if math.isinf(left) else left)
        if stored:  # not when on_error="miss" dropped the set: the value stays where it was
            yield from c._delete(old)
        return version + delta

    def _pattern(self, pattern: str, version: int | None, prefix: str | None) -> str:
        """django-redis's ``make_pattern``: *pattern* (a glob) through the key function,
        with the prefix and version escaped (their ``*``, ``?``, ``[`` match themselves)."""
        return str(self.key_func(pattern, _glob_escape(self.key_prefix if prefix is None else prefix),
                                 _glob_escape(str(self.version if version is None else version))))

    def _keys_page(self, c: AnyCache, match: str, state: Any,
                   count: int | None) -> Plan[tuple[Any, list[str]]]:
        return (yield from c._scan(match, state, count or SCAN_COUNT))

    def _delete_pattern(self, c: AnyCache, pattern: str, version: int | None, prefix: str | None,
                        itersize: int | None) -> Plan[int]:
        """Delete every key matching *pattern*, one ``SCAN`` page at a time (each page's
        keys in one ``delete_many``: near copies dropped here and, by Redis'
        invalidations, in every process); returns how many were deleted."""
        match = self._pattern(pattern, version, prefix)
        deleted, state = 0, None
        while True:
            state, made = yield from self._keys_page(c, match, state, itersize)
            if made:
                deleted += yield from c._delete_many(made)
            if state is None:
                return deleted

    def _reverse(self, version: int | None) -> Callable[[str], str]:
        """The user's key of a made key (``iter_keys``, ``keys``): ``REVERSE_KEY_FUNCTION``
        if given; for Django's own key function, the made key less ``<prefix>:<version>:``.

        :raises ImproperlyConfigured: a custom ``KEY_FUNCTION`` without a reverse."""
        if self._reverse_key is not None:
            return self._reverse_key
        if self.key_func is not default_key_func:
            raise ImproperlyConfigured(
                "iter_keys()/keys() return the keys you gave, and this cache's KEY_FUNCTION is not "
                "Django's: set OPTIONS['REVERSE_KEY_FUNCTION'] to the function (or its dotted path) "
                "that turns a made key back into yours")
        head = len(f"{self.key_prefix}:{self.version if version is None else version}:")
        return lambda made: made[head:]

    def _expiry(self, timeout: Any, unit: float = 1.0) -> Any:
        """django-redis's *timeout* of ``expire`` (seconds, a ``timedelta``) or, with
        *unit* ``0.001``, of ``pexpire`` (milliseconds) as Django's timeout (seconds)."""
        if timeout is DEFAULT_TIMEOUT or timeout is None:
            return timeout
        if isinstance(timeout, dt.timedelta):
            return timeout.total_seconds()
        return timeout * unit

    @staticmethod
    def _until(when: Any, unit: float = 1.0) -> float:
        """Seconds from now to *when* (a Unix time in seconds, or with *unit* ``0.001``
        in milliseconds, or a ``datetime``: naive is local time, as redis-py reads it)."""
        at = when.timestamp() if isinstance(when, dt.datetime) else when * unit
        return float(at - time.time())

    # -- sync -------------------------------------------------------------------------

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._run(self._add(self._cache, key, value, timeout, version))

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return self._cache.get(self.make_and_validate_key(key, version=version), default)

    def set(  # type: ignore[override]  # django-redis' nx and xx answer whether it stored
            self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None,
            nx: bool = False, xx: bool = False) -> bool | None:
        """Django's ``set``; django-redis's *nx* stores only a missing key (``add``),
        its *xx* only a key ``get`` finds (:meth:`statekit.cache.Cache.replace`: a
        ``get_or_set`` value past its timeout, kept to be served stale, is not one);
        with either it returns whether it stored.

        :raises ValueError: both *nx* and *xx*."""
        if nx and xx:
            raise ValueError("set(nx=True, xx=True): nx and xx exclude each other")
        if nx:
            return self.add(key, value, timeout, version=version)
        if xx:
            return self._run(self._replace(self._cache, key, value, timeout, version))
        self._run(self._set(self._cache, key, value, timeout, version))
        return None

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

    def incr(self, key: str, delta: int = 1, version: int | None = None,
             ignore_key_check: bool = False) -> int:
        """Django's ``incr``; with django-redis's *ignore_key_check* a missing key is
        created (at *delta*, no expiry) instead of raising ``ValueError``."""
        return self._run(self._incr(self._cache, key, delta, version, ignore_key_check))

    def decr(self, key: str, delta: int = 1, version: int | None = None,
             ignore_key_check: bool = False) -> int:
        return self.incr(key, -delta, version=version, ignore_key_check=ignore_key_check)

    def incr_version(self, key: str, delta: int = 1, version: int | None = None) -> int:
        """Django's ``incr_version`` (and so ``decr_version``), keeping the time the
        value had left as django-redis does (Django's gives it the default timeout)."""
        return self._run(self._incr_version(self._cache, key, delta, version))

    def set_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                 version: int | None = None) -> list[str]:
        return self._run(self._set_many(self._cache, data, timeout, version))

    def delete_many(  # type: ignore[override]  # django-redis' answers the count
            self, keys: Iterable[str], version: int | None = None) -> int | None:
        """Django's ``delete_many``, answering as django-redis' does: how many of *keys*
        existed (``None`` for no keys)."""
        made = [self.make_and_validate_key(k, version=version) for k in keys]
        return self._cache.delete_many(made) if made else None

    def clear(self) -> None:
        """Empty this cache's namespace in O(1); the rest of Redis is untouched."""
        self._cache.clear()

    # -- django-redis's extras (sync) -----------------------------------------------------

    def ttl(self, key: str, version: int | None = None) -> int | None:
        """django-redis's ``ttl``: whole seconds *key* has left (rounded as Redis'
        ``TTL``), ``None`` if it never expires, ``0`` if it is missing. For a value of
        ``get_or_set``: until it is due to be recomputed."""
        return _whole(self._run(self._seconds_left(self._cache, key, version)), 1.0)

    def pttl(self, key: str, version: int | None = None) -> int | None:
        """:meth:`ttl` in milliseconds."""
        return _whole(self._run(self._seconds_left(self._cache, key, version)), 1000.0)

    def expire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        """Give *key* a new lifetime of *timeout* seconds (or a ``timedelta``;
        ``DEFAULT_TIMEOUT`` the cache's, ``None`` none); ``False`` if it is missing. A
        *timeout* of 0 or less deletes it, as Redis' ``EXPIRE`` does."""
        return self.touch(key, self._expiry(timeout), version=version)

    def pexpire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        """:meth:`expire` with *timeout* in milliseconds."""
        return self.touch(key, self._expiry(timeout, 0.001), version=version)

    def expire_at(self, key: str, when: Any, version: int | None = None) -> bool:
        """:meth:`expire` until *when* (a Unix time, or a ``datetime``); a time past
        deletes *key*."""
        return self.touch(key, self._until(when), version=version)

    def pexpire_at(self, key: str, when: Any, version: int | None = None) -> bool:
        """:meth:`expire_at` with *when* in milliseconds (or a ``datetime``)."""
        return self.touch(key, self._until(when, 0.001), version=version)

    def persist(self, key: str, version: int | None = None) -> bool:
        """Remove *key*'s expiry; ``True`` only if it had one (``False`` if it is
        missing or never expires), as Redis' ``PERSIST`` and django-redis."""
        return self._cache.persist(self.make_and_validate_key(key, version=version))

    def lock(self, key: str, version: int | None = None, timeout: float | None = None, sleep: float = 0.1,
             blocking: bool = True, blocking_timeout: float | None = None,
             thread_local: bool = True) -> RedisStyleLock:
        """django-redis's ``lock``: a lock named by the made key (versions and
        ``KEY_PREFIX`` as for a value), shared by every process of this cache; a context
        manager with ``acquire``/``release``. *timeout* (seconds) is how long it lives
        without a ``release``; ``None`` (django-redis' default: no expiry) keeps it
        while held: the process extends it every ``lock_ttl / 3`` seconds, so a crashed
        holder's lock expires ``lock_ttl`` seconds later instead of never. *sleep* is
        not used (statekit polls from 5 ms up to 100 ms).

        :raises ValueError: *thread_local* false (a statekit lock is held by the thread
            that took it)."""
        if not thread_local:
            raise ValueError("lock(thread_local=False) is not supported: a statekit lock is held, "
                             "and released, by the thread that acquired it")
        made = self._cache._check_key(self.make_and_validate_key(key, version=version))
        return RedisStyleLock(self._cache, made, timeout, blocking, blocking_timeout)

    def delete_pattern(self, pattern: str, version: int | None = None, prefix: str | None = None,
                       itersize: int | None = None) -> int:
        """Delete the keys of this cache matching the glob *pattern* (``"foo_*"``), in
        this version (or *version*) and ``KEY_PREFIX`` (or *prefix*); returns how many
        were deleted. ``SCAN`` of this cache's namespace on every master (about
        *itersize* names per call, default 1000), never ``KEYS``; each page's keys
        are deleted together, their near copies with them in every process. Not atomic:
        a key written while it runs may stay."""
        return self._run(self._delete_pattern(self._cache, pattern, version, prefix, itersize))

    def iter_keys(self, search: str, itersize: int | None = None,
                  version: int | None = None) -> Iterator[str]:
        """The keys (as given to ``set``) matching the glob *search*, page by page
        (``SCAN``, as :meth:`delete_pattern`); a key may come twice. With a custom
        ``KEY_FUNCTION``, ``OPTIONS["REVERSE_KEY_FUNCTION"]`` turns made keys back."""
        reverse = self._reverse(version)
        match, state = self._pattern(search, version, None), None
        while True:
            state, made = self._run(self._keys_page(self._cache, match, state, itersize))
            yield from map(reverse, made)
            if state is None:
                return

    def keys(self, search: str, version: int | None = None) -> list[str]:
        """:meth:`iter_keys`, listed once each (``SCAN``, not ``KEYS``: Redis is never
        blocked by it)."""
        return list(dict.fromkeys(self.iter_keys(search, version=version)))

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request: connections are kept (they are
        per thread and reused), so there is nothing to do."""

    # -- async: the same plans, awaited on the AsyncCache (no thread hop) ------------------

    async def aadd(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool:
        return await self._arun(self._add(self._acache, key, value, timeout, version))

    async def aget(self, key: str, default: Any = None, version: int | None = None) -> Any:
        return await self._acache.get(self.make_and_validate_key(key, version=version), default)

    async def aset(  # type: ignore[override]  # as set()
            self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None,
            nx: bool = False, xx: bool = False) -> bool | None:
        """:meth:`set`, awaited."""
        if nx and xx:
            raise ValueError("set(nx=True, xx=True): nx and xx exclude each other")
        if nx:
            return await self.aadd(key, value, timeout, version=version)
        if xx:
            return await self._arun(self._replace(self._acache, key, value, timeout, version))
        await self._arun(self._set(self._acache, key, value, timeout, version))
        return None

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

    async def aincr(self, key: str, delta: int = 1, version: int | None = None,
                    ignore_key_check: bool = False) -> int:
        return await self._arun(self._incr(self._acache, key, delta, version, ignore_key_check))

    async def adecr(self, key: str, delta: int = 1, version: int | None = None,
                    ignore_key_check: bool = False) -> int:
        return await self.aincr(key, -delta, version=version, ignore_key_check=ignore_key_check)

    async def aincr_version(self, key: str, delta: int = 1, version: int | None = None) -> int:
        """:meth:`incr_version`, awaited (and so ``adecr_version``)."""
        return await self._arun(self._incr_version(self._acache, key, delta, version))

    async def aset_many(self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: int | None = None) -> list[str]:
        return await self._arun(self._set_many(self._acache, data, timeout, version))

    async def adelete_many(  # type: ignore[override]  # as delete_many()
            self, keys: Iterable[str], version: int | None = None) -> int | None:
        """:meth:`delete_many`, awaited."""
        made = [self.make_and_validate_key(k, version=version) for k in keys]
        return (await self._acache.delete_many(made)) if made else None

    async def aclear(self) -> None:
        """:meth:`clear`, awaited."""
        await self._acache.clear()

    # -- django-redis's extras (async) ----------------------------------------------------

    async def attl(self, key: str, version: int | None = None) -> int | None:
        """:meth:`ttl`, awaited."""
        return _whole(await self._arun(self._seconds_left(self._acache, key, version)), 1.0)

    async def apttl(self, key: str, version: int | None = None) -> int | None:
        """:meth:`pttl`, awaited."""
        return _whole(await self._arun(self._seconds_left(self._acache, key, version)), 1000.0)

    async def aexpire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        """:meth:`expire`, awaited."""
        return await self.atouch(key, self._expiry(timeout), version=version)

    async def apexpire(self, key: str, timeout: Any, version: int | None = None) -> bool:
        """:meth:`pexpire`, awaited."""
        return await self.atouch(key, self._expiry(timeout, 0.001), version=version)

    async def aexpire_at(self, key: str, when: Any, version: int | None = None) -> bool:
        """:meth:`expire_at`, awaited."""
        return await self.atouch(key, self._until(when), version=version)

    async def apexpire_at(self, key: str, when: Any, version: int | None = None) -> bool:
        """:meth:`pexpire_at`, awaited."""
        return await self.atouch(key, self._until(when, 0.001), version=version)

    async def apersist(self, key: str, version: int | None = None) -> bool:
        """:meth:`persist`, awaited."""
        return await self._acache.persist(self.make_and_validate_key(key, version=version))

    async def adelete_pattern(self, pattern: str, version: int | None = None, prefix: str | None = None,
                              itersize: int | None = None) -> int:
        """:meth:`delete_pattern`, awaited."""
        return await self._arun(self._delete_pattern(self._acache, pattern, version, prefix, itersize))

    async def aiter_keys(self, search: str, itersize: int | None = None,
                         version: int | None = None) -> AsyncIterator[str]:
        """:meth:`iter_keys`, an async iterator (``async for key in cache.aiter_keys("foo_*")``)."""
        reverse = self._reverse(version)
        match, state = self._pattern(search, version, None), None
        while True:
            state, made = await self._arun(self._keys_page(self._acache, match, state, itersize))
            for k in made:
                yield reverse(k)
            if state is None:
                return

    async def akeys(self, search: str, version: int | None = None) -> list[str]:
        """:meth:`keys`, awaited."""
        return list(dict.fromkeys([k async for k in self.aiter_keys(search, version=version)]))

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to do, as :meth:`close`: each loop's connections are kept for reuse."""


#: the integers Redis counts in (``INCRBY``: signed 64 bits)
_INT64 = range(-(2**63), 2**63)


def _overflow(key: str, delta: int, what: str) -> OverflowError:
    return OverflowError(f"incr of key '{key}' by {delta}: Redis counts in signed 64-bit integers "
                         f"(-2**63 to 2**63 - 1) and {what} is outside them; the value is unchanged")


def _whole(left: float | None, scale: float) -> int | None:
    """statekit's seconds left (``None`` missing, ``inf`` no expiry) as django-redis'
    ``ttl``/``pttl``: ``0`` missing, ``None`` no expiry, else rounded as Redis rounds."""
    if left is None:
        return 0
    return None if math.isinf(left) else int(left * scale + 0.5)


class LockNotAcquired(LockError, redis.exceptions.LockError):
    """``with cache.lock(...)`` did not get the lock in time: statekit's
    :class:`~statekit.errors.LockError`, and redis-py's, which django-redis code catches."""


class LockNotOwned(LockError, redis.exceptions.LockNotOwnedError):
    """``release()``/``extend()`` of a lock this thread does not hold (never taken, or its
    lease lapsed): statekit's :class:`~statekit.errors.LockError`, and redis-py's
    ``LockNotOwnedError``."""


class RedisStyleLock(Lock):
    """:meth:`StatekitCache.lock`'s lock: a :class:`statekit.cache.Lock` with redis-py's
    ``blocking`` default, ``acquire(blocking=, blocking_timeout=)``, ``locked()`` (held
    by anyone) and ``owned()`` (held by this thread), and its errors
    (:class:`LockNotAcquired`, :class:`LockNotOwned`), and with *timeout* ``None`` kept
    (extended by the process's lock keeper) while held by a thread that is alive.
    ``extend(timeout)`` is statekit's: the lock lives *timeout* seconds from now (redis-py
    adds *additional_time* to what is left)."""

    def __init__(self, cache: Cache, name: str, timeout: float | None, blocking: bool,
                 blocking_timeout: float | None) -> None:
        super().__init__(cache, name, cache.lock_ttl if timeout is None else timeout, blocking_timeout)
        self.blocking = blocking
        self.kept = timeout is None

    def acquire(self, blocking: bool | None = None, timeout: float | None = None, *,
                blocking_timeout: float | None = None) -> bool:
        """Take the lock (see :meth:`statekit.cache.Lock.acquire`); *blocking* defaults
        to the lock's, *blocking_timeout* is redis-py's name of *timeout*."""
        taken = super().acquire(self.blocking if blocking is None else blocking,
                                timeout if blocking_timeout is None else blocking_timeout)
        if taken and self.kept:
            self._local.keeper = self.cache._keep(self.cache._be(), self.name, str(self.token),
                                                  threading.current_thread().is_alive)
        return taken

    def __enter__(self) -> RedisStyleLock:
        if not self.acquire():
            raise LockNotAcquired(f"could not acquire lock {self.name[2:]!r} in time")
        return self

    def release(self) -> None:
        """Release the lock (it is no longer extended).

        :raises LockNotOwned: this thread does not hold it."""
        keeper = getattr(self._local, "keeper", None)
        if keeper is not None:
            self._local.keeper = None
            lock_keeper.release(keeper)
        with _not_owned():
            super().release()

    def extend(self, timeout: float | None = None) -> None:
        """Have the lock live *timeout* seconds from now (default: its timeout).

        :raises LockNotOwned: this thread no longer holds it."""
        with _not_owned():
            super().extend(timeout)

    def locked(self) -> bool:
        """redis-py's ``locked()``: whether any process holds the lock (asked of Redis)."""
        return self._holder() is not None

    def owned(self) -> bool:
        """redis-py's ``owned()``: whether this thread holds the lock, as Redis says (a
        lapsed lease is not held)."""
        token = self.token
        return token is not None and self._holder() == token

    def _holder(self) -> str | None:
        holder: str | None = self.cache._effect((BE, "lock_holder", (self.name,), {}))
        return holder


@contextlib.contextmanager
def _not_owned() -> Iterator[None]:
    """statekit's "not held by this owner" :class:`~statekit.errors.LockError` as :class:`LockNotOwned`."""
    try:
        yield
    except LockError as e:
        if isinstance(e, LockNotOwned):
            raise
        raise LockNotOwned(str(e)) from e
