"""``AsyncCache``: the cache for asyncio code (ASGI apps, Django async views).

The same cache as :class:`statekit.cache.Cache`, awaited: the same keys, codecs,
generations (Cluster included), Lua script, single-flight lock, XFetch, circuit
breaker and near cache, so a value written by a sync worker is read by an async one
and back. Nothing is written twice: every operation is one plan
(:mod:`statekit.cache.plan`) that :class:`~statekit.cache.Cache` runs with plain calls
and :class:`AsyncCache` with awaits on redis-py's asyncio client
(:class:`statekit.redis.aio.AsyncTransport`).

**Event loops.** Connections belong to the loop that opened them: from a URL the
cache takes one client per running loop (:func:`statekit.redis.aio.get_async_client`),
so one ``AsyncCache`` may serve several loops (a Django process where ``async_to_sync``
runs loops of its own, a test runner). A ready client (``client=``) is used on the
loop it was made for. At most ``limit`` commands per loop are in flight (the
transport's bound, default the pool's ``max_connections`` capped at 64); more callers
wait their turn, so many concurrent ``await cache.get()`` use a bounded number of
connections and the loop never blocks on I/O.

**Near cache.** ``near_cache=`` as for ``Cache``: the invalidation listener is the
same background thread (its own redis-py connection tracking the prefix with
``CLIENT TRACKING ... BCAST``), so the async data connections need no tracking set-up;
serving a near copy costs one zero-timeout ``poll`` and never blocks the loop. With
``client=`` a near cache needs a standalone client (the listener connects with its
connection settings); pass a URL for Sentinel and Cluster.

**Clear.** One ``INCR`` of the namespace's generation counter, as for ``Cache``; the
older generations' keys are removed by the process's sweeper thread through a sync
client of the same URL (with ``client=`` they are left to expire or to the next
clear made by a sync cache).

Failures as ``Cache``: ``on_error="raise"`` raises
:class:`~statekit.errors.BackendUnavailable`, ``"miss"`` reads the default and drops
writes; the breaker opens after ``failure_threshold`` consecutive failures. A task
cancelled while a command is in flight drops that connection (never read as another
caller's reply) and releases the single-flight lock it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from ..config import url_and_scheme
from ..errors import BackendUnavailable, ConfigError, LockError
from ..redis import cluster_unapplied, translate_errors
from . import _ABSENT, _IO, _CacheCore, _check_name
from .plan import BATCH, BE, CMD, COMPUTE, GET, HOLD, LOCK, RUN, SCAN, SLEEP, Plan, adrive
from .redis import SCRIPT, RedisCacheBackend, _RedisCachePlans, _value_error, scan_reply, scan_targets
from .tools import (
    DEFAULT,
    TTL,
    BoundCachedFunction,
    CachedFunction,
    Lock,
    _check_options,
    _function_of,
    _ttl_seconds,
    lock_keeper,
)

__all__ = ["AsyncBoundCachedFunction", "AsyncCache", "AsyncCachedFunction", "AsyncLock",
           "AsyncRedisCacheBackend"]

T = TypeVar("T")


class _Transports:
    """One :class:`~statekit.redis.aio.AsyncTransport` per running event loop
    (:class:`~statekit.redis.aio.PerLoop`: given back with its loop): on the URL's
    shared client of that loop (:func:`~statekit.redis.aio.get_async_client`, one
    pool for the process's caches, session stores and broadcasters of the URL, as
    the sync ones share :func:`~statekit.redis.get_client`'s: its ``max_connections``
    bounds them all, the transports on it keeping its kept share together), or on
    the one ready client. :meth:`aclose` gives this cache's connections back and
    leaves the shared client open for the others; it is closed with its loop."""

    def __init__(self, url: str | None, client: Any, overrides: dict[str, Any]) -> None:
        from ..redis.aio import get_async_client, transports_per_loop

        self.url = url
        self.client = client
        self.overrides = overrides
        if client is not None:
            from redis.asyncio.cluster import RedisCluster

            self.cluster = isinstance(client, RedisCluster)
            _check_bytes(client)
        else:
            self.cluster = url is not None and url.partition("://")[0].lower() == "redis+cluster"

        def make_client() -> Any:
            made = client if client is not None else get_async_client(cast(str, url), **overrides)
            _check_bytes(made)
            return made

        self._lanes = transports_per_loop(make_client, owned=False, what="cache", reply_error=_value_error)
        #: the running loop's transport (made on first use there)
        self.current = self._lanes.current

    async def aclose(self) -> None:
        """Give the running loop's connections back (the client stays open: the
        URL's is shared, a ready one the caller's)."""
        await self._lanes.aclose()


def _check_bytes(client: Any) -> None:
    get_encoder = getattr(client, "get_encoder", None)
    if get_encoder is not None and get_encoder().decode_responses:
        raise ConfigError("the cache needs a Redis client with decode_responses=False")


def _gate(transport: Any) -> asyncio.Semaphore:
    """Cluster: at most ``transport.limit`` cache calls in flight on this loop
    (redis-py's asyncio ``RedisCluster`` fails a command past a node's
    ``max_connections`` instead of waiting; a pipeline takes one connection per node)."""
    gate: asyncio.Semaphore | None = getattr(transport, "_statekit_cache_gate", None)
    if gate is None:
        gate = transport._statekit_cache_gate = asyncio.Semaphore(transport.limit)
    return gate


def _one(transport: Any, effect: tuple[Any, ...]) -> Awaitable[Any]:
    """A ``CMD``, a ``RUN`` or a single ``EVALSHA`` command of a batch, unsent (the casts
    name their type as a string: no ``Awaitable[Any]`` made per command)."""
    if effect[0] == RUN:
        return cast("Awaitable[Any]", transport.script(SCRIPT, effect[1], effect[2]))
    cmd = effect[1]
    if cmd[0] == b"EVALSHA":
        n = int(cmd[2])
        return cast("Awaitable[Any]", transport.script(SCRIPT, cmd[3:3 + n], cmd[3 + n:]))
    return cast("Awaitable[Any]", transport.command(*cmd))


async def _batch(transport: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Cluster: single-slot commands in one pipeline of redis-py's asyncio
    ``RedisCluster`` (each node gets its share in one round trip, all nodes at once),
    the replies in order. A command a node refused unapplied (``NOSCRIPT``, ``MOVED``,
    ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) is sent again alone through the
    transport; a connection failure raises ``BackendUnavailable`` and nothing is sent
    again (statekit's clients have redis-py's command retry off)."""
    import redis

    pipe = transport.client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(cmd[0].decode(), *cmd[1:])  # redis-py routes by the str name
    try:
        async with _gate(transport):
            replies = await pipe.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError, redis.exceptions.RedisClusterException,
            redis.exceptions.ClusterError) as e:
        raise BackendUnavailable(f"a Redis Cluster node failed during a cache call; the outcome of its "
                                 f"commands is unknown and they were not sent again: {e}") from e
    out = list(replies)
    for i, reply in enumerate(out):
        if isinstance(reply, redis.ResponseError):
            if cluster_unapplied(reply):
                out[i] = await _one(transport, (CMD, commands[i]))
            else:
                raise transport._refused(reply) from reply
        elif isinstance(reply, BaseException):
            raise BackendUnavailable(f"a Redis Cluster node failed during a cache call: {reply}") from reply
    return out


