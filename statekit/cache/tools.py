"""Helpers of :mod:`statekit.cache`: the distributed :class:`Lock`, the
:class:`CachedFunction` wrapper made by :meth:`Cache.cached
<statekit.cache.Cache.cached>`, and the ``DEFAULT`` TTL marker."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import string
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .._fork import reset_in_child
from ..config import number
from ..errors import InvalidKey, LockError, SerializationError
from ..serializers import _TAG, _tag
from .plan import BE, SLEEP, Plan, drive

if TYPE_CHECKING:
    from . import Cache

__all__ = ["DEFAULT", "MAX_TTL", "TTL", "BoundCachedFunction", "CachedFunction", "Lock", "LockKeeper",
           "lock_keeper"]

T = TypeVar("T")
_monotonic = time.monotonic


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: "use the cache's ``default_ttl``" (the default of every ``ttl`` parameter)
DEFAULT: Any = _Default()
TTL = float | int | dt.timedelta | None


#: the longest duration, in seconds, a cache gives Redis: a ``ttl``, a ``stale_ttl``, a
#: lock's ``timeout`` (1e15 s, about 31.7 million years; ``timedelta.max`` is within it).
#: Redis refuses a deadline past a signed 64-bit count of milliseconds (``SET PX``,
#: ``PEXPIRE``: ``2**63 - 1`` less the time now, on Redis 6.2, Valkey 8.1 and 9.1), and a
#: get_or_set value lives its ttl and its stale window added: two of these from now stay
#: far below it. A longer one is a ValueError before any I/O (it failed at the first
#: command with the script's error reply)
MAX_TTL = 1e15


def _ttl_seconds(ttl: Any, name: str = "ttl", error: type[Exception] = ValueError) -> float | None:
    """*ttl* (a call's, or the cache's *name* setting with a ConfigError): ``None`` (no
    expiry), a timedelta, or a positive number of seconds, at most :data:`MAX_TTL`."""
    if ttl is None:
        return None
    return number(ttl, name, positive=True, maximum=MAX_TTL, text=False, unit="seconds",
                  why=", or None (no expiry)", error=error)


def _stale_seconds(stale: Any) -> float:
    """A get_or_set's or cached()'s *stale* (``stale_ttl``, given), checked before
    anything is computed: a value's TTL is its ttl plus this window in whole
    milliseconds, which ``inf`` and ``nan`` have none of (a negative one is no window), and
    at most :data:`MAX_TTL`."""
    return number(stale, "stale_ttl", minimum=-math.inf, maximum=MAX_TTL, text=False, unit="seconds",
                  why=", or None (the cache's)", error=ValueError)


def _lock_ms(timeout: Any) -> int:
    """*timeout* (positive seconds, at most :data:`MAX_TTL`) in whole milliseconds, at
    least 1."""
    seconds = number(timeout, "lock timeout", positive=True, maximum=MAX_TTL, text=False, unit="seconds",
                     why=" (a lock without expiry would outlive a crashed holder)", error=ValueError)
    return max(1, int(seconds * 1000))


def _wait_seconds(wait: Any) -> float | None:
    """*wait* (seconds to wait for a lock, ``None`` for ever), checked: ``nan`` compares
    false with every deadline, so it waited for ever."""
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float))
                             or math.isnan(wait)):
        raise ValueError(f"a lock wait must be a number of seconds or None (for ever), not {wait!r}")
    return wait


class Lock:
    """A lock shared by every process using the cache's backend.

    The holder's random token is stored under the lock key with a TTL (*timeout*,
    positive seconds), so a crashed holder cannot keep it forever; :meth:`release`
    and :meth:`extend` succeed only for the token that holds it (an atomic
    compare-and-delete), so a holder whose lock expired cannot release another's.
    The token is kept per thread (as redis-py's ``Lock`` does by default): one Lock
    object shared by threads is held by the thread that acquired it, and must be
    released by that thread. A process forked while a thread held the lock does not
    hold it (the parent does: the child's :meth:`locked` is ``False`` and its
    :meth:`release` raises :class:`~statekit.errors.LockError`). Not re-entrant.
    Backend errors raise :class:`~statekit.errors.BackendUnavailable` whatever
    ``on_error``; :meth:`acquire` goes through the cache's circuit breaker (open, it
    raises at once, without I/O; its failures count), :meth:`release` and
    :meth:`extend` are always sent (a lock must not stay held because of it). A wait
    that is not a number of seconds (``nan``) raises ``ValueError``.
    """

    def __init__(self, cache: Cache, name: str, timeout: float | dt.timedelta,
                 blocking_timeout: float | None) -> None:
        self._ms = _lock_ms(timeout)
        self.cache = cache
        self.name = "u:" + name
        self.timeout = self._ms / 1000  # seconds, whether given as a number or a timedelta
        self.blocking_timeout = _wait_seconds(blocking_timeout)
        self._local = threading.local()

    @property
    def token(self) -> str | None:
        """The token this thread of this process holds the lock with, ``None`` if it
        does not (a forked child's copy of the thread holds nothing)."""
        held: tuple[int, str] | None = getattr(self._local, "token", None)
        return held[1] if held is not None and held[0] == os.getpid() else None

    @token.setter
    def token(self, value: str | None) -> None:
        self._local.token = None if value is None else (os.getpid(), value)

    def _acquire(self, blocking: bool, timeout: float | None) -> Plan[bool]:
        token = uuid.uuid4().hex
        wait = self.blocking_timeout if timeout is None else _wait_seconds(timeout)
        deadline = None if wait is None else _monotonic() + wait
        pause = 0.005
        while True:
            try:  # through the breaker: open, it fails at once; a failure counts
                taken = yield from self.cache._call("acquire_lock", self.name, token, self._ms)
            except BaseException as e:  # Redis may have granted it: the cache decides (_abandoned)
                if not isinstance(e, GeneratorExit):
                    self.cache._abandoned(self.name, token, e)
                raise
            if taken:
                self.token = token
                return True
            if not blocking or (deadline is not None and _monotonic() >= deadline):
                return False
            yield (SLEEP, pause)
            pause = min(pause * 1.5, 0.1)

    def _release(self) -> Plan[None]:
        token, self.token = self.token, None
        if token is None or not (yield (BE, "release_lock", (self.name, token), {})):
            raise LockError(f"lock {self.name[2:]!r} is not held by this owner")

    def _extend(self, timeout: float | None) -> Plan[None]:
        ms = self._ms if timeout is None else _lock_ms(timeout)
        if self.token is None or not (yield (BE, "extend_lock", (self.name, self.token, ms), {})):
            self.token = None  # the lease lapsed: locked() says so from now on
            raise LockError(f"lock {self.name[2:]!r} is not held by this owner")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; wait up to *timeout* (default ``blocking_timeout``, ``None``
        for ever) when *blocking*. ``True`` if taken. An attempt whose reply was lost
        with its connection (Redis may have granted it; the ``SET`` is not sent again)
        raises :class:`~statekit.errors.BackendUnavailable` after releasing that
        attempt's token (a compare-and-delete: a no-op if it was not granted), so the
        lock is not left held for *timeout* by nobody; after a timeout (a server that
        did not answer) it is left to expire."""
        return drive(self._acquire(blocking, timeout), self.cache._effect)

    def release(self) -> None:
        """Release the lock; :class:`~statekit.errors.LockError` if this object does
        not hold it (never taken, or expired and taken by someone else)."""
        drive(self._release(), self.cache._effect)

    def extend(self, timeout: float | None = None) -> None:
        """Reset the lock's TTL to *timeout* (default: the lock's timeout);
        :class:`~statekit.errors.LockError` if this object no longer holds it (its
        lease lapsed), after which :meth:`locked` is ``False``."""
        drive(self._extend(timeout), self.cache._effect)

    def locked(self) -> bool:
        """Whether this thread holds the lock through this object (as far as it knows)."""
        return self.token is not None

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockError(f"could not acquire lock {self.name[2:]!r} in time")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CachedFunction(Generic[T]):
    """A function wrapped by :meth:`Cache.cached`."""

    __name__: str
    __qualname__: str

    def __init__(self, cache: Cache, func: Callable[..., T], ttl: TTL,
                 key: str | Callable[..., str] | None, stale_ttl: float | None) -> None:
        if ttl is not DEFAULT:
            _ttl_seconds(ttl)  # fail at decoration, not at the first call
        if stale_ttl is not None:
            _stale_seconds(stale_ttl)
        self.cache = cache
        self.uncached = func
        self.ttl = ttl
        self.stale_ttl = stale_ttl
        self._key = key
        self._prefix = key if isinstance(key, str) else f"{func.__module__}.{func.__qualname__}"
        try:
            self._sig: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            self._sig = None
        if isinstance(key, str) and self._sig is not None:
            _check_prefix(key, self._sig, func.__qualname__)
        functools.update_wrapper(self, func)

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The cache key of a call with these arguments."""
        if callable(self._key):
            return self._key(*args, **kwargs)
        if self._sig is not None:
            bound = self._sig.bind(*args, **kwargs)
            bound.apply_defaults()
            parts: Any = list(bound.arguments.items())
        else:
            parts = [list(args), sorted(kwargs.items())]
        try:
            blob = _key_bytes(parts)
        except SerializationError as e:
            raise InvalidKey(
                f"cannot build a cache key for {self._prefix}: {e}; pass key= to cached()"
            ) from e
        return f"{self._prefix}:{hashlib.sha256(blob).hexdigest()[:32]}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        """On an instance, a method: the instance is the call's first argument (and
        part of the key like any other, so it must be encodable, or pass ``key=``)."""
        if obj is None or isinstance(self.uncached, staticmethod):
            return self
        return self._bound(obj)

    def _bound(self, obj: Any) -> BoundCachedFunction[T]:
        """This function looked up on the instance *obj*."""
        return BoundCachedFunction(self, obj)

    @functools.cached_property
    def _method_signature(self) -> inspect.Signature | None:
        """The signature of this function looked up on an instance: without its first
        parameter (what ``inspect.signature`` gives for a bound method)."""
        if self._sig is None:
            return None
        params = list(self._sig.parameters.values())
        if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            params = params[1:]
        return self._sig.replace(parameters=params)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        compute: Callable[[], T] = lambda: self.uncached(*args, **kwargs)  # noqa: E731
        return cast(T, self.cache.get_or_set(self.key_for(*args, **kwargs), cast(Any, compute),
                                             self.ttl, stale_ttl=self.stale_ttl))

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Drop the cached result of a call with these arguments."""
        return self.cache.delete(self.key_for(*args, **kwargs))

    def refresh(self, *args: Any, **kwargs: Any) -> T:
        """Recompute the result now, store it and return it. It takes the call's
        single-flight lock from any caller computing it (whose older value is then
        not stored); an :meth:`invalidate` (or a clear) while it computes leaves its
        value unstored."""
        key = self.key_for(*args, **kwargs)
        secs = self.cache.default_ttl if self.ttl is DEFAULT else _ttl_seconds(self.ttl)
        stale = self.cache.stale_ttl if self.stale_ttl is None else self.stale_ttl
        self.cache._backend or self.cache._connect()
        return self.cache._compute_and_store(key, lambda: self.uncached(*args, **kwargs), secs, stale)


