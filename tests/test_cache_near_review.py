"""Adversarial review of the cache's near cache coherence: interleavings of loads,
writes elsewhere and the invalidation listener's connection, driven step by step
(threads held at chosen points), on real servers."""

from __future__ import annotations

import threading
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