async def _scan_page(transport: Any, match: bytes, count: int,
                     cursors: Mapping[str, int] | None) -> tuple[dict[str, int], list[bytes]]:
    """:func:`statekit.cache.redis.scan_page`, awaited."""
    out: dict[str, int] = {}
    names: list[bytes] = []
    if not transport.cluster:
        start = 0 if cursors is None else cursors[""]
        scan_reply(out, names, "", await transport.command(b"SCAN", start, b"MATCH", match, b"COUNT", count))
        return out, names
    client = transport.client
    with translate_errors("a cache scan"):
        for name, node, cursor in scan_targets(client, cursors):
            async with _gate(transport):
                reply = await client.scan(cursor=cursor, match=match, count=count, target_nodes=node)
            scan_reply(out, names, name, reply)
    return out, names


class AsyncRedisCacheBackend(_RedisCachePlans):
    """The Redis cache backend on redis-py's asyncio client: the plans of the sync
    :class:`~statekit.cache.redis.RedisCacheBackend` (same names, generations,
    script), awaited. :meth:`call` runs one operation by name."""

    transport: _Transports

    def __init__(self, transports: _Transports, base: str, sync: RedisCacheBackend | None = None) -> None:
        super().__init__(transports, base)
        #: a sync backend of the same namespace (from the URL): it sweeps cleared
        #: generations and makes the invalidation listener
        self.sync = sync
        self.sweeping = sync
        #: per event loop: the gets in flight and those waiting for the next batch
        self._gets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gets] = weakref.WeakKeyDictionary()
        #: the loop whose gets were asked last, and its entry (most calls: no dictionary lookup)
        self._last_gets: tuple[Callable[[], asyncio.AbstractEventLoop | None], _Gets] | None = None

    def namespace(self, base: str) -> AsyncRedisCacheBackend:
        return type(self)(self.transport, base, None if self.sync is None else self.sync.namespace(base))

    def _do(self, effect: tuple[Any, ...]) -> Awaitable[Any]:
        """Perform one effect of a plan: the awaitable that does it (the transport's
        command itself on the common path, no coroutine frame of its own)."""
        kind = effect[0]
        if kind == GET:
            return self._get_batched(effect[1])
        transport = self.transport.current()
        if kind == BATCH:
            return _batch(transport, effect[1])
        if kind == SCAN:
            return _scan_page(transport, *effect[1:])
        if transport.direct:  # the transport bounds the commands in flight itself
            return _one(transport, effect)
        return self._gated(transport, effect)

    @staticmethod
    async def _gated(transport: Any, effect: tuple[Any, ...]) -> Any:
        async with _gate(transport):  # Cluster: redis-py raises past a node's max_connections
            return await _one(transport, effect)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run the backend operation *name* (``"get"``, ``"set"``, ... as
        :class:`~statekit.cache.protocol.CacheBackend` names them)."""
        return await adrive(getattr(self, "plan_" + name)(*args, **kwargs), self._do)

    def _loop_gets(self) -> _Gets:
        """This loop's gets of this namespace."""
        loop = asyncio.get_running_loop()
        last = self._last_gets
        if last is not None and last[0]() is loop:
            return last[1]
        state = self._gets.get(loop)
        if state is None:
            state = self._gets[loop] = _Gets()
        self._last_gets = (weakref.ref(loop), state)
        return state

    def plan_get(self, key: str) -> Plan[bytes | None]:
        """:meth:`get` as a plan. Standalone and Sentinel: sent at once, from this plan,
        when no other ``get`` of this namespace is in flight on this loop; else a
        ``(GET, key)`` effect that joins the gets asked in the same pass of the loop
        (:meth:`_get_batched`): 100 concurrent gets cost a few round trips, not 100."""
        if self.cluster:
            return (yield from super().plan_get(key))
        state = self._loop_gets()
        if state.in_flight or state.keys is not None:
            value: bytes | None = yield (GET, key)
            return value
        state.in_flight += 1
        try:
            return (yield from super().plan_get(key))
        finally:
            state.in_flight -= 1

    def _get_batched(self, key: str) -> Awaitable[bytes | None]:
        """``get`` of *key*, joined to the gets asked in the same pass of the loop, sent
        together as one ``MGET`` (:meth:`plan_get_many`) in the next pass. Every waiter
        gets its own value, or the batch's exception (a read: nothing to resend)."""
        state = self._loop_gets()
        loop = asyncio.get_running_loop()
        if state.keys is None:
            state.keys, state.waiters = [], []
            loop.call_soon(self._send_gets, state)
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        state.keys.append(key)
        state.waiters.append(waiter)
        return waiter

    def _send_gets(self, state: _Gets) -> None:
        keys, waiters = state.keys or [], state.waiters
        state.keys, state.waiters = None, []
        state.in_flight += 1
        task = asyncio.ensure_future(adrive(self.plan_get_many(keys), self._do))
        _batches.add(task)

        def done(task: asyncio.Future[list[bytes | None]]) -> None:
            _batches.discard(task)
            state.in_flight -= 1
            error = None if task.cancelled() else task.exception()
            for i, waiter in enumerate(waiters):
                if waiter.done():  # its caller was cancelled
                    continue
                if task.cancelled():
                    waiter.cancel()
                elif error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(task.result()[i])

        task.add_done_callback(done)

    def plan_release_lock(self, name: str, token: str) -> Plan[bool]:
        """:meth:`release_lock` as a plan. Cancelled before its reply came (a task
        cancelled again while a ``finally`` releases its single-flight lock, or while
        it releases an :class:`AsyncLock`), the release is sent again in a task of its
        own: a compare-and-delete of this token is harmless twice, and without it the
        lock would stay until its TTL, every waiter with it."""
        try:
            return (yield from super().plan_release_lock(name, token))
        except asyncio.CancelledError:
            _drop(adrive(super().plan_release_lock(name, token), self._do))
            raise

    def near_listener(self, prefix: str) -> Any:
        if self.sync is not None:
            return self.sync.near_listener(prefix)
        client = self.transport.client
        if client is None or self.cluster or hasattr(client.connection_pool, "get_master_address"):
            return None
        from ..redis.tracking import InvalidationListener

        pool = client.connection_pool
        endpoint = {**pool.connection_kwargs, "ssl": "SSL" in pool.connection_class.__name__}
        return InvalidationListener(lambda: [endpoint], prefix)

    def generation_listener(self) -> Any:
        return None if self.sync is None else self.sync.generation_listener()


