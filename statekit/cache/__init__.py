"""``statekit.cache``: a shared cache on Redis (or ``memory://`` for tests).

The backend is found by URL scheme (:data:`BACKENDS`; another distribution adds a
scheme with an entry point in the group ``statekit.cache``) and implements
:class:`~statekit.cache.protocol.CacheBackend`; ``memory://`` is the Redis backend
on an in-process fakeredis, so it runs the same script (no near cache there).

For asyncio code, :class:`~statekit.cache.aio.AsyncCache` is the same cache awaited
(same keys, codecs and generations: sync and async processes share a namespace); both
run the same plans (:mod:`statekit.cache.plan`), only the I/O differs.

This module is two things, like ``django.core.cache``:

* :class:`Cache`, the class: ``Cache("redis://127.0.0.1:6379/0")``;
* the lazily configured default cache: ``from statekit import cache;
  cache.get("k")`` proxies to a :class:`Cache` built on first use from
  ``STATEKIT_CACHE_URL`` / ``STATEKIT_REDIS_URL`` (:meth:`Settings.from_env
  <statekit.config.Settings.from_env>`). Nothing connects at import time.

Values go through a codec (JSON by default); integers are stored as their decimal
text so ``incr`` is a Redis ``INCRBY``. Every key lives in a *namespace* whose
generation counter makes :meth:`Cache.clear` O(1) and cluster-safe; the old
generation's keys are then removed in the background, in bounded chunks.

:meth:`Cache.get_or_set` and :meth:`Cache.cached` protect against stampedes: one
caller (across processes and machines) recomputes under a short Redis lock while
the others wait briefly or get the stale value, and values are refreshed early
with a probability that grows as expiry nears, weighted by how long they took to
compute (XFetch, Vattani et al. 2015).

Failure policy: every call is bounded by the client's timeouts. With
``on_error="raise"`` (the default) an outage raises
:class:`~statekit.errors.BackendUnavailable`; with ``on_error="miss"`` reads return
the default and writes are dropped (both counted). A dropped write is not done later
(nothing is queued to replay, as with django-redis' ``IGNORE_EXCEPTIONS``): a
``delete`` or ``clear`` dropped during an outage leaves the old value readable once
Redis is back, until its TTL (for ever without one). Where a change must not leave
an old value behind, delete with ``on_error="raise"`` (another :class:`Cache` on the
same URL, prefix and namespace shares the keys) and handle the error, or give such
values a short TTL. After ``failure_threshold``
consecutive failures a circuit breaker fails calls at once (:meth:`Cache.lock`'s
acquire too), without I/O, and lets a trial call through every ``breaker_reset``
seconds, so it closes on its own. A failure is a call Redis did not answer (a timeout,
a lost connection); an error reply is an answer (``OOM`` from a Redis at
``maxmemory`` that still serves reads, an ``incr`` of a value that is not an integer):
it raises as before but counts as a success, so it never opens the breaker and a
half-open trial it answers closes it.

An entry this cache cannot decode (written with another codec or secret key by an
older deploy, tampered with, truncated) is a miss on every read path, never an
error: it is counted (``undecodable``), logged once per key per process at WARNING
(logger ``statekit.cache``), and :meth:`Cache.get_or_set` / :meth:`Cache.cached`
recompute the value and overwrite it, so the cache heals on its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import json
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from ..backends import load_backend
from ..breaker import CLOSED, STATE_VALUES, CircuitBreaker
from ..config import _MAX_SECONDS, SCHEMES, Settings, number, parse_url, url_and_scheme
from ..errors import BackendUnavailable, ConfigError, InvalidKey, SerializationError
from ..metrics import Counters
from ..redis import _timed_out, outcome_unknown
from ..serializers import JSONSerializer, Serializer, WebJSONSerializer, _key_list, get_serializer
from .near import Entry, InvalidationListener, NearCache
from .plan import BATCH, BE, CMD, COMPUTE, GET, HOLD, LOCK, RUN, SCAN, SLEEP, Plan, drive
from .protocol import ENVELOPE, CacheBackend, expiry
from .tools import (
    DEFAULT,
    MAX_TTL,
    TTL,
    CachedFunction,
    Lock,
    _check_options,
    _function_of,
    _stale_seconds,
    _ttl_seconds,
    lock_keeper,
)

if TYPE_CHECKING:
    from ..redis import RedisClient
    from .aio import AsyncCache

__all__ = ["BACKENDS", "DEFAULT", "AsyncCache", "Cache", "CacheBackend", "CachedFunction", "Lock",
           "configure", "get_default"]

T = TypeVar("T")
_C = TypeVar("_C", bound="_CacheCore")


_ABSENT: Any = object()
_IO = frozenset({CMD, RUN, BATCH, GET, SCAN})  # the effects of a Redis backend's plans

_random = random.Random().random  # noqa: S311 - XFetch jitter; leaves the global random state alone
_ENV = ENVELOPE  # logical expiry (epoch seconds), compute time (seconds)
_ENV_SIZE = 1 + _ENV.size
_MAX_KEY = 1024
_monotonic = time.monotonic
_json_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_time = time.time
_log = logging.getLogger("statekit.cache")

COUNTER_NAMES = ("hits", "misses", "near_hits", "stale", "recomputes", "early_refreshes",
                 "lock_waits", "errors", "dropped_writes", "breaker_opened", "undecodable")

_LOG_KEYS = 1000  # undecodable keys logged one by one per process; past that, counted only
_logged: set[str] = set()
_logged_lock = threading.Lock()


def _log_undecodable(where: str, codec: str, error: Exception) -> None:
    """Log an undecodable entry once per key per process (a bad entry is read on
    every request until it is replaced: one line, not one per request)."""
    with _logged_lock:
        if where in _logged or len(_logged) > _LOG_KEYS:
            return
        _logged.add(where)
        last = len(_logged) > _LOG_KEYS
    _log.warning(
        "cache entry %s could not be decoded with the %s codec (%s): treated as a miss; "
        "get_or_set and cached() recompute and replace it. A codec or secret key changed "
        "between deploys? Counted in statekit_cache_undecodable_total%s", where, codec, error,
        f"; more than {_LOG_KEYS} keys seen, the rest are only counted" if last else "")


class _CacheCounters(Counters):
    """Counters whose hottest ones (hits, misses, near hits) are plain attributes
    bumped without a lock (an increment may very rarely be lost between threads;
    they are metrics, not accounting)."""

    FAST = ("hits", "misses", "near_hits")

    def __init__(self, instance: str) -> None:
        super().__init__("cache", instance, COUNTER_NAMES)
        self.hits = self.misses = self.near_hits = 0

    def _merge(self, out: dict[str, Any]) -> None:
        for name in self.FAST:
            out[name] = out.get(name, 0) + getattr(self, name)

    def counts(self) -> dict[str, int]:
        out = super().counts()
        self._merge(out)
        return out

    def as_dict(self) -> dict[str, float]:
        out = super().as_dict()
        self._merge(out)
        return out

    def get(self, name: str) -> int:
        return super().get(name) + (getattr(self, name) if name in self.FAST else 0)

    def incr(self, name: str, amount: int = 1) -> None:
        if name in self.FAST:
            setattr(self, name, getattr(self, name) + amount)
        else:
            super().incr(name, amount)

    def reset(self) -> None:
        super().reset()
        self.hits = self.misses = self.near_hits = 0


_json_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _plain(v: Any) -> bool:
    """Whether *v* is made only of dicts with str keys, lists and JSON scalars, so
    the JSON codec would write it unchanged (no tagged types)."""
    tv = type(v)
    if tv is dict:
        for k, x in v.items():
            if type(k) is not str or k == "\x00":
                return False
            tx = type(x)
            if tx is str or tx is int or tx is float or tx is bool or x is None:
                continue
            if not _plain(x):
                return False
        return True
    if tv is list:
        for x in v:
            tx = type(x)
            if tx is str or tx is int or tx is float or tx is bool or x is None:
                continue
            if not _plain(x):
                return False
        return True
    return tv is str or tv is float or tv is bool or v is None or tv is int


def _breaker_hook(root: _CacheCore) -> Callable[[str], None]:
    """The breaker's ``on_change``: every cache of *root*'s family (its namespaces and
    theirs share its breaker) reports the change, its ``breaker_state`` gauge and its
    ``breaker_opened`` count (opens since that cache was made, as its other counters
    count). Held weakly: the breaker must not keep a dropped cache alive."""
    ref = weakref.ref(root)

    def changed(state: str) -> None:
        cache = ref()
        family = [cache] if cache is not None else []
        while family:
            cache = family.pop()
            cache.counters.set_gauge("breaker_state", STATE_VALUES[state])
            if state == "open":
                cache.counters.incr("breaker_opened")
            # valuerefs() is a copy taken in one step: a namespace another thread makes
            # meanwhile cannot break the walk (a new one reads the state as it is made)
            family += [c for c in (r() for r in cache._children.valuerefs()) if c is not None]

    return changed


#: the built-in URL schemes: scheme -> "module:Class" (a :class:`CacheBackend`);
#: another distribution adds one by entry point in the group ``statekit.cache``
BACKENDS = {
    "redis": "statekit.cache.redis:RedisCacheBackend",
    "rediss": "statekit.cache.redis:RedisCacheBackend",
    "unix": "statekit.cache.redis:RedisCacheBackend",
    "redis+sentinel": "statekit.cache.redis:RedisCacheBackend",
    "redis+cluster": "statekit.cache.redis:RedisCacheBackend",
    "memory": "statekit.cache.memory:MemoryCacheBackend",
}


class _NamespaceNear(NearCache[Entry]):
    """A namespace's near cache: a flush (the namespace's generation counter was
    invalidated: a clear, maybe in another process) also tells the backend to read
    its generation again (on Cluster it trusts it for a short while otherwise)."""

    on_flush: Callable[[], None] | None = None

    def flush(self) -> None:
        super().flush()
        if self.on_flush is not None:
            self.on_flush()


def _answered(error: BaseException) -> bool:
    """Whether the failure *error* is an error reply (the server answered), not a
    timeout or a lost connection (redis-py's ``ResponseError``, which a connection
    error is not: ``LOADING`` and a Sentinel's ``READONLY`` come as connection errors)."""
    import redis

    cause = error.__cause__
    return isinstance(cause, redis.ResponseError) and not isinstance(cause, redis.ConnectionError)


def _key_sequence(keys: Iterable[str], method: str) -> list[str]:
    """*keys* as a list; one str (or bytes) is a TypeError: iterated, its characters
    would be the keys (``delete_many("user")`` deleted key ``"u"``)."""
    if isinstance(keys, (str, bytes)):
        raise TypeError(f"{method}() takes an iterable of keys, not one {type(keys).__name__} (its "
                        f"characters would be the keys): pass [{keys!r}]")
    return list(keys)


def _backend_class(url: str) -> type[CacheBackend]:
    """The backend class for *url*'s scheme; a built-in scheme's URL is validated too.

    :raises ConfigError: not a URL, a bad one, or no backend has its scheme.
    """
    url, scheme = url_and_scheme(url)
    if not scheme or scheme in BACKENDS or scheme in SCHEMES:
        parse_url(url, kinds=("redis", "memory"))
    cls: type[CacheBackend] = load_backend("cache", scheme, BACKENDS)
    return cls


def _check_name(kind: str, value: str) -> str:
    if not value or any(c in value for c in "{}") or any(ord(c) < 33 for c in value) or len(value) > 128:
        raise ConfigError(
            f"cache {kind} {value!r} must be 1-128 printable characters without braces or spaces"
        )
    return value


class _CacheCore:
    """What :class:`Cache` and :class:`~statekit.cache.aio.AsyncCache` share: the
    settings, codecs, names, near cache, breaker and counters, and every operation
    written once as a plan (:mod:`statekit.cache.plan`) that each side runs with its
    own I/O. The parameters are :class:`Cache`'s."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: RedisClient | None = None,
        prefix: str | None = None,
        namespace: str = "default",
        default_ttl: float | None = 300.0,
        serializer: str | Serializer | None = "json",
        secret_keys: Iterable[str | bytes] | None = None,
        near_cache: bool | int = False,
        near_max_age: float = 60.0,
        on_error: Literal["raise", "miss"] = "raise",
        failure_threshold: int = 5,
        breaker_reset: float = 2.0,
        stale_ttl: float | dt.timedelta = 30.0,
        lock_ttl: float | dt.timedelta = 10.0,
        lock_wait: float = 5.0,
        xfetch_beta: float = 1.0,
        timeout: float | None = None,
        fast_path: bool = True,
        _parent: _CacheCore | None = None,
    ) -> None:
        if on_error not in ("raise", "miss"):
            raise ConfigError(f"on_error must be 'raise' or 'miss', not {on_error!r}")
        # numbers, not text; > 0 and finite when positive (the breaker's reset), else >= 0
        # (inf allowed: a wait for ever)
        for name, value, positive in (
                ("breaker_reset", breaker_reset, True), ("lock_wait", lock_wait, False),
                ("xfetch_beta", xfetch_beta, False), ("near_max_age", near_max_age, False)):
            number(value, f"cache setting {name}", positive=positive, finite=positive, text=False)
        # durations Redis is given (in ms: see MAX_TTL; inf is no TTL to store a get_or_set
        # value with), or that bound a wait: each checked here, not at the first command
        # (an error reply, an OverflowError)
        stale_ttl = number(stale_ttl, "cache setting stale_ttl", maximum=MAX_TTL, text=False, unit="seconds")
        lock_ttl = number(lock_ttl, "cache setting lock_ttl", positive=True, maximum=threading.TIMEOUT_MAX,
                          text=False, unit="seconds",
                          why=" (a compute's lock is extended every lock_ttl / 3 s: "
                              "the longest wait of a thread)")
        if timeout is not None:
            number(timeout, "cache setting timeout", positive=True, maximum=_MAX_SECONDS, text=False,
                   unit="seconds", why=" (as a URL's socket_timeout)")
        if url is not None:
            url = url_and_scheme(url)[0]  # as pasted from an env file: the backends get it stripped
            _backend_class(url)
        self.url = url
        self.client = client
        self._prefix = prefix
        self.namespace_name = _check_name("namespace", namespace)
        self.default_ttl = _ttl_seconds(default_ttl, "cache setting default_ttl", ConfigError)
        self.serializer = serializer
        self.secret_keys = tuple(_key_list(secret_keys or ()))  # a lone str is one key
        self._codec: Serializer = (JSONSerializer() if serializer in (None, "json")
                                   else get_serializer(serializer, secret_keys=self.secret_keys))
        self._plain_json = type(self._codec) in (JSONSerializer, WebJSONSerializer)  # same untagged JSON
        #: the C scanner of the JSON codec's decoder (its tag hook): what its loads() runs,
        #: minus the whitespace checks and the copy (~1 us of a bytes value's 2)
        self._tagged_scan: Callable[[str, int], tuple[Any, int]] | None = (
            self._codec._json_decoder().scan_once  # type: ignore[attr-defined]
            if self._plain_json else None)
        self.near_size = 10_000 if near_cache is True else int(near_cache or 0)
        self.near_max_age = near_max_age
        self.on_error = on_error
        self.stale_ttl = stale_ttl
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.xfetch_beta = xfetch_beta
        self.timeout = timeout
        self.fast_path = fast_path
        self._init_lock: Any = threading.RLock() if _parent is None else _parent._init_lock
        self._parent = _parent
        self._sf_local = threading.local()
        self._backend: Any = None  # a CacheBackend (sync) or an AsyncRedisCacheBackend
        self._near: NearCache[Entry] | None = None
        self._listener: InvalidationListener | None = None
        # weak both ways, so a dropped cache is freed at once and its listener stops
        self._children: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self.counters = _CacheCounters(f"{prefix or 'statekit'}:{namespace}")
        self.breaker: CircuitBreaker = (_parent.breaker if _parent is not None else CircuitBreaker(
            failure_threshold, breaker_reset, on_change=_breaker_hook(self)))
        self.counters.set_gauge("breaker_state", STATE_VALUES[self.breaker.state])

    # -- set-up -----------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        if self._prefix is None:
            self._prefix = Settings.from_env().key_prefix  # STATEKIT_KEY_PREFIX or "statekit"
        return self._prefix

    @property
    def base(self) -> str:
        """The namespace's key base: ``"<prefix>:{<namespace>}:"``."""
        return f"{self.prefix}:{{{self.namespace_name}}}:"

    def _connect(self) -> Any:
        with self._init_lock:
            if self._backend is not None:
                return self._backend
            if self._parent is not None:
                parent_backend = self._parent._connect()
                backend = parent_backend.namespace(self.base)
                listener = self._parent._listener
            else:
                backend, listener = self._build()
                if listener is not None:  # a cache that is dropped stops its listener thread
                    weakref.finalize(self, listener.stop_soon)
            if listener is not None:  # on Cluster it keeps the generation current, near cache or not
                watch = getattr(backend, "watch_generation", None)
                if watch is not None:
                    watch(listener)
            if listener is not None and self.near_size:
                self._near = near = _NamespaceNear(self.near_size, self.near_max_age)
                near.on_flush = getattr(backend, "generation_changed", None)
                for base in getattr(backend, "near_bases", (self.base,)):
                    listener.register(base, near)
            self._listener = listener
            self._backend = backend
            return backend

    def _build(self) -> tuple[Any, InvalidationListener | None]:
        backend = self._new_backend()
        if self.near_size:
            listener = backend.near_listener(self.prefix + ":")
        else:  # Cluster: the generation counters' listener (see statekit.cache.redis)
            make = getattr(backend, "generation_listener", None)
            listener = make() if make is not None else None
        return backend, listener

    def _url(self) -> str:
        """The backend URL: the one given, else the environment's (kept)."""
        url = self.url
        if url is None:
            url = Settings.from_env().cache_url
            if not url:
                raise ConfigError(f"no cache URL: set STATEKIT_CACHE_URL or STATEKIT_REDIS_URL, "
                                  f"or pass {type(self).__name__}(url=...)")
            self.url = url
        _check_name("prefix", self.prefix)
        return url

    def _new_backend(self) -> Any:
        """The backend of this family's first namespace (no I/O)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _new_backend()")

    def namespace(self: _C, name: str) -> _C:
        """A cache over the same connections whose keys live in namespace *name*:
        its :meth:`clear` empties only that namespace, in O(1). On Redis Cluster a
        namespace's keys spread over every slot and node (see
        :mod:`statekit.cache.redis`)."""
        child = self._children.get(name)
        if child is not None:
            return cast(_C, child)
        with self._init_lock:  # two threads' first call for *name* make one cache
            child = self._children.get(name)
            if child is not None:
                return cast(_C, child)
            child = type(self)(
                self.url, client=self.client, prefix=self.prefix, namespace=name,
                default_ttl=self.default_ttl, serializer=self._codec,
                near_cache=self.near_size, near_max_age=self.near_max_age, on_error=self.on_error,
                stale_ttl=self.stale_ttl, lock_ttl=self.lock_ttl, lock_wait=self.lock_wait,
                xfetch_beta=self.xfetch_beta, timeout=self.timeout, fast_path=self.fast_path,
                _parent=self._parent or self,
            )
            self._children[name] = child
            return child

    # -- encoding -----------------------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        if self._plain_json and _plain(value):  # JSON-native: the codec's bytes, minus its tag walk
            try:
                return _json_encode(value).encode("utf-8")
            except (TypeError, ValueError, RecursionError):
                pass  # the codec raises the proper SerializationError
        return self._codec.dumps(value)

    def _encode(self, value: Any, expires_at: float = 0.0, delta: float = 0.0) -> bytes:
        if not expires_at:
            if type(value) is int:
                return b"%d" % value
            return b"\x01" + self._dumps(value)
        return b"\x02" + _ENV.pack(expires_at, delta) + self._dumps(value)

    def _loads(self, body: bytes, start: int = 0) -> Any:
        """Decode the payload at *start* of *body* (``1``: after a ``\\x01`` mark,
        without copying it first). A JSON codec's payload is read by the C scanner
        alone, or with the codec's tag hook when it has tagged types (bytes, tuples,
        datetimes...); one it does not read whole goes to the codec, which raises its
        own error."""
        scan = self._tagged_scan
        if scan is not None:
            try:
                text = body.decode("utf-8")
                value, end = (_json_scan if b"\\u0000" not in body else scan)(text, start)
                if end == len(text):
                    return value
            except Exception:  # noqa: BLE001,S110 - the codec raises its own error (a miss for the cache)
                pass
        return self._codec.loads(body[start:] if start else body)

    def _decode(self, data: bytes) -> tuple[Any, float, float]:
        mark = data[0] if data else 0
        if mark == 1:
            return self._loads(data[1:]), 0.0, 0.0
        if mark == 2 and len(data) > _ENV_SIZE:
            expires_at, delta = _ENV.unpack_from(data, 1)
            return self._loads(data[_ENV_SIZE:]), expires_at, delta
        try:
            return int(data), 0.0, 0.0
        except ValueError:
            raise SerializationError(f"cache payload of {len(data)} bytes has no statekit header") from None

    def _entry(self, key: str, data: bytes, report: bool = True) -> tuple[Any, float, float] | None:
        """:meth:`_decode`, with an entry that cannot be decoded (another codec or
        secret key wrote it, or it was truncated) read as a miss: counted and logged
        (unless not *report*), never raised, so the cache heals by recomputing."""
        try:
            return self._decode(data)
        except SerializationError as e:
            if report:
                self._undecodable(key, e)
            return None

    def _undecodable(self, key: str, error: Exception) -> None:
        self.counters.incr("undecodable")
        _log_undecodable(f"{self.base}{key}", self._codec.name, error)

    def _check_key(self, key: Any) -> str:
        if type(key) is not str:
            raise InvalidKey(f"cache keys are str, not {type(key).__name__}")
        if not key or len(key) > _MAX_KEY:
            raise InvalidKey(f"cache key must be 1-{_MAX_KEY} characters (got {len(key)})")
        return key

    def _ttl_ms(self, ttl: Any) -> int | None:
        tt = type(ttl)
        if (tt is int or tt is float) and 0 < ttl <= MAX_TTL:  # the common case: what
            return max(1, int(ttl * 1000.0))  # _ttl_seconds answers, without its ~0.5 us
        secs = self.default_ttl if ttl is DEFAULT else _ttl_seconds(ttl)
        return None if secs is None else max(1, int(secs * 1000))

    # -- failure policy (plans: see statekit.cache.redis.drive) ---------------------------

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Plan[Any]:
        """Backend method *name* through the breaker; raises BackendUnavailable on
        failure (counted)."""
        breaker = self.breaker
        # read before the check: a period that begins after it (another thread's
        # failure opening the breaker) is not this call's; a trial's is its own
        epoch = breaker.epoch
        if breaker._state != CLOSED:
            if not breaker.allow():
                raise BackendUnavailable("cache circuit breaker is open (Redis failed repeatedly)")
            epoch = breaker.epoch
        try:
            # a Redis backend's own plan runs inside this one (one drive per call, its
            # I/O effects performed by the backend's runner); another backend is called
            plan = getattr(self._backend or self._connect(), "plan_" + name, None)
            if plan is not None:
                result = yield from plan(*args, **kwargs)
            else:
                result = yield (BE, name, args, kwargs)
        except BackendUnavailable as e:
            self._failed(e, epoch)
            raise
        except ValueError:  # an error reply of the command (not an integer, another type): an answer
            breaker.success()
            raise
        except BaseException:  # cancelled, interrupted, or no word on Redis: a trial's place is free
            breaker.abandoned(epoch)
            raise
        breaker.success()
        return result

    def _failed(self, error: BackendUnavailable, epoch: int) -> None:
        """Count the failed call *error* and tell the breaker: a failure when Redis did
        not answer (a timeout, a lost connection), a success when it answered with an
        error reply (``OOM`` with ``maxmemory``, ``BUSY``, ``CLUSTERDOWN``): failing
        the next calls at once would save no wait, and a Redis out of memory still
        serves reads. *epoch*: the breaker's as the call started (a call that began
        before the breaker opened does not keep it open)."""
        self.counters.incr("errors")
        if _answered(error):
            self.breaker.success()
        else:
            self.breaker.failure(epoch)

    def _read(self, name: str, default: Any, *args: Any, write: bool = False) -> Plan[Any]:
        """The backend's *name* call; when the backend is unavailable, *default*
        (counted as a dropped write for a *write*), unless ``on_error="raise"``."""
        try:
            return (yield from self._call(name, *args))
        except BackendUnavailable:
            if self.on_error == "raise":
                raise
            if write:
                self.counters.incr("dropped_writes")
            return default

    def _write(self, name: str, default: Any, *args: Any) -> Plan[Any]:
        """:meth:`_read` of a write (its plan itself: no generator frame of its own)."""
        return self._read(name, default, *args, write=True)

    def _lagging(self) -> bool:
        """Whether the invalidation listener has invalidations it has not applied
        yet: near copies are not served then (they may be the ones invalidated)."""
        listener = self._listener
        return listener is not None and listener.pending()

    def _forget(self, key: str) -> None:
        """Drop the local copy of *key*. Writers call it before and after the write:
        after, so a read that raced with the write cannot leave the old value here."""
        near = self._near
        if near is not None:
            near.evict(key)

    def _forget_many(self, keys: Iterable[str]) -> None:
        near = self._near
        if near is not None:
            for k in keys:
                near.evict(k)

    # -- reads --------------------------------------------------------------------------

    def _near_get(self, key: Any) -> Any:
        """The near copy of *key* if one may be served now, else ``_ABSENT``."""
        near = self._near
        if near is not None and near.active and type(key) is str:
            item = near.data.get(key)
            if item is not None:
                entry, deadline = item
                # looked up again after the pending() check: an invalidation applied
                # between the first lookup and the check was not seen by either
                if (deadline > _monotonic() and (not entry[1] or entry[1] > _time())
                        and not self._lagging() and near.data.get(key) is item):
                    try:
                        near.data.move_to_end(key)
                    except KeyError:  # evicted by another thread just now
                        pass
                    self.counters.near_hits += 1
                    return entry[0]
        return _ABSENT

    def _fetch(self, key: str, report: bool = True) -> Plan[tuple[Any, float, float] | None]:
        """The decoded entry for *key*, near cache first; ``None`` on a miss (an
        undecodable entry is one, see :meth:`_entry`). Raises BackendUnavailable
        (through the breaker)."""
        near = self._near
        if near is not None and near.active:
            item = near.data.get(key)
            if (item is not None and item[1] > _monotonic() and not self._lagging()
                    and near.data.get(key) is item):  # (see get())
                self.counters.near_hits += 1
                return item[0]
            seq = near.seq
            ((data, ttl_ms),) = yield from self._call("get_many_with_ttl", (key,))
            if data is None:
                return None
            entry = self._entry(key, data, report)
            if entry is not None:
                near.store(key, entry, ttl_ms, seq)
            return entry
        self._backend or self._connect()
        if self._near is not None and self._listener is not None:
            self._listener.ensure_running()
        data = yield from self._call("get", key)
        return None if data is None else self._entry(key, data, report)

    def _get(self, key: str, default: Any) -> Plan[Any]:
        """:meth:`Cache.get` past the near cache."""
        if type(key) is not str or not key or len(key) > _MAX_KEY:
            self._check_key(key)
        try:
            found = yield from self._fetch(key)
        except BackendUnavailable:
            if self.on_error == "raise":
                raise
            return default
        if found is None or (found[1] and found[1] <= _time()):
            self.counters.misses += 1
            return default
        self.counters.hits += 1
        return found[0]

    def _get_many(self, keys: Iterable[str]) -> Plan[dict[str, Any]]:
        keys = _key_sequence(keys, "get_many")
        for k in keys:
            if type(k) is not str or not k or len(k) > _MAX_KEY:
                self._check_key(k)
        if not keys:
            return {}
        self._backend or self._connect()
        near = self._near
        found: dict[str, Any] = {}
        now = _time()
        if near is not None and near.active:
            todo = []
            mono = _monotonic()
            if self._lagging():
                mono = math.inf  # no near copy is trusted while invalidations wait
            for k in keys:
                item = near.data.get(k)
                if item is not None and item[1] > mono and (not item[0][1] or item[0][1] > now):
                    found[k] = item[0][0]
                    self.counters.near_hits += 1
                else:
                    todo.append(k)
            seq = near.seq
            rows = (yield from self._read("get_many_with_ttl", [], todo)) if todo else []
            for k, (data, ttl_ms) in zip(todo, rows, strict=False):
                entry = None if data is None else self._entry(k, data)
                if entry is not None:
                    near.store(k, entry, ttl_ms, seq)
                    if not entry[1] or entry[1] > now:
                        found[k] = entry[0]
        else:
            if near is not None and self._listener is not None:
                self._listener.ensure_running()
            values = yield from self._read("get_many", [], keys)
            plain = self._plain_json
            scan = _json_scan
            for k, data in zip(keys, values, strict=False):
                if data is None:
                    continue
                if plain and data and data[0] == 1 and b"\\u0000" not in data:
                    try:  # the common case inlined: one C call per value
                        text = data.decode("utf-8")
                        value, end = scan(text, 1)
                        if end == len(text):
                            found[k] = value
                            continue
                    except (ValueError, StopIteration):
                        pass
                entry = self._entry(k, data)
                if entry is not None and (not entry[1] or entry[1] > now):
                    found[k] = entry[0]
        self.counters.incr("hits", len(found))
        self.counters.incr("misses", len(keys) - len(found))
        return found

    def _ttl(self, key: str) -> Plan[float | None]:
        self._backend or self._connect()
        rows = yield from self._read("get_many_with_ttl", [(None, None)], [self._check_key(key)])
        data, left = rows[0]
        if data is None:
            return None
        end = expiry(data)  # a get_or_set value's own deadline, read as live() reads it
        if end == math.inf:  # none of its own (or persisted): how long Redis keeps it
            return math.inf if left is None else left / 1000.0
        if end == -math.inf:  # empty or truncated: get reads it as a miss, so does this
            self._undecodable(key, SerializationError(f"cache payload of {len(data)} bytes is truncated"))
            return None
        remaining = end - _time()
        return remaining if remaining > 0 else None

    def _scan(self, pattern: str, state: Any, count: int) -> Plan[tuple[Any, list[str]]]:
        """One page of the keys of this namespace (its current generation) matching the
        glob *pattern*: ``(state, keys)``; pass *state* back for the next page, ``None``
        once every node was walked (``SCAN``, never ``KEYS``: see
        :meth:`statekit.cache.redis.RedisCacheBackend.plan_scan`). With
        ``on_error="miss"`` an outage ends the walk (no keys).

        :raises NotImplementedError: the backend cannot list its keys (not Redis)."""
        backend = self._backend or self._connect()
        if not hasattr(backend, "plan_scan"):
            raise NotImplementedError(f"the {type(backend).__name__} cache backend cannot list its keys "
                                      "(pattern operations need a Redis backend)")
        page: tuple[Any, list[str]] = yield from self._read("scan", (None, []), pattern, state, count)
        return page

    # -- writes -------------------------------------------------------------------------

    def _set(self, key: str, value: Any, ttl: Any) -> Plan[bool]:
        self._backend or self._connect()
        data = self._encode(value)
        self._check_key(key)
        self._forget(key)
        try:
            return (yield from self._write("set", False, key, data, self._ttl_ms(ttl))) is None
        finally:
            self._forget(key)

    def _add(self, key: str, value: Any, ttl: Any) -> Plan[bool]:
        self._backend or self._connect()
        data = self._encode(value)
        self._forget(self._check_key(key))
        try:
            return bool((yield from self._write("add", False, key, data, self._ttl_ms(ttl))))
        finally:
            self._forget(key)

    def _replace(self, key: str, value: Any, ttl: Any) -> Plan[bool]:
        self._backend or self._connect()
        data = self._encode(value)
        self._forget(self._check_key(key))
        try:
            return bool((yield from self._write("replace", False, key, data, self._ttl_ms(ttl), _time())))
        finally:
            self._forget(key)

    def _set_many(self, mapping: Mapping[str, Any], ttl: Any) -> Plan[bool]:
        self._backend or self._connect()
        items = {self._check_key(k): self._encode(v) for k, v in mapping.items()}
        self._forget_many(items)
        try:
            return (yield from self._write("set_many", False, items, self._ttl_ms(ttl))) is None
        finally:
            self._forget_many(items)

    def _delete(self, key: str) -> Plan[bool]:
        self._backend or self._connect()
        self._forget(self._check_key(key))
        try:
            return bool((yield from self._write("delete", False, key)))
        finally:
            self._forget(key)

    def _delete_many(self, keys: Iterable[str]) -> Plan[int]:
        self._backend or self._connect()
        keys = [self._check_key(k) for k in _key_sequence(keys, "delete_many")]
        self._forget_many(keys)
        try:
            return int((yield from self._write("delete_many", 0, keys))) if keys else 0
        finally:
            self._forget_many(keys)

    def _incr(self, key: str, delta: int, ttl: Any, create: bool) -> Plan[int]:
        if type(delta) is not int:
            raise TypeError("delta must be an int")
        self._backend or self._connect()
        self._forget(self._check_key(key))
        try:
            result = yield from self._call("incr", key, delta, self._ttl_ms(ttl), create=create)
        finally:
            self._forget(key)
        if result is None:
            raise KeyError(key)
        return cast(int, result)

    def _touch(self, key: str, ttl: Any) -> Plan[bool]:
        self._backend or self._connect()
        try:
            return bool((yield from self._write("touch", False, self._check_key(key), self._ttl_ms(ttl),
                                                _time(), int(self.stale_ttl * 1000))))
        finally:
            self._forget(key)

    def _persist(self, key: str) -> Plan[bool]:
        self._backend or self._connect()
        try:
            return bool((yield from self._write("persist", False, self._check_key(key), _time())))
        finally:
            self._forget(key)

    def _clear(self) -> Plan[bool]:
        self._backend or self._connect()
        if self._near is not None:
            self._near.flush()
        try:
            return (yield from self._write("clear", False)) is None
        finally:
            if self._near is not None:
                self._near.flush()

    # -- stampede protection ------------------------------------------------------------

    def _get_or_set(self, key: str, default: Any, ttl: Any, stale_ttl: float | None) -> Plan[Any]:
        """:meth:`Cache.get_or_set`; a compute is the effect ``(COMPUTE, default)``
        (the async side awaits what an ``async def`` returns)."""
        self._check_key(key)
        if not callable(default):
            found = yield from self._get(key, _ABSENT)
            if found is not _ABSENT:
                return found
            if (yield from self._add(key, default, ttl)):
                return (yield from self._get(key, default))
            found = yield from self._get(key, _ABSENT)
            if found is _ABSENT:  # there but undecodable (or gone just now): replace it
                yield from self._set(key, default, ttl)
                return default
            return found
        secs = self.default_ttl if ttl is DEFAULT else _ttl_seconds(ttl)
        stale = self.stale_ttl if stale_ttl is None else _stale_seconds(stale_ttl)
        try:
            entry = yield from self._fetch(key)
        except BackendUnavailable:
            if self.on_error == "raise":
                raise
            return (yield (COMPUTE, default))
        now = _time()
        if entry is not None:
            value, expires_at, delta = entry
            if not expires_at:
                self.counters.incr("hits")
                return value
            if now < expires_at:
                beta = self.xfetch_beta
                early = beta > 0 and delta > 0 and now - delta * beta * math.log(
                    _random() or 1e-300) >= expires_at
                if not early or not (yield (LOCK, key)):
                    self.counters.incr("hits")
                    return value
                self.counters.incr("early_refreshes")
                try:
                    return (yield from self._compute_locked(key, default, secs, stale, expires_at))
                except Exception as e:  # noqa: BLE001 - the value read is fresh: its caller gets it
                    _log.warning("early refresh of cache key %r failed (%s: %s): its fresh value was "
                                 "served; a later caller tries again", key, type(e).__name__, e)
                    self.counters.incr("hits")
                    return value
            if (yield (LOCK, key)):
                return (yield from self._compute_locked(key, default, secs, stale, expires_at))
            self.counters.incr("stale")
            return value
        self.counters.incr("misses")
        return (yield from self._wait_or_compute(key, default, secs, stale))

    def _lock_token(self) -> str:
        return uuid.uuid4().hex

    def _take_lock(self, key: str, steal: bool = False) -> Plan[bool | None]:
        """Take the single-flight lock of *key* (with *steal*, from whoever holds it):
        ``True`` taken, ``False`` held by another caller, ``None`` the backend is
        unavailable."""
        token = self._lock_token()
        name = "sf:" + key
        try:
            ok = yield from self._call("steal_lock" if steal else "acquire_lock", name, token,
                                       int(self.lock_ttl * 1000))
        except BaseException as e:  # interrupted or failed with the SET NX out: Redis may have granted it
            if not isinstance(e, GeneratorExit):
                self._abandoned(name, token, e)
            if isinstance(e, BackendUnavailable):
                return None
            raise
        if ok:
            self._tokens()[key] = token
        return bool(ok)

    def _abandoned(self, name: str, token: str, error: BaseException) -> None:
        """The lock *name* (a single-flight lock, or a :class:`Lock`'s) may be held with
        *token* by a caller whose ``SET NX`` failed with *error* before it knew. Sync:
        a reply lost with its connection (the outcome unknown, not a timeout) releases
        the token at once (a compare-and-delete of a token only this attempt had: not
        the ``SET`` sent again), so the lock is not left held by nobody for its whole
        TTL; after a timeout (a server that did not answer: a release would wait as
        long again) or an interruption (``KeyboardInterrupt``) it is left to expire.
        :class:`~statekit.cache.aio.AsyncCache` releases in the background."""
        if isinstance(error, BackendUnavailable) and outcome_unknown(error) and not _timed_out(error):
            with contextlib.suppress(BackendUnavailable):
                (self._backend or self._connect()).release_lock(name, token)

    def _keep(self, backend: CacheBackend, name: str, token: str,
              alive: Callable[[], bool] | None = None) -> int:
        """Have the process's :data:`~statekit.cache.tools.lock_keeper` thread extend
        the lock *name* held with *token* every ``lock_ttl / 3`` through the sync
        *backend* (until ``lock_keeper.release`` of the returned id, or *alive* says
        the holder is gone): a thread, so the extensions go on whatever the computing
        thread or event loop does."""
        return lock_keeper.hold(functools.partial(
            backend.extend_lock, name, token, int(self.lock_ttl * 1000)), self.lock_ttl / 3, alive)

    def _tokens(self) -> dict[str, str]:
        """This thread's single-flight lock tokens, by key (a forked child's copy of
        the thread holds none: the parent's flights are the parent's)."""
        held: tuple[int, dict[str, str]] | None = getattr(self._sf_local, "tokens", None)
        pid = os.getpid()
        if held is None or held[0] != pid:
            held = self._sf_local.tokens = (pid, {})
        return held[1]

    def _flights(self) -> bool:
        """Whether the backend fences a flight's store (:meth:`_compute_store`): the
        Redis backends; another backend stores what a flight computed as it is."""
        backend = self._backend or self._connect()
        return hasattr(backend, "plan_set_if_locked") or hasattr(backend, "set_if_locked")

    def _release(self, key: str) -> Plan[None]:
        token = self._tokens().pop(key, None)
        if token is not None:
            try:
                yield from self._call("release_lock", "sf:" + key, token)
            except BackendUnavailable:
                pass  # the lock expires on its own

    def _compute_locked(self, key: str, compute: Callable[[], Any], secs: float | None, stale: float,
                        seen: float | None, *, refresh: bool = False) -> Plan[Any]:
        """Holding the lock: unless another caller stored a new value since we looked
        (*seen*: the logical expiry we saw, ``None`` for a miss; not looked at for a
        *refresh*), compute and store. Then release the lock."""
        try:
            gen = None
            if refresh:  # nothing read first: the generation the flight begins in
                gen = yield from self._read("read_generation", None)
            else:
                try:
                    # report=False: the caller's read counted a bad entry
                    current = yield from self._fetch(key, report=False)
                except BackendUnavailable:
                    current = None
                if current is not None and (seen is None or current[1] != seen) and (
                        not current[1] or current[1] > _time()):
                    self.counters.incr("hits")
                    return current[0]
            token = self._tokens().get(key)
            held = (yield (HOLD, "sf:" + key, token)) if token else None
            try:  # a compute longer than lock_ttl keeps the lock (extended every lock_ttl / 3)
                return (yield from self._compute_store(key, compute, secs, stale, token, gen))
            finally:
                if held is not None:
                    yield ("unhold", held)
        finally:
            yield from self._release(key)

    def _compute_store(self, key: str, compute: Callable[[], Any], secs: float | None, stale: float,
                       token: str | None = None, gen: bytes | None = None, steal: bool = False) -> Plan[Any]:
        """Compute and store: a *flight*. With a single-flight lock's *token* (a leader's,
        ``refresh()``'s, or with *steal* the holder's a caller gave up waiting for) the
        value is stored only if, since the flight began, that token kept the lock (not
        lapsed: the next leader may have stored a fresher value; not removed by a
        :meth:`delete`) and no :meth:`clear` moved the namespace on (*gen*, else the
        generation seen last); with *steal* the store takes the lock from its holder, so
        the holder's slower store is refused. A refused value is returned, not stored:
        it was computed before the change. A backend without ``set_if_locked`` stores
        it anyway. A child forked by the compute returns without storing (the flight
        and its lease are the parent's)."""
        backend = self._backend or self._connect()
        fenced = token is not None and self._flights()
        if fenced and gen is None:
            mark = getattr(backend, "flight_generation", None)
            gen = mark() if mark is not None else None
        pid = os.getpid()
        started = _monotonic()
        value = yield (COMPUTE, compute)
        delta = _monotonic() - started
        self.counters.incr("recomputes")
        if os.getpid() != pid:
            return value
        if secs is None or type(value) is int:
            data = self._encode(value)
            ttl_ms = self._ttl_ms(secs)
        else:
            data = self._encode(value, _time() + secs, delta)
            ttl_ms = max(1, int((secs + max(stale, 0.0)) * 1000))
        self._forget(key)
        try:
            if fenced:
                yield from self._write("set_if_locked", None, key, data, ttl_ms, "sf:" + key, token, gen,
                                       steal)
            else:
                yield from self._write("set", None, key, data, ttl_ms)
        finally:
            self._forget(key)
        return value

    def _compute_only(self, compute: Callable[[], Any]) -> Plan[Any]:
        """Compute without storing (nobody can coordinate: an outage)."""
        value = yield (COMPUTE, compute)
        self.counters.incr("recomputes")
        return value

    def _refresh(self, key: str, compute: Callable[[], Any], secs: float | None, stale: float) -> Plan[Any]:
        """``refresh()`` of a cached function: a flight that takes the single-flight
        lock from whoever holds it (a leader computing from older data must not
        overwrite the value computed now) and stores what it computes unless a
        :meth:`delete` or a :meth:`clear` came since it began."""
        self._check_key(key)
        if not self._flights():
            return (yield from self._compute_store(key, compute, secs, stale))
        taken = yield from self._take_lock(key, steal=True)
        if taken is None:
            if self.on_error == "raise":
                raise BackendUnavailable("cache unavailable while taking the recompute lock")
            return (yield from self._compute_only(compute))
        return (yield from self._compute_locked(key, compute, secs, stale, None, refresh=True))

    def _wait_or_compute(self, key: str, compute: Callable[[], Any], secs: float | None,
                         stale: float) -> Plan[Any]:
        deadline = _monotonic() + self.lock_wait
        pause = 0.005
        waited = False
        while True:
            locked = yield (LOCK, key)
            if locked is None:  # outage: nobody can coordinate, compute without storing
                if self.on_error == "raise":
                    raise BackendUnavailable("cache unavailable while taking the recompute lock")
                return (yield from self._compute_only(compute))
            if locked:  # re-read first: the previous holder may have stored it just now
                return (yield from self._compute_locked(key, compute, secs, stale, None))
            if not waited:
                self.counters.incr("lock_waits")
                waited = True
            if _monotonic() >= deadline:
                if not self._flights():
                    return (yield from self._compute_store(key, compute, secs, stale))
                holder = yield from self._read("lock_holder", _ABSENT, "sf:" + key)
                if holder is _ABSENT:  # outage (on_error="miss")
                    return (yield from self._compute_only(compute))
                if holder is not None:  # give up on it: fenced on its lock (see _compute_store)
                    return (yield from self._compute_store(key, compute, secs, stale, holder, steal=True))
                # released just now: its value is probably there (read below), else lock again
            yield (SLEEP, pause)
            pause = min(pause * 1.5, 0.05)
            try:
                entry = yield from self._fetch(key, report=False)
            except BackendUnavailable:
                entry = None
            if entry is not None and (not entry[1] or entry[1] > _time()):
                return entry[0]

    # -- the rest -----------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Counters (hits, misses, near_hits, stale, recomputes, early_refreshes,
        lock_waits, errors, dropped_writes, breaker_opened, undecodable) and the
        ``breaker_state`` gauge (0 closed, 1 half-open, 2 open). A namespace shares its
        root's breaker and reports it too (``breaker_opened``: since it was made)."""
        self.counters.set_gauge("breaker_state", STATE_VALUES[self.breaker.state])
        if self._near is not None:
            self.counters.set_gauge("near_size", len(self._near))
        return self.counters.as_dict()

    def __repr__(self) -> str:
        where = self.url or ("client" if self.client is not None else "env")
        return f"<{type(self).__name__} {where} {self.namespace_name!r}>"


