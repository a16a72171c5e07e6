"""Broadcast for asyncio: :class:`AsyncBroadcaster` (the scheduler as a task on the
running event loop, ``async def`` jobs) and its Redis backend on
:mod:`statekit.redis.aio`.

Worker side: :class:`~statekit.broadcast.SharedValue` needs no async twin. Its
``get()`` reads local memory, so it is safe in a coroutine as is; ``await
value.aget()`` loads it the first time without blocking the loop and ``await
value.changed()`` waits for the next update (see its docstring)::

    users_count = SharedValue("users_count", default=0)
    await users_count.aget()                 # once, in the lifespan
    users_count.get()                        # in handlers: a memory read

Publisher side::

    broadcaster = AsyncBroadcaster()         # STATEKIT_BROADCAST_URL / STATEKIT_REDIS_URL

    @broadcaster.every(10, name="users_count")
    async def users_count() -> int:
        return await db.count_users()

    async with broadcaster:                  # start() ... await stop()
        await broadcaster.publish("motd", "hello")

**Same state, same decisions.** The claims, renewals, fencing tokens, slot
bookkeeping and publishes are :class:`~statekit.broadcast.scheduler.SchedulerBase`'s,
the very code the thread :class:`~statekit.broadcast.Broadcaster` runs, and they
call the same Lua scripts (``statekit/redis/scripts/broadcast_*.lua``) with the
same keys and arguments (:class:`~statekit.broadcast.redis.RedisOps`): sync and
async broadcasters of one prefix share leases, so a slot is computed once across
both kinds, and workers of either kind read what the other published. Only the I/O
differs: commands go through :class:`~statekit.redis.aio.AsyncTransport`.

Jobs: an ``async def`` job is awaited on the loop (keep it non-blocking); a plain
function runs in a worker thread (:func:`asyncio.to_thread`). A computation longer
than its timeout is counted and its result discarded, as in the thread scheduler.
Backends: every Redis URL and ``memory://`` (the same in-process server as the sync
``memory://``, whose shared values receive the publish before it returns); a
third-party scheme's synchronous backend is called in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..backends import load_backend
from ..cache.plan import adrive
from ..config import parse_url
from ..errors import BackendUnavailable
from ..redis import translate_errors
from ..redis.aio import AsyncTransport, PerLoop, get_async_client, within
from .memory import deliver
from .protocol import BUILTINS, Claim, Record, resolve_backend, scheme_of
from .redis import READ_FIELDS, VERSION_FIELDS, RedisOps
from .scheduler import Call, Job, SchedulerBase, Steps, T

__all__ = ["AsyncBroadcastBackend", "AsyncBroadcaster", "AsyncMemoryBackend", "AsyncRedisBackend"]

log = logging.getLogger("statekit.broadcast")


class AsyncBroadcastBackend(Protocol):
    """The publisher half of :class:`~statekit.broadcast.protocol.BroadcastBackend`
    with awaitable methods, same semantics and failures (workers subscribe through
    the sync backend's hub thread)."""

    prefix: str

    async def claim(self, name: str, owner: str, lease_ms: int, slot: int) -> Claim:
        """See :meth:`BroadcastBackend.claim <statekit.broadcast.protocol.BroadcastBackend.claim>`."""
        ...

    async def renew(self, name: str, owner: str, token: int, lease_ms: int) -> bool:
        """Extend the lease if *owner* still holds it with *token*."""
        ...

    async def release(self, name: str, owner: str, token: int) -> bool:
        """Drop the lease if *owner* still holds it with *token*."""
        ...

    async def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        """Retain, version and send *payload*; :class:`~statekit.errors.StaleToken`
        when *token* is not the current one."""
        ...

    async def read(self, names: Iterable[str]) -> dict[str, Record]:
        """The retained records of *names*."""
        ...

    async def versions(self, names: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        """``(epoch, version)`` retained for *names*."""
        ...

    async def aclose(self) -> None:
        """Give back the connections this object keeps (not a shared client)."""
        ...


class AsyncRedisBackend(RedisOps):
    """The broadcast backend on a ``redis.asyncio`` client (standalone, Sentinel or
    Cluster): :class:`~statekit.broadcast.redis.RedisBackend`'s keys, scripts and
    reply parsing (:class:`~statekit.broadcast.redis.RedisOps`), sent through an
    :class:`~statekit.redis.aio.AsyncTransport`. Use it on one event loop."""

    def __init__(self, client: Any, *, prefix: str) -> None:
        super().__init__(client, prefix=prefix)
        self._transport = AsyncTransport(client, what="broadcast")

    async def claim(self, name: str, owner: str, lease_ms: int, slot: int) -> Claim:
        return self._claimed(await self._transport.script(*self._claim_call(name, owner, lease_ms, slot)))

    async def renew(self, name: str, owner: str, token: int, lease_ms: int) -> bool:
        return bool(await self._transport.script(*self._renew_call(name, owner, token, lease_ms)))

    async def release(self, name: str, owner: str, token: int) -> bool:
        return bool(await self._transport.script(*self._release_call(name, owner, token)))

    async def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        if self._sharded is None:  # a Cluster with SPUBLISH (asked once)
            sharded = False
            if self._transport.cluster:
                with translate_errors("broadcast set-up"):
                    sharded = self._has_spublish(await self.client.execute_command(
                        "COMMAND INFO", "SPUBLISH", target_nodes=self.client.RANDOM))
            self._sharded = sharded
        reply = await self._transport.script(*self._publish_call(name, payload, token, now_ms))
        return self._published(name, token, reply)

    async def _fetch(self, names: Iterable[str], fields: tuple[str, ...],
                     what: str) -> tuple[list[str], list[Any]]:
        """``(names, rows)``: the *fields* of each name's state hash, one pipeline."""
        names = list(names)
        if not names:
            return names, []
        with translate_errors(what):
            return names, list(await self._hmget_pipeline(names, fields).execute())

    async def read(self, names: Iterable[str]) -> dict[str, Record]:
        return self._records(*await self._fetch(names, READ_FIELDS, "broadcast read"))

    async def versions(self, names: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        return self._versions(*await self._fetch(names, VERSION_FIELDS, "broadcast check"))

    async def aclose(self) -> None:
        await self._transport.aclose()


class AsyncMemoryBackend(AsyncRedisBackend):
    """``memory://name`` for asyncio: the in-process server of the sync
    ``memory://name`` (:func:`statekit.redis.aio.memory_async_client`); a publish
    reaches this process's shared values of that store before it returns."""

    def __init__(self, client: Any, *, prefix: str, store: str) -> None:
        super().__init__(client, prefix=prefix)
        self.store = store

    async def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        version = await super().publish(name, payload, token=token, now_ms=now_ms)
        deliver(self.store)
        return version


class AsyncBroadcaster(SchedulerBase):
    """:class:`~statekit.broadcast.Broadcaster` for asyncio: the scheduler runs as a
    task on the running event loop (see the module docstring).

    :param url: any Redis URL or ``memory://name``; ``STATEKIT_BROADCAST_URL`` /
        ``STATEKIT_REDIS_URL`` by default. A scheme registered by another package
        works too (its sync backend runs in worker threads).
    :param client: a ready ``redis.asyncio`` client instead of a URL.
    :param serializer: codec of published values (JSON by default); workers' must match.

    Register jobs with :meth:`every` (``async def`` or plain functions), then
    :meth:`start` it in the app's lifespan and ``await`` :meth:`stop` on shutdown
    (or ``async with broadcaster:``). Counters are the thread broadcaster's
    (``broadcast`` / prefix). The backend's connections belong to the loop that
    first used it; used from another loop later, it opens new ones there.
    """

    def _open_backend(self, url: str | None, client: Any,
                      key_prefix: str | None) -> tuple[Callable[[], Any], str]:
        found, prefix = resolve_backend(url, client, key_prefix)
        self._url = found
        self._client = client
        scheme = scheme_of(found) if found is not None else "redis"
        self._foreign = None if scheme in BUILTINS else load_backend("broadcast", scheme, BUILTINS)
        return self._open, prefix

    def _init_process_state(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the scheduler's
        # one backend per event loop: redis-py's asyncio connections belong to one
        self._backends: PerLoop[Any] = PerLoop(self._make_backend, _close_backend)
        self._task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        super()._init_process_state()

    # -- the backend ------------------------------------------------------------
    def _open(self) -> Any:
        """The backend for the running loop."""
        prefix = self.prefix
        if self._foreign is not None:
            return self._foreign.from_url(self._url, prefix=prefix)
        if self._url is None:
            return AsyncRedisBackend(self._client, prefix=prefix)
        client = get_async_client(self._url)
        if scheme_of(self._url) == "memory":
            store = parse_url(self._url, kinds=("memory",)).name or ""
            return AsyncMemoryBackend(client, prefix=prefix, store=store)
        return AsyncRedisBackend(client, prefix=prefix)

    @property
    def backend(self) -> Any:
        """The backend on the running event loop (built on first use there)."""
        return self._backends.current()

    # -- the asyncio driver -----------------------------------------------------------
    async def _do(self, call: Call) -> Any:
        method, args, kwargs = call
        if method == "compute":
            func = args[0].func
            if inspect.iscoroutinefunction(func):
                return await func()
            return await asyncio.to_thread(func)
        if self._foreign is not None:  # a synchronous third-party backend
            return await asyncio.to_thread(getattr(self.backend, method), *args, **kwargs)
        return await getattr(self.backend, method)(*args, **kwargs)

    async def _run_steps(self, steps: Steps[T]) -> T:
        return await adrive(steps, self._do)  # type: ignore[arg-type]

    def _spawn(self, job: Job, steps: Steps[None]) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_steps(steps), name=f"statekit-broadcast-{job.name}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    # -- publishing -------------------------------------------------------------------
    async def publish(self, name: str, value: Any, *, token: int | None = None) -> int:
        """Retain *value* as *name*'s value and push it to every worker (sync or
        async); the new version. Same guarantees and errors as
        :meth:`Broadcaster.publish <statekit.broadcast.Broadcaster.publish>`: one
        script, never sent twice, :class:`~statekit.errors.StaleToken` for an old
        *token*, :class:`~statekit.errors.BackendUnavailable` when the outcome is
        unknown."""
        return await self._run_steps(self._publish_steps(name, value, token))

    async def retained(self, name: str) -> tuple[int, Any] | None:
        """``(version, value)`` currently retained for *name*, or ``None``."""
        return await self._run_steps(self._retained_steps(name))

    # -- scheduling -------------------------------------------------------------
    async def run_pending(self, now: float | None = None) -> float:
        """One scheduler pass over every job (computations start as tasks); returns
        the time of the next pass. Backend failures are logged, counted and retried."""
        return await self._run_steps(self._pass_steps(time.time() if now is None else now))

    def start(self) -> asyncio.Task[None]:
        """Start the scheduler as a task on the running loop and return it; the
        running task if there is one. Call it from a coroutine (a lifespan)."""
        if self._task is not None and not self._task.done():
            return self._task
        self._stopping = False
        self._loop = loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._schedule(), name="statekit-broadcaster")
        return self._task

    async def run_forever(self) -> None:
        """Run the scheduler in this task until :meth:`stop`; releases the leases."""
        await self.start()

    async def _schedule(self) -> None:
        wake = self._wake
        assert wake is not None
        try:
            while not self._stopping:
                delay = await self.run_pending() - time.time()
                if delay > 0:  # (not wait_for: on 3.11 it drops a cancellation landing
                    # as wake is set, and the scheduler ran on until stop())
                    with contextlib.suppress(asyncio.TimeoutError):
                        await within(wake.wait(), delay)
                wake.clear()
        finally:
            await self._run_steps(self._release_steps())

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler, release its leases (another process takes over at
        once) and give back this loop's connections. Computations still running
        after *timeout* seconds are cancelled: a result not yet sent is never
        published (one whose publish was already on its way may be, as any publish
        whose outcome is unknown; its token still fences it). A plain-function job
        runs in a worker thread, which a cancellation cannot stop: ``asyncio.run``
        waits for that thread when it closes the loop. Call it on the loop the
        scheduler runs on; safe to call more than once."""
        self._stopping = True
        task, error = self._task, None
        if self._wake is not None:
            self._wake.set()
        if task is not None:
            # asyncio.wait, not awaiting the task: a scheduler task cancelled by someone
            # else (run_forever's caller, a task group) must not cancel this caller
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():  # stuck in a backend call: it must start nothing more
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and not isinstance(task.exception(), BackendUnavailable):
                error = task.exception()  # raised once the rest is done, and only once
            self._task = None
        # taken once the scheduler ended: a claim answered while it stopped may have
        # started a computation, which must not outlive stop() (nor its connections)
        runs = list(self._runs)
        if runs:
            _, late = await asyncio.wait(runs, timeout=timeout)
            for run in late:
                run.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._backends.aclose()
        if error is not None:
            raise error

    @property
    def running(self) -> bool:
        """Whether the scheduler task runs."""
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> AsyncBroadcaster:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _close_backend(backend: Any) -> None:
    """Close one loop's backend (a synchronous third-party one by its ``close()``)."""
    if hasattr(backend, "aclose"):
        await backend.aclose()
    elif hasattr(backend, "close"):
        backend.close()