class _Gets:
    """One loop's gets of one namespace (see :meth:`AsyncRedisCacheBackend._get_batched`)."""

    __slots__ = ("in_flight", "keys", "waiters")

    def __init__(self) -> None:
        self.in_flight = 0
        self.keys: list[str] | None = None
        self.waiters: list[asyncio.Future[bytes | None]] = []


#: batched gets under way (referenced until done)
_batches: set[asyncio.Future[Any]] = set()

#: lock releases under way in the background (referenced until done)
_dropping: set[asyncio.Future[None]] = set()


def _alive(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    """Whether *task* may still run its ``finally`` (the lock keeper's check: a task
    destroyed pending, or left on a closed loop, never releases what it holds)."""
    ref = weakref.ref(task) if task is not None else None

    def alive() -> bool:
        t = None if ref is None else ref()
        return t is not None and not t.done() and not t.get_loop().is_closed()

    return alive


def _drop(release: Awaitable[Any]) -> None:
    """Run the lock release *release* in a task of its own (a cancelled caller cannot
    wait for it); if Redis is unavailable the lock expires on its own."""

    async def drop() -> None:
        with contextlib.suppress(BackendUnavailable):
            await release

    task = asyncio.ensure_future(drop())
    _dropping.add(task)
    task.add_done_callback(_dropping.discard)


class AsyncLock(Lock):
    """:class:`~statekit.cache.tools.Lock` for asyncio: ``async with cache.lock("name"):``.
    The token is kept on this object (not per thread): one task takes and releases it."""

    _token: str | None = None

    @property  # type: ignore[override]
    def token(self) -> str | None:
        """The token this object holds the lock with, ``None`` if it does not."""
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Take the lock (see :meth:`Lock.acquire <statekit.cache.tools.Lock.acquire>`).
        Cancelled (or failed) while an attempt's reply was awaited, that attempt's
        token is released in the background: Redis may have granted it
        (:meth:`AsyncCache._abandoned`)."""
        return await adrive(self._acquire(blocking, timeout), self.cache._effect)

    async def release(self) -> None:  # type: ignore[override]
        """Release the lock; :class:`~statekit.errors.LockError` if not held.
        Cancelled, the release is sent again in the background (it may not have
        been sent; a compare-and-delete of this token is harmless twice: see
        :meth:`AsyncRedisCacheBackend.plan_release_lock`)."""
        await adrive(self._release(), self.cache._effect)

    async def extend(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """Reset the lock's TTL to *timeout* (default: the lock's timeout)."""
        await adrive(self._extend(timeout), self.cache._effect)

    async def __aenter__(self) -> AsyncLock:
        if not await self.acquire():
            raise LockError(f"could not acquire lock {self.name[2:]!r} in time")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncCachedFunction(CachedFunction[Awaitable[T]]):
    """An ``async def`` wrapped by :meth:`AsyncCache.cached`: awaiting a call
    returns the cached result (single flight across processes, XFetch)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> T:  # type: ignore[override]
        cache = cast(AsyncCache, self.cache)
        return cast(T, await cache.get_or_set(self.key_for(*args, **kwargs),
                                              lambda: self.uncached(*args, **kwargs), self.ttl,
                                              stale_ttl=self.stale_ttl))

    def _bound(self, obj: Any) -> AsyncBoundCachedFunction[T]:
        return AsyncBoundCachedFunction(self, obj)

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:  # type: ignore[override]
        """Drop the cached result of a call with these arguments."""
        return await cast(AsyncCache, self.cache).delete(self.key_for(*args, **kwargs))

    async def refresh(self, *args: Any, **kwargs: Any) -> T:  # type: ignore[override]
        """Recompute the result now, store it and return it (as
        :meth:`CachedFunction.refresh <statekit.cache.tools.CachedFunction.refresh>`)."""
        cache = cast(AsyncCache, self.cache)
        secs = cache.default_ttl if self.ttl is DEFAULT else _ttl_seconds(self.ttl)
        stale = cache.stale_ttl if self.stale_ttl is None else self.stale_ttl
        cache._backend or cache._connect()
        plan = cache._refresh(self.key_for(*args, **kwargs), lambda: self.uncached(*args, **kwargs),
                              secs, stale)
        return cast(T, await adrive(plan, cache._effect))