class Cache(_CacheCore):
    """A cache on Redis (standalone, Sentinel, Cluster) or ``memory://``.

    :param url: backend URL; ``None`` reads ``STATEKIT_CACHE_URL`` /
        ``STATEKIT_REDIS_URL`` on first use.
    :param client: a ready ``redis.Redis`` / ``RedisCluster`` (``decode_responses``
        must be off) instead of a URL.
    :param prefix: first part of every key (``STATEKIT_KEY_PREFIX``, ``"statekit"``).
    :param namespace: the key space :meth:`clear` empties; see :meth:`namespace`.
    :param default_ttl: seconds a value lives when ``ttl`` is not given; ``None``
        for no expiry.
    :param serializer: ``"json"`` (default), ``"msgpack"``, ``"signed-pickle"``
        (needs *secret_keys*) or a :class:`~statekit.serializers.Serializer`.
    :param near_cache: ``True`` or a maximum entry count to keep decoded values in
        process, coherent through Redis invalidations (any Redis URL, TLS
        included; not ``memory://``). A near copy is not served while the
        invalidation listener has invalidations it has not applied yet. See
        :mod:`statekit.cache.near`.
    :param near_max_age: upper bound, in seconds, on how long a near entry is kept.
    :param on_error: ``"raise"`` or ``"miss"`` (see the module docstring).
    :param failure_threshold: consecutive failures that open the circuit breaker.
    :param breaker_reset: seconds the breaker stays open before a trial call.
    :param stale_ttl: seconds a value computed by :meth:`get_or_set` / :meth:`cached`
        may be served stale while one caller recomputes it.
    :param lock_ttl: seconds the recompute lock lives without its holder: while a
        compute runs, the lock is extended every ``lock_ttl / 3`` seconds, so a slow
        compute still runs once; a crashed holder's lock expires after this long.
    :param lock_wait: seconds a caller waits for another's recompute before
        computing itself.
    :param xfetch_beta: XFetch's beta; ``0`` disables early refresh.
    :param timeout: socket connect/read timeout for a URL (overrides the URL's).
    :param fast_path: no effect, kept so existing calls work: every Redis URL kind
        goes through the one transport (:mod:`statekit.redis.transport`, a
        per-thread redis-py connection).
    """

    def _effect(self, effect: tuple[Any, ...]) -> Any:
        """Run one effect of a plan (sync)."""
        kind = effect[0]
        if kind in _IO:  # a Redis backend's plan: its runner
            return self._backend._do(effect)
        if kind == BE:
            return getattr(self._backend or self._connect(), effect[1])(*effect[2], **effect[3])
        if kind == COMPUTE:
            return effect[1]()
        if kind == LOCK:
            return self._try_lock(effect[1])
        if kind == SLEEP:
            time.sleep(effect[1])
            return None
        if kind == HOLD:
            return self._keep(self._be(), effect[1], effect[2])
        lock_keeper.release(effect[1])
        return None

    def near_ready(self, timeout: float = 5.0) -> bool:
        """Start the near cache's invalidation connection if needed and wait until it
        is up; ``False`` if there is no near cache or it did not come up in time."""
        self._backend or self._connect()
        if self._listener is None or self._near is None:
            return False
        self._listener.ensure_running()
        return self._listener.connected.wait(timeout)

    def _be(self) -> CacheBackend:
        backend: CacheBackend = self._backend or self._connect()
        return backend

    def _new_backend(self) -> CacheBackend:
        if self.client is None:
            url = self._url()
            return _backend_class(url).from_url(url, self.base, {"timeout": self.timeout})
        _check_name("prefix", self.prefix)
        from .redis import RedisCacheBackend

        return RedisCacheBackend.from_client(self.client, self.base)

    def _try_lock(self, key: str) -> bool | None:
        """Take the single-flight lock of *key* (see :meth:`_take_lock`)."""
        return drive(self._take_lock(key), self._effect)

    def _unlock(self, key: str) -> None:
        drive(self._release(key), self._effect)

    def _compute_and_store(self, key: str, compute: Callable[[], T], secs: float | None, stale: float) -> T:
        """``refresh()`` (see :meth:`_refresh`)."""
        return cast(T, drive(self._refresh(key, compute, secs, stale), self._effect))


    def get(self, key: str, default: Any = None) -> Any:
        """The value at *key*, or *default* if it is missing, expired or cannot be
        decoded (see the module docstring).

        Served from the near cache when enabled and coherent; otherwise one round
        trip. On an outage: *default* with ``on_error="miss"``, else
        :class:`~statekit.errors.BackendUnavailable`."""
        if self._near is not None:
            hit = self._near_get(key)
            return drive(self._get(key, default), self._effect) if hit is _ABSENT else hit
        if type(key) is not str or not key or len(key) > _MAX_KEY:
            self._check_key(key)
        # the common path, inlined: one round trip, no extra calls
        backend = self._backend or self._connect()
        breaker = self.breaker
        epoch = breaker.epoch  # before the check, as in _call
        if breaker._state != CLOSED:
            if not breaker.allow():
                if self.on_error == "raise":
                    raise BackendUnavailable("cache circuit breaker is open (Redis failed repeatedly)")
                return default
            epoch = breaker.epoch
        try:
            data = backend.get(key)
        except BackendUnavailable as e:
            self._failed(e, epoch)
            if self.on_error == "raise":
                raise
            return default
        except BaseException:
            breaker.abandoned(epoch)
            raise
        if breaker._failures:
            breaker.success()
        if data is None:
            self.counters.misses += 1
            return default
        if data and data[0] == 1:
            try:
                value = self._loads(data, 1)
            except SerializationError as e:
                self._undecodable(key, e)
                self.counters.misses += 1
                return default
            self.counters.hits += 1
            return value
        found: tuple[Any, float, float] | None = self._entry(key, data)
        if found is None or (found[1] and found[1] <= _time()):
            self.counters.misses += 1
            return default
        self.counters.hits += 1
        return found[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """``{key: value}`` for the keys that are present: one ``MGET`` (atomic with
        respect to writers) per 500 keys (:data:`statekit.cache.redis.CHUNK`), so a
        big read never blocks Redis for long; on Redis Cluster one ``MGET`` per slot,
        each node's share in one pipeline, all nodes at once (one round trip per
        node). ``{}`` during an outage with ``on_error="miss"``."""
        return drive(self._get_many(keys), self._effect)

    def has(self, key: str) -> bool:
        """Whether :meth:`get` would find *key* (``False`` on an outage with
        ``on_error="miss"``). A value stored by :meth:`get_or_set` past its lifetime,
        kept only to be served stale while one caller recomputes it, is not there.
        Only the header is read: an entry another codec wrote counts as there."""
        return self.ttl(key) is not None

    def ttl(self, key: str) -> float | None:
        """Seconds *key* has left (for a value stored by :meth:`get_or_set`: until it
        is due to be recomputed, not counting the stale window); ``math.inf`` if it
        never expires; ``None`` if it is missing or past that lifetime (or on an
        outage with ``on_error="miss"``). Reads the value's header, one round trip."""
        return drive(self._ttl(key), self._effect)

    def set(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """Store *value* (``ttl`` seconds, ``None`` for no expiry); the last writer
        wins. A value of *key* being computed meanwhile (:meth:`get_or_set`,
        :meth:`cached`) is not stored over it, except on Redis Cluster (see
        :meth:`delete`; there a ``delete`` cancels it). Returns ``False`` if the write
        was dropped (``on_error="miss"`` during an outage). A value the codec cannot
        encode raises :class:`~statekit.errors.SerializationError` before any I/O."""
        return drive(self._set(key, value, ttl), self._effect)

    def add(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """Store *value* only if *key* is missing; ``True`` if stored. Atomic: of
        concurrent callers (any process) exactly one succeeds, so ``add`` can elect
        a worker. ``False`` as well when dropped during an outage (``"miss"``). A value
        of :meth:`get_or_set` in its stale window (past its ttl) still counts as there."""
        return drive(self._add(key, value, ttl), self._effect)

    def replace(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """Store *value* only if *key* is there, as :meth:`get` sees it (a value of
        :meth:`get_or_set` past its ttl, kept only to be served stale, is not);
        ``True`` if stored (django-redis' ``set(xx=True)``). Atomic: the test and the
        write are one step. ``False`` as well when dropped during an outage
        (``"miss"``)."""
        return drive(self._replace(key, value, ttl), self._effect)

    def set_many(self, mapping: Mapping[str, Any], ttl: TTL = DEFAULT) -> bool:
        """Store every item with the same TTL: one round trip per 500 items
        (:data:`statekit.cache.redis.CHUNK`), each chunk atomic (all or none; as for
        :meth:`set`, values being computed meanwhile are not stored over these; on
        Redis Cluster the keys are grouped by slot, each node's share sent in one
        pipeline, all nodes at once, each slot's group atomic), so a big write never
        blocks Redis for long. A failure after the first chunk leaves the earlier
        chunks written (they are not sent again). ``False`` if dropped during an
        outage (``"miss"``)."""
        return drive(self._set_many(mapping, ttl), self._effect)

    def delete(self, key: str) -> bool:
        """Delete *key*; ``True`` if it existed (``False`` as well when dropped during an
        outage with ``on_error="miss"``: not done later, the old value stays readable
        once Redis is back, see the module docstring). A value of *key* being computed when
        the delete runs (:meth:`get_or_set`, :meth:`cached` and its ``refresh()``) is
        returned to its caller but not stored after it: the next reader computes from
        the data the delete announced (on Redis Cluster, see
        :meth:`statekit.cache.redis.RedisCacheBackend.plan_set_if_locked`)."""
        return drive(self._delete(key), self._effect)

    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete *keys* (one round trip per 500 keys; on Redis Cluster one per node,
        as :meth:`get_many`); return how many existed."""
        return drive(self._delete_many(keys), self._effect)

    def incr(self, key: str, delta: int = 1, *, ttl: TTL = None, create: bool = True) -> int:
        """Atomically add *delta* to the integer at *key* and return the result.

        A missing key starts at 0 and gets *ttl* (``None``: no expiry) when *create*;
        otherwise a missing key raises ``KeyError``. A value that is not an integer
        raises ``ValueError``. Counters cannot be made up, so an outage raises
        :class:`~statekit.errors.BackendUnavailable` even with ``on_error="miss"``."""
        return drive(self._incr(key, delta, ttl, create), self._effect)

    def decr(self, key: str, delta: int = 1, *, ttl: TTL = None, create: bool = True) -> int:
        """:meth:`incr` by ``-delta``."""
        return self.incr(key, -delta, ttl=ttl, create=create)

    def touch(self, key: str, ttl: TTL = DEFAULT) -> bool:
        """Give *key* a new lifetime of *ttl* seconds (``None``: none); ``False`` if it
        is missing. A value of :meth:`get_or_set` / :meth:`cached` is due *ttl* seconds
        from now (:meth:`ttl` says so; it is still served stale as long after that as
        before), and ``ttl=None`` makes it permanent, as :meth:`persist`. One that was
        permanent is served stale for this cache's ``stale_ttl`` after it (the window
        it was stored with is not kept once it is permanent). One past its ttl, kept
        only to be served stale, is not there (as for :meth:`get`): ``False``, left as
        it is."""
        return drive(self._touch(key, ttl), self._effect)

    def persist(self, key: str) -> bool:
        """Make *key* never expire; ``True`` only if it had an expiry, as Redis'
        ``PERSIST`` (``False`` for a missing key, one with no expiry, or a call dropped
        during an outage with ``"miss"``). A value of :meth:`get_or_set` /
        :meth:`cached` is made permanent too (as django-redis' ``persist``): from then
        on it is neither stale nor recomputed, and :meth:`ttl` says ``math.inf``. One
        past its ttl, kept only to be served stale, is not there (as for :meth:`get`):
        ``False``, left as it is. It makes the value stored now permanent, not the key:
        a later write stores with its own ttl, as a ``SET`` after ``PERSIST`` in Redis
        (and django-redis' ``persist`` then ``set``), and so does a ``refresh()`` or a
        :meth:`get_or_set` recompute already computing when ``persist`` runs (its new
        value replaces the permanent one when it finishes)."""
        return drive(self._persist(key), self._effect)

    def clear(self) -> bool:
        """Empty this namespace in O(1) (a generation bump; no FLUSHDB). Other
        namespaces, other prefixes and locks are untouched. The old generation's keys
        are unreachable at once and removed afterwards by a background thread (SCAN
        and UNLINK, 500 keys per call; see :mod:`statekit.cache.redis`), also those
        stored with no TTL. A value being computed when the clear runs is not stored
        after it (as for :meth:`delete`). ``False`` if dropped during an outage with
        ``on_error="miss"``."""
        return drive(self._clear(), self._effect)

    @overload
    def get_or_set(self, key: str, default: Callable[[], T], ttl: TTL = DEFAULT, *,
                   stale_ttl: float | None = None) -> T: ...

    @overload
    def get_or_set(self, key: str, default: T, ttl: TTL = DEFAULT, *,
                   stale_ttl: float | None = None) -> T: ...

    def get_or_set(self, key: str, default: Callable[[], T] | T, ttl: TTL = DEFAULT, *,
                   stale_ttl: float | None = None) -> T:
        """The value at *key*; if missing, ``default()`` (or *default* itself when it
        is not callable) is stored and returned.

        Across processes only one caller computes a missing or expired value: it
        holds a short lock (``lock_ttl``) while the others poll for the result for up
        to ``lock_wait`` seconds, then compute themselves (one that gave up stores its
        value only while the caller it waited for still holds the lock, and takes the
        lock from it, so that caller's older value does not replace it). A value whose
        key was deleted (or the namespace cleared) while it was computed is returned
        but not stored. An expired value is served
        for up to *stale_ttl* more seconds (finite: ``ValueError`` before anything is
        computed otherwise) to callers that do not hold the lock. Before
        expiry a caller refreshes early with XFetch probability, so hot keys rarely
        expire at all; an early refresh that raises an ``Exception`` is logged (WARNING)
        and its caller gets the value it read, still fresh. With ``on_error="miss"`` an
        outage computes without storing.

        A non-callable *default* costs nothing to compute, so it is simply added
        (atomically, first writer wins) and the stored value returned, as Django
        does. Integer results are stored raw, so :meth:`incr` works on them (they
        get no stale window or early refresh)."""
        return cast(T, drive(self._get_or_set(key, default, ttl, stale_ttl), self._effect))

    def cached(self, ttl: TTL = DEFAULT, *, key: str | Callable[..., str] | None = None,
               stale_ttl: float | None = None) -> Callable[[Callable[..., T]], CachedFunction[T]]:
        """Decorator: cache a function's result with :meth:`get_or_set` (stampede
        protection included).

        The key is *key* (a string prefix, or a function of the same arguments that
        returns the whole key) plus a stable hash of the arguments, bound to the
        signature so ``f(1)`` and ``f(x=1)`` share an entry; the order of keyword
        arguments, of dict items and of set elements does not change it (the same in
        every process). Arguments must be values the JSON codec can encode; pass
        ``key=`` for others. On a method the instance is the first argument, like
        the others (so usually ``key=lambda self, ...: ...``). A bad *ttl*, and a
        prefix written as a template (braces naming a parameter, cashews'
        ``"user:{user_id}"``: pass ``key=lambda user_id: f"user:{user_id}"``), raise
        ``ValueError`` at decoration.

        The wrapper has ``.invalidate(*args, **kwargs)``, ``.refresh(*args,
        **kwargs)`` (recompute and store), ``.uncached`` (the bare function, to
        bypass the cache) and ``.key_for(*args, **kwargs)``. Written without its
        parentheses (``@cache.cached``) it raises ``TypeError`` at decoration."""
        _check_options(ttl, "Cache.cached")

        def decorate(func: Callable[..., T]) -> CachedFunction[T]:
            if inspect.iscoroutinefunction(_function_of(func)):  # a staticmethod's too
                raise TypeError(f"cached() cannot wrap the async function {func.__qualname__}: "
                                "it would cache the coroutine object, not its result")
            return CachedFunction(self, func, ttl, key, stale_ttl)

        return decorate

    def lock(self, name: str, timeout: float | dt.timedelta = 10.0, *,
             blocking_timeout: float | None = None) -> Lock:
        """A distributed lock called *name* (see :class:`Lock`)."""
        self._check_key(name)
        return Lock(self, name, timeout, blocking_timeout)

    def close(self) -> None:
        """Give this thread's connection back to the pool and stop the near cache
        listener."""
        if self._listener is not None and self._parent is None:
            self._listener.stop()
        if self._backend is not None:
            self._backend.close()


# -- the module-level default cache -----------------------------------------------------

_default: Cache | None = None
_default_lock = threading.Lock()
#: what ``statekit.cache.NAME`` hands to the default cache: every public name of
#: :class:`Cache` but its configuration (``base``, ``prefix``) and ``close``
_PROXIED = frozenset({
    "add", "cached", "clear", "decr", "delete", "delete_many", "get", "get_many", "get_or_set",
    "has", "incr", "lock", "namespace", "near_ready", "persist", "replace", "set", "set_many",
    "stats", "touch", "ttl",
})


def configure(url: str | None = None, **options: Any) -> Cache:
    """Replace the default cache (``statekit.cache.get`` and friends) with
    ``Cache(url, **options)``; returns it. Nothing connects until first use."""
    global _default
    with _default_lock:
        _default = Cache(url, **options)
        return _default


def get_default() -> Cache:
    """The default cache, created on first call from the environment."""
    global _default
    cache = _default
    if cache is None:
        with _default_lock:
            if _default is None:
                _default = Cache()
            cache = _default
    return cache


def __getattr__(name: str) -> Any:
    if name == "AsyncCache":  # imported on first use: it needs redis-py's asyncio client
        from .aio import AsyncCache

        return AsyncCache
    if name in _PROXIED:
        return getattr(get_default(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _PROXIED | {"AsyncCache"})

