"""``memory://name`` for broadcast: the Redis backend on this process's in-process
Redis (:func:`statekit.redis.memory_client`, fakeredis with Lua), for users' unit
tests.

It runs the very Lua scripts and pub/sub code of :mod:`statekit.broadcast.redis`;
the only difference is delivery: a publish reaches every :class:`SharedValue` of
the same store in this process *before* :meth:`~statekit.broadcast.Broadcaster.publish`
returns (``publish`` then ``get()`` shows the new value at once, as in earlier
releases). The hub of a synchronous backend runs no thread: the publish, once its
script has returned, asks every subscription of the store to drain what it
received. Shares nothing with other processes; :func:`statekit.redis.reset_memory`
(and :func:`statekit.backends.memory.reset`) empties it between tests.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import ClassVar

from ..config import parse_url
from ..redis import memory_client
from .redis import RedisBackend, RedisSubscription

__all__ = ["MemoryBackend", "deliver"]

# store name -> the drain methods of this process's subscriptions to it (weak)
_ready: dict[str, list[weakref.WeakMethod[Callable[[], object]]]] = {}
_ready_lock = threading.Lock()


class MemoryBackend(RedisBackend):
    """:class:`~statekit.broadcast.redis.RedisBackend` on ``memory_client(name)``,
    delivering publishes synchronously (see the module docstring)."""

    synchronous: ClassVar[bool] = True

    def __init__(self, name: str, *, prefix: str) -> None:
        super().__init__(memory_client(name), prefix=prefix)
        self.name = name

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> MemoryBackend:
        return cls(parse_url(url, kinds=("memory",)).name or "", prefix=prefix)

    def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        version = super().publish(name, payload, token=token, now_ms=now_ms)
        deliver(self.name)
        return version

    def subscribe(self, ready: Callable[[], object] | None = None) -> RedisSubscription:
        """A subscription; *ready* (a bound method, held weakly) is called after
        every publish to this store, in the publishing thread."""
        subscription = super().subscribe()
        if ready is not None:
            with _ready_lock:
                _ready.setdefault(self.name, []).append(weakref.WeakMethod(ready))  # type: ignore[arg-type]
        return subscription


def deliver(store: str) -> None:
    """Have every subscription of this process to the store *store* drain what it
    received (called after each publish, by the sync and the asyncio backend)."""
    with _ready_lock:
        refs = _ready.get(store, [])
        refs[:] = [ref for ref in refs if ref() is not None]
        callbacks = [ref() for ref in refs]
    for callback in callbacks:
        if callback is not None:
            callback()


def _after_fork_in_child() -> None:
    """A new lock in a forked child (a parent thread may have held it mid-publish),
    and no deliveries to the parent's subscriptions, which the child's hubs replace."""
    global _ready_lock
    _ready_lock = threading.Lock()
    _ready.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