class AsyncBoundCachedFunction(BoundCachedFunction[Awaitable[T]]):
    """An :class:`AsyncCachedFunction` method looked up on an instance: a coroutine
    function to the frameworks that ask (its ``__call__`` is an ``async def``: FastAPI
    awaits it as a dependency or an endpoint instead of running it in a thread)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> T:  # type: ignore[override]
        return await self.__func__(self.__self__, *args, **kwargs)


class AsyncCache(_CacheCore):
    """:class:`~statekit.cache.Cache` for asyncio (see the module docstring): the
    same constructor (*client* is a ``redis.asyncio`` client; URLs as for ``Cache``,
    ``memory://`` included: a sync and an async ``memory://name`` cache share one
    in-process server) and the same methods, awaited. Safe for any number of tasks."""

    def __init__(self, url: str | None = None, *, client: Any = None, **options: Any) -> None:
        """:param client: a ready ``redis.asyncio`` client (``Redis``, a Sentinel
            master, ``RedisCluster``; ``decode_responses`` off) instead of *url*.
        :param options: the other keyword arguments of :class:`~statekit.cache.Cache`."""
        super().__init__(url, client=client, **options)
        self._task_tokens: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[str, str]] = (
            weakref.WeakKeyDictionary())

    def _new_backend(self) -> AsyncRedisCacheBackend:
        overrides: dict[str, Any] = {}
        if self.timeout is not None:
            overrides = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
        if self.client is not None:
            _check_name("prefix", self.prefix)
            return AsyncRedisCacheBackend(_Transports(None, self.client, {}), self.base)
        url, scheme = url_and_scheme(self._url())
        if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "memory"):
            raise ConfigError(f"AsyncCache takes Redis and memory:// URLs, not {scheme}://")
        from . import _backend_class

        sync = _backend_class(url).from_url(url, self.base, {"timeout": self.timeout})
        assert isinstance(sync, RedisCacheBackend)  # noqa: S101 - the schemes above
        return AsyncRedisCacheBackend(_Transports(url, None, overrides), self.base, sync)

    def _tokens(self) -> dict[str, str]:
        """This task's single-flight lock tokens, by key."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always in a task under asyncio
            return super()._tokens()
        tokens = self._task_tokens.get(task)
        if tokens is None:
            tokens = self._task_tokens[task] = {}
        return tokens

    def _effect(self, effect: tuple[Any, ...]) -> Awaitable[Any]:
        """Perform one effect of a plan (async): the awaitable that does it (a backend's
        I/O is the backend's own awaitable, no coroutine frame of its own)."""
        backend: AsyncRedisCacheBackend = self._backend or self._connect()
        if effect[0] in _IO:  # the backend's plans, run inside the cache's
            return backend._do(effect)
        return self._facade_effect(backend, effect)

    async def _facade_effect(self, backend: AsyncRedisCacheBackend, effect: tuple[Any, ...]) -> Any:
        kind = effect[0]
        if kind == BE:
            return await backend.call(effect[1], *effect[2], **effect[3])
        if kind == COMPUTE:
            result = effect[1]()
            return await result if inspect.isawaitable(result) else result
        if kind == LOCK:
            return await adrive(self._take_lock(effect[1]), self._effect)
        if kind == SLEEP:
            await asyncio.sleep(effect[1])
            return None
        if kind == HOLD:
            if backend.sync is not None:  # a thread: a plain function computing on the loop blocks tasks
                return self._keep(backend.sync, effect[1], effect[2], _alive(asyncio.current_task()))
            return asyncio.ensure_future(self._keep_lock(effect[1], effect[2]))
        held = effect[1]  # UNHOLD
        if isinstance(held, int):
            lock_keeper.release(held)
        else:
            held.cancel()
        return None

    def _abandoned(self, name: str, token: str, error: BaseException) -> None:
        """A task cancelled, or a call failed, while the ``SET NX`` of lock *name* was
        out (a single-flight or an :class:`AsyncLock`): release that token in the
        background (Redis may have granted it; a no-op if not). A refused command or
        a breaker that sent nothing (an error without a cause) holds nothing."""
        if isinstance(error, Exception) and not (isinstance(error, BackendUnavailable)
                                                 and error.__cause__ is not None):
            return
        backend: AsyncRedisCacheBackend = self._backend or self._connect()
        _drop(backend.call("release_lock", name, token))

    async def _keep_lock(self, name: str, token: str) -> None:
        """Extend a single-flight lock every ``lock_ttl / 3`` while its compute runs:
        a cache made with ``client=`` (no sync backend for :meth:`_keep`'s thread; a
        compute that blocks the loop for longer than ``lock_ttl`` loses the lock)."""
        backend: AsyncRedisCacheBackend = self._backend or self._connect()
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                await backend.call("extend_lock", name, token, int(self.lock_ttl * 1000))
            except BackendUnavailable:
                pass  # the lock expires on its own

    # -- reads --------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """:meth:`Cache.get <statekit.cache.Cache.get>`, awaited."""
        if self._near is not None:
            hit = self._near_get(key)
            if hit is not _ABSENT:
                return hit
        return await adrive(self._get(key, default), self._effect)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """:meth:`Cache.get_many <statekit.cache.Cache.get_many>`, awaited."""
        return await adrive(self._get_many(keys), self._effect)

    async def has(self, key: str) -> bool:
        """:meth:`Cache.has <statekit.cache.Cache.has>`, awaited."""
        return await self.ttl(key) is not None

    async def ttl(self, key: str) -> float | None:
        """:meth:`Cache.ttl <statekit.cache.Cache.ttl>`, awaited."""
        return await adrive(self._ttl(key), self._effect)

    # -- writes -------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """:meth:`Cache.set <statekit.cache.Cache.set>`, awaited."""
        return await adrive(self._set(key, value, ttl), self._effect)

    async def add(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """:meth:`Cache.add <statekit.cache.Cache.add>`, awaited."""
        return await adrive(self._add(key, value, ttl), self._effect)

    async def replace(self, key: str, value: Any, ttl: TTL = DEFAULT) -> bool:
        """:meth:`Cache.replace <statekit.cache.Cache.replace>`, awaited."""
        return await adrive(self._replace(key, value, ttl), self._effect)

    async def set_many(self, mapping: Mapping[str, Any], ttl: TTL = DEFAULT) -> bool:
        """:meth:`Cache.set_many <statekit.cache.Cache.set_many>`, awaited."""
        return await adrive(self._set_many(mapping, ttl), self._effect)

    async def delete(self, key: str) -> bool:
        """:meth:`Cache.delete <statekit.cache.Cache.delete>`, awaited."""
        return await adrive(self._delete(key), self._effect)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """:meth:`Cache.delete_many <statekit.cache.Cache.delete_many>`, awaited."""
        return await adrive(self._delete_many(keys), self._effect)

    async def incr(self, key: str, delta: int = 1, *, ttl: TTL = None, create: bool = True) -> int:
        """:meth:`Cache.incr <statekit.cache.Cache.incr>`, awaited (never applied
        twice: a command whose reply was lost raises ``BackendUnavailable``)."""
        return await adrive(self._incr(key, delta, ttl, create), self._effect)

    async def decr(self, key: str, delta: int = 1, *, ttl: TTL = None, create: bool = True) -> int:
        """:meth:`incr` by ``-delta``."""
        return await self.incr(key, -delta, ttl=ttl, create=create)

    async def touch(self, key: str, ttl: TTL = DEFAULT) -> bool:
        """:meth:`Cache.touch <statekit.cache.Cache.touch>`, awaited."""
        return await adrive(self._touch(key, ttl), self._effect)

    async def persist(self, key: str) -> bool:
        """:meth:`Cache.persist <statekit.cache.Cache.persist>`, awaited."""
        return await adrive(self._persist(key), self._effect)

    async def clear(self) -> bool:
        """:meth:`Cache.clear <statekit.cache.Cache.clear>`, awaited: O(1), the sync
        caches of the namespace see it at once."""
        return await adrive(self._clear(), self._effect)

    # -- stampede protection ------------------------------------------------------------

    async def get_or_set(self, key: str, default: Any, ttl: TTL = DEFAULT, *,
                         stale_ttl: float | None = None) -> Any:
        """:meth:`Cache.get_or_set <statekit.cache.Cache.get_or_set>`, awaited.
        *default* may be a value, a function or an ``async def`` (awaited): one caller
        across processes computes it while the others wait or get the stale value. A
        plain function runs on the loop's thread; its lock is extended all the same,
        from the process's lock keeper thread (not for a cache made with ``client=``:
        there a compute must not block the loop for ``lock_ttl``). An awaitable
        (``fetch()`` for ``fetch``) is a ``TypeError``: it was a value to store, a
        ``SerializationError`` on a miss only, and never awaited."""
        if inspect.iscoroutine(default) or isinstance(default, asyncio.Future):
            if inspect.iscoroutine(default):
                default.close()  # never awaited: no RuntimeWarning for it
            raise TypeError(f"AsyncCache.get_or_set({key!r}, ...) takes a value, a function or an async "
                            f"function to call on a miss, not an awaitable ({type(default).__name__}): "
                            "pass fetch, not fetch()")
        return await adrive(self._get_or_set(key, default, ttl, stale_ttl), self._effect)

    def cached(self, ttl: TTL = DEFAULT, *, key: str | Callable[..., str] | None = None,
               stale_ttl: float | None = None
               ) -> Callable[[Callable[..., Awaitable[T]]], AsyncCachedFunction[T]]:
        """Decorator for an ``async def``: :meth:`Cache.cached
        <statekit.cache.Cache.cached>` (same keys, so a sync and an async function
        with the same ``key=`` share entries); ``.invalidate`` and ``.refresh`` are
        awaited."""
        _check_options(ttl, "AsyncCache.cached")

        def decorate(func: Callable[..., Awaitable[T]]) -> AsyncCachedFunction[T]:
            if not inspect.iscoroutinefunction(_function_of(func)):  # a staticmethod's too
                raise TypeError(f"AsyncCache.cached() wraps async functions; {func.__qualname__} is not "
                                "(use Cache.cached)")
            return AsyncCachedFunction(cast(Any, self), func, ttl, key, stale_ttl)

        return decorate

    # -- locks and the rest -------------------------------------------------------------

    def lock(self, name: str, timeout: float = 10.0, *, blocking_timeout: float | None = None) -> AsyncLock:
        """A distributed lock called *name*, the one :meth:`Cache.lock
        <statekit.cache.Cache.lock>` of the same name takes: ``async with
        cache.lock("job"):``."""
        self._check_key(name)
        return AsyncLock(cast(Any, self), name, timeout, blocking_timeout)

    async def near_ready(self, timeout: float = 5.0) -> bool:
        """Start the near cache's invalidation connection if needed and wait (without
        blocking the loop) until it is up; ``False`` if there is no near cache or it
        did not come up in time."""
        self._backend or self._connect()
        if self._listener is None or self._near is None:
            return False
        self._listener.ensure_running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._listener.connected.is_set():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def aclose(self) -> None:
        """Give this loop's connections back to the pool and stop the near cache
        listener."""
        if self._listener is not None and self._parent is None:
            self._listener.stop()
        if self._backend is not None:
            await self._backend.transport.aclose()
            if self._backend.sync is not None and self._parent is None:
                self._backend.sync.close()