def _check_options(ttl: Any, method: str) -> None:
    """Refuse ``@cache.cached`` written without parentheses at decoration: *ttl* is
    then the decorated function (no TTL is callable), and the function became the
    inner decorator, failing at its first call."""
    if callable(ttl):
        raise TypeError(f"{method}() was given the function {getattr(ttl, '__qualname__', ttl)} as its ttl: "
                        "write @cache.cached() or @cache.cached(ttl=60), with the parentheses")


def _check_prefix(key: str, sig: inspect.Signature, name: str) -> None:
    """Refuse a ``cached(key=...)`` prefix written as a key template (cashews'
    ``"user:{user_id}"``): braces naming a parameter of the function, which a prefix
    keeps as they are (every call's key starts with them, and ``delete("user:42")``
    finds nothing)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(key) if field]
    except ValueError:  # unbalanced braces: no template
        return
    named = [f"{{{field}}}" for field in fields if re.split(r"[.\[]", field, maxsplit=1)[0] in sig.parameters]
    if named:
        bare = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=sig.empty)
        raise ValueError(
            f"cached(key={key!r}) is a prefix (the arguments' hash is added to it), not a template: "
            f"{', '.join(named)} {'names a parameter' if len(named) == 1 else 'name parameters'} of "
            f"{name}; for that key pass a function of the arguments: key=lambda {str(bare)[1:-1]}: "
            f"f{key!r}")


def _function_of(func: Any) -> Any:
    """The function a ``staticmethod`` wraps (what ``cached`` checks is or is not an
    ``async def``), else *func*."""
    return func.__func__ if isinstance(func, staticmethod) else func


class BoundCachedFunction(Generic[T]):
    """A :class:`CachedFunction` method looked up on an instance (``obj.method``):
    named and signed as a bound method (no ``self``), so frameworks that read a
    callable's signature (FastAPI's ``Depends``, a route) see its parameters."""

    def __init__(self, func: CachedFunction[T], obj: Any) -> None:
        self.__func__ = func
        self.__self__ = obj
        self.uncached: Callable[..., T] = functools.partial(func.uncached, obj)
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__doc__ = func.__doc__
        signature = func._method_signature
        if signature is not None:
            self.__signature__ = signature

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.__func__(self.__self__, *args, **kwargs)

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.key_for(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        return self.__func__.invalidate(self.__self__, *args, **kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> T:
        return self.__func__.refresh(self.__self__, *args, **kwargs)


def _key_dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(tree: Any) -> Any:
    """The JSON codec's tagged tree of call arguments with every unordered part in
    one order, so equal arguments give one key in every process: dicts by key
    (``sort_keys`` for str keys, here for the others) and sets by element. Set
    iteration order depends on the process's hash seed."""
    t = type(tree)
    if t is list:
        return [_canonical(v) for v in tree]
    if t is not dict:
        return tree
    if len(tree) == 1 and _TAG in tree:  # a tagged value (the codec escapes a user's "\x00" key)
        tag, payload = tree[_TAG]
        if tag == "m":
            pairs = [[_canonical(k), _canonical(v)] for k, v in payload]
            payload = sorted(pairs, key=lambda kv: _key_dump(kv[0]))
        elif tag in ("s", "fs"):
            payload = sorted((_canonical(v) for v in payload), key=_key_dump)
        elif tag == "t":
            payload = [_canonical(v) for v in payload]
        return {_TAG: [tag, payload]}
    return {k: _canonical(v) for k, v in tree.items()}


