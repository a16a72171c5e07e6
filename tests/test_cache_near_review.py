"""Adversarial review of the cache's near cache coherence: interleavings of loads,
writes elsewhere and the invalidation listener's connection, driven step by step
(threads held at chosen points), on real servers."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import pytest
import redis

from statekit.cache import Cache, _NamespaceNear
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


class _WatchedLock:
    """The listener's lock, saying when its thread asks for it."""

    def __init__(self, lock: Any, listener: Any, wanted: threading.Event) -> None:
        self.lock, self.listener, self.wanted = lock, listener, wanted

    def __enter__(self) -> Any:
        if threading.current_thread() is self.listener._thread:
            self.wanted.set()
        return self.lock.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.lock.__exit__(*exc)


def test_a_namespace_registered_while_the_listener_drops_stays_inactive(
        redis_line_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A namespace opened on a family whose listener is up registers its near cache
    and activates it (``register()`` saw ``connected``). If the listener's
    connection drops between that check and the activation, the thread's
    deactivation of every near cache could run first and the registration's
    activation last: the new near cache stayed active while nothing listened, kept
    the copies its loads read and served them after writes elsewhere (whose
    invalidations went nowhere) until the listener reconnected. Forced here: the
    activation waits until the thread deactivated the new near cache (or asks for
    the lock that orders the two), and the reconnect is held."""
    family = Cache(redis_line_url, near_cache=True, prefix="nearreg")
    other = Cache(redis_line_url, prefix="nearreg")
    assert family.near_ready(10)
    listener: Any = family._listener
    assert listener is not None
    ns = family.namespace("late")
    ns_other = other.namespace("late")
    ns_other.set("k", "v1")

    deactivated, wanted, reconnecting, release = (threading.Event() for _ in range(4))
    listener._lock = _WatchedLock(listener._lock, listener, wanted)
    real_set_active, real_endpoints = _NamespaceNear.set_active, listener.endpoints
    family_near = family._near
    armed = True

    def set_active(near: Any, active: bool) -> None:
        nonlocal armed
        mine = threading.current_thread() is listener._thread
        if mine and not active and near is not family_near:
            deactivated.set()
        if armed and active and not mine:  # the registration, after its check of `connected`
            armed = False
            with redis.Redis.from_url(redis_line_url) as r:
                r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            wait_for(lambda: deactivated.is_set() or wanted.is_set(), timeout=10,
                     what="the listener thread deactivating the near caches")
        real_set_active(near, active)

    def held_endpoints() -> Any:
        reconnecting.set()
        release.wait(10)
        return real_endpoints()

    monkeypatch.setattr(_NamespaceNear, "set_active", set_active)
    listener.endpoints = held_endpoints
    try:
        ns._connect()  # registers the namespace's near cache on the running listener
        assert wait_for(reconnecting.is_set, timeout=10, what="the listener reconnecting")
        assert ns.get("k") == "v1"
        ns_other.set("k", "v2")  # its invalidation goes nowhere: nothing listens
        assert ns.get("k") == "v2"
        assert ns._near is not None and not ns._near.active
    finally:
        release.set()
        listener.stop()
        thread = listener._thread
        if thread is not None:
            thread.join(10)
        listener._lock, listener.endpoints = listener._lock.lock, real_endpoints
        monkeypatch.undo()  # before the caches go (their finalizers call set_active)
        family.close()
        other.close()


def _applied(listener: Any, before: int) -> None:
    """Wait until *listener* applied an invalidation after *before* messages, and
    has nothing more waiting."""
    wait_for(lambda: listener.messages > before and not listener.pending(), timeout=10,
             what="the invalidation applied")


def test_a_near_copy_does_not_outlive_the_key_in_redis(redis_line_url: str) -> None:
    """A near copy's deadline is the key's Redis TTL. The TTL a load reads is what
    was left when Redis ran the read, but it was counted from when the copy was
    stored: a reply that took long to come back (a loaded event loop, a slow
    network) left a copy that was served after the key had expired in Redis, whose
    expiry invalidation comes only when Redis removes the key (when it is read, or
    found by its sampling). Forced here: the load's reply is held until the key has
    expired, and ``CLIENT PAUSE WRITE`` keeps Redis from removing it meanwhile."""
    cache = Cache(redis_line_url, near_cache=True, prefix="neardl")
    other = Cache(redis_line_url, prefix="neardl")
    r = redis.Redis.from_url(redis_line_url)
    assert cache.near_ready(10)
    backend = cache._connect()
    near, listener = cache._near, cache._listener
    assert near is not None and listener is not None
    real_do = backend._do
    expired_after = [0.0]

    def held(step: Any) -> Any:
        reply = real_do(step)
        if isinstance(step, tuple) and len(step) == 3 and tuple(step[2][:1]) == (b"gett",):
            r.execute_command("CLIENT", "PAUSE", "10000", "WRITE")  # no expiry from here on
            wait_for(lambda: time.monotonic() > expired_after[0], timeout=10, what="the key's expiry")
        return reply

    try:
        applied = listener.messages
        other.set("k", "v", ttl=0.3)
        expired_after[0] = time.monotonic() + 0.35
        _applied(listener, applied)  # the set's own invalidation does not refuse the copy
        backend._do = held
        assert cache.get("k") == "v"  # read while it lived
        backend._do = real_do
        assert "k" not in near.data  # nothing to serve after the key expired in Redis
    finally:
        backend._do = real_do
        r.execute_command("CLIENT", "UNPAUSE")
    try:
        assert cache.get("k") is None
    finally:
        r.close()
        cache.close()
        other.close()


def test_an_async_near_copy_does_not_outlive_the_key_in_redis(redis_line_url: str) -> None:
    """The same for :class:`AsyncCache`, whose reply waits for the event loop too:
    the reply is held (the task resumed late) until the key expired in Redis."""
    from statekit.cache import AsyncCache

    r = redis.Redis.from_url(redis_line_url)
    expired_after = [0.0]

    async def main() -> tuple[Any, bool, Any]:
        cache = AsyncCache(redis_line_url, near_cache=True, prefix="neardla")
        other = AsyncCache(redis_line_url, prefix="neardla")
        try:
            assert await cache.near_ready(10)
            await cache.get("warm")
            backend, near, listener = cache._backend, cache._near, cache._listener
            assert backend is not None and near is not None and listener is not None
            real_do = backend._do

            async def held(step: Any) -> Any:
                reply = await real_do(step)
                if isinstance(step, tuple) and len(step) == 3 and tuple(step[2][:1]) == (b"gett",):
                    r.execute_command("CLIENT", "PAUSE", "10000", "WRITE")  # no expiry from here on
                    while time.monotonic() <= expired_after[0]:
                        await asyncio.sleep(0.01)
                return reply

            try:
                applied = listener.messages
                await other.set("k", "v", ttl=0.3)
                expired_after[0] = time.monotonic() + 0.35
                _applied(listener, applied)  # (see the sync test)
                backend._do = held
                first = await cache.get("k")
                backend._do = real_do
                kept = "k" in near.data
            finally:
                backend._do = real_do
                r.execute_command("CLIENT", "UNPAUSE")
            return first, kept, await cache.get("k")
        finally:
            await cache.aclose()
            await other.aclose()

    try:
        first, kept, after = asyncio.run(main())
    finally:
        r.close()
    assert first == "v"  # read while it lived
    assert not kept  # nothing to serve after the key expired in Redis
    assert after is None


def test_two_near_caches_of_one_namespace_both_get_its_invalidations(redis_line_url: str) -> None:
    """The listener kept one near cache per namespace base: a second cache of the
    same namespace in the family (``cache.namespace("default")`` on a root whose
    namespace is ``default``, or two threads opening ``namespace("x")`` for the first
    time at once, which makes two) replaced the first one's registration, and the
    first one kept serving its copies after writes elsewhere; when the one that
    registered last was dropped, the namespace's base was unregistered and the
    survivor got no invalidation at all."""
    root = Cache(redis_line_url, near_cache=True, prefix="neardup")
    other = Cache(redis_line_url, prefix="neardup")
    assert root.near_ready(10)
    listener: Any = root._listener
    try:
        other.set("k", "v1")
        other.namespace("x").set("k", "v1")
        assert root.get("k") == "v1"
        alias = root.namespace("default")  # the root's own namespace, a second near cache
        assert alias.get("k") == "v1"

        # two siblings of one new namespace (two threads' first namespace("x") at once)
        first = Cache(None, client=root.client, prefix="neardup", namespace="x", near_cache=True,
                      _parent=root)
        second = root.namespace("x")
        assert second is not first
        assert first.get("k") == "v1" and second.get("k") == "v1"
        del second  # the one registered last is dropped ...
        gc.collect()

        applied = listener.messages
        other.set("k", "v2")
        other.namespace("x").set("k", "v2")
        wait_for(lambda: listener.messages >= applied + 2 and not listener.pending(), timeout=10,
                 what="the invalidations applied")
        assert root.get("k") == "v2"
        assert alias.get("k") == "v2"
        assert first.get("k") == "v2"  # ... and the survivor still gets its invalidations
    finally:
        root.close()
        other.close()