def _key_bytes(parts: Any) -> bytes:
    """The canonical encoding of call arguments (the JSON codec's, for arguments
    without dicts or sets). :raises SerializationError: an argument it cannot encode."""
    try:
        return _key_dump(_canonical(_tag(parts))).encode("utf-8")
    except SerializationError:
        raise
    except (TypeError, ValueError, RecursionError) as e:
        raise SerializationError(f"cannot encode the arguments with the json codec: {e}") from e



class LockKeeper:
    """Extends the single-flight locks of long computations, from one daemon thread
    per process, so a compute that outlives ``lock_ttl`` keeps its lock and nobody
    else starts the same compute. The thread starts on the first :meth:`hold` and
    ends after a minute with nothing held; a forked child starts its own.

    A lock whose holder died is not extended (the holder's process is gone, or the
    *alive* check given to :meth:`hold` fails: an asyncio task that ended without
    its ``finally``), so it still expires ``lock_ttl`` after its last extension."""

    def __init__(self) -> None:
        self.reset_after_fork()
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: dict[int, list[Any]] = {}  # id -> [extend, every, next due, alive]
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def hold(self, extend: Callable[[], object], every: float,
             alive: Callable[[], bool] | None = None) -> int:
        """Call *extend* every *every* seconds until :meth:`release` of the returned id
        (or until *alive* returns ``False``: the holder is gone)."""
        with self._cond:
            hid = next(self._ids)
            self._held[hid] = [extend, every, time.monotonic() + every, alive]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="statekit-lock-keeper", daemon=True)
                self._thread.start()
            self._cond.notify()
            return hid

    def release(self, hid: int) -> None:
        with self._cond:
            self._held.pop(hid, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._held:
                    self._cond.wait(60.0)
                    if not self._held:
                        self._thread = None
                        return
                now = time.monotonic()
                due = []
                for hid, entry in list(self._held.items()):
                    if entry[2] <= now:
                        if entry[3] is not None and not entry[3]():
                            del self._held[hid]
                            continue
                        entry[2] = now + entry[1]
                        due.append(entry[0])
                if not self._held:
                    continue
                if not due:
                    self._cond.wait(max(0.0, min(e[2] for e in self._held.values()) - now))
                    continue
            for extend in due:
                try:
                    extend()
                except Exception:  # noqa: BLE001,S110 - an outage: the lock expires on its own
                    pass


#: the process's lock keeper (see :meth:`statekit.cache.Cache.get_or_set`)
lock_keeper = LockKeeper()
