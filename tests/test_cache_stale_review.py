"""Review of the cache's remaining staleness holes, sync and async, on real servers:
each interleaving is driven step by step (a compute that waits for an event, a
constructor that waits at a barrier), never left to timing.

Found by this review (each test failed before its fix):

* a value computed before a ``delete()`` or a ``clear()`` (by a single-flight
  leader, by a caller that gave up waiting for one, by ``refresh()``) was stored
  after it, so the next reader got the pre-delete value until its TTL: a delete now
  also removes the key's single-flight lock, whose token the store is fenced on, and
  a flight stores in the generation it started in, without moving to a newer one; a
  ``set()``/``set_many()`` removes the lock too (not on Cluster), so a value computed
  before it no longer overwrites the value it wrote;
* a caller that gave up waiting for a slow leader stored its newer value, then the
  leader stored its older one over it; ``refresh()`` stored without the lock, so a
  leader computing from older data overwrote it;
* ``Lock.acquire(timeout=nan)`` waited for ever; a forked child held its parent
  thread's lock token (its ``release()`` released the parent's lock);
* two threads' first ``namespace("x")`` at once made two caches of one namespace;
* a dropped cache's finalizer, run on the near cache listener's thread while it held
  a near cache's lock (a garbage collection inside ``evict``), deadlocked in
  ``stop()``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from statekit.cache import AsyncCache, Cache
from statekit.errors import ConfigError, LockError

pytestmark = pytest.mark.redis


@pytest.fixture(params=["line", "memory", "sentinel", "cluster"])
def where(request: pytest.FixtureRequest, redis_line_url: str) -> str:
    """Every server line, then memory://, Sentinel and a Cluster (the lock and the
    value in different slots: the fence is checked around the store, see the module
    docstring of statekit.cache.redis), those three once, with the first line."""
    if request.param == "line":
        return redis_line_url
    if request.node.callspec.indices.get("redis_line_server", 0) != 0:
        pytest.skip("memory://, Sentinel and Cluster run once, with the first server line")
    if request.param == "memory":
        return "memory://stale-review"
    fixture = "sentinel_url" if request.param == "sentinel" else "redis_cluster_url"
    return str(request.getfixturevalue(fixture))


def _while_computing(call: Callable[[Callable[[], str]], Any], value: str, action: Callable[[], Any]) -> Any:
    """Run ``call(compute)`` in a thread; while *compute* is paused (it has started,
    it will return *value*), run *action*; then let it finish. Returns what *call*
    returned."""
    started, go = threading.Event(), threading.Event()

    def compute() -> str:
        started.set()
        assert go.wait(30)
        return value

    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(call(compute)))
    t.start()
    try:
        assert started.wait(30)
        action()
    finally:
        go.set()
        t.join(30)
    assert len(out) == 1, "the call failed"
    return out[0]


def _leader_and(where: str, namespace: str, value: str, action: Callable[[Cache], Any],
                **other: Any) -> tuple[Any, Any]:
    """A leader computes *value* for key ``"k"`` (paused) while *action* runs with
    another cache of the namespace (made with *other* settings). Returns what the
    leader's get_or_set returned and what the key holds afterwards."""
    leader = Cache(where, namespace=namespace)
    writer = Cache(where, namespace=namespace, **other)
    try:
        got = _while_computing(lambda f: leader.get_or_set("k", f, ttl=60), value, lambda: action(writer))
        return got, writer.get("k")
    finally:
        leader.close()
        writer.close()


# -- a delete or a clear while a value is computed ----------------------------------------


@pytest.mark.parametrize("change", ["delete", "clear"])
def test_a_leaders_value_computed_before_a_delete_is_not_stored_after_it(where: str, change: str) -> None:
    """The leader reads the data, the data changes and the writer deletes the key (or
    clears the namespace), then the leader's compute ends: its caller gets its value,
    but the cache does not keep it (the next reader recomputes from the new data)."""
    def act(writer: Cache) -> Any:
        return writer.delete("k") if change == "delete" else writer.clear()

    assert _leader_and(where, f"stale-{change}", "before", act) == ("before", None)


@pytest.mark.parametrize("write", ["set", "set_many"])
def test_a_leaders_value_computed_before_a_set_does_not_overwrite_it(where: str, write: str) -> None:
    """The writer stores the new value itself (write-through) while the leader computes
    from the old data: the leader's older value no longer replaces it. Not on Cluster
    (documented: there only a delete or a clear cancels a flight)."""
    if where.startswith("redis+cluster"):
        pytest.skip("on Cluster a set does not cancel a flight (its lock lives in another slot)")

    def act(writer: Cache) -> Any:
        return writer.set("k", "after") if write == "set" else writer.set_many({"k": "after", "o": 1})

    assert _leader_and(where, f"stale-{write}", "before", act) == ("before", "after")


def test_a_cached_functions_result_computed_before_an_invalidate_is_not_stored(where: str) -> None:
    cache = Cache(where, namespace="stale-cached")
    data = {"n": 1}
    compute: list[Callable[[], str]] = []

    @cache.cached(ttl=60, key="n")
    def read() -> int:
        n = data["n"]
        if compute:
            compute.pop()()
        return n

    def change() -> None:
        data["n"] = 2
        read.invalidate()

    try:
        assert _while_computing(lambda f: (compute.append(f), read())[1], "", change) == 1
        assert read() == 2
    finally:
        cache.close()


@pytest.mark.parametrize("change", ["delete", "clear"])
def test_an_async_leaders_value_computed_before_a_delete_is_not_stored(where: str, change: str) -> None:
    """The same for AsyncCache: the compute itself has the writer (another cache of the
    namespace) delete the key or clear the namespace before it returns."""

    async def body() -> tuple[Any, Any]:
        cache = AsyncCache(where, namespace=f"stale-a{change}")
        writer = AsyncCache(where, namespace=f"stale-a{change}")

        async def compute() -> str:
            await (writer.delete("report") if change == "delete" else writer.clear())
            return "before"

        try:
            return await cache.get_or_set("report", compute, ttl=60), await writer.get("report")
        finally:
            await cache.aclose()
            await writer.aclose()

    assert asyncio.run(body()) == ("before", None)


def test_refresh_computed_before_a_delete_is_not_stored(where: str) -> None:
    cache = Cache(where, namespace="stale-refresh")
    key = cache.cached(ttl=60, key="r")(lambda: "").key_for()  # any function's, same arguments
    try:
        assert _while_computing(lambda f: cache.cached(ttl=60, key="r")(f).refresh(), "before",
                                lambda: cache.delete(key)) == "before"
        assert cache.get(key) is None
    finally:
        cache.close()


# -- who overwrites whom --------------------------------------------------------------------


def test_refresh_is_not_overwritten_by_a_leader_computing_from_older_data(where: str) -> None:
    """A leader computes from the old data; the data changes and refresh() stores the
    new value; then the leader's compute ends: the cache keeps refresh()'s value."""
    def act(writer: Cache) -> None:
        assert writer.cached(ttl=60, key=lambda: "k")(lambda: "new").refresh() == "new"

    assert _leader_and(where, "stale-refresh-leader", "old", act) == ("old", "new")


def test_a_caller_that_gave_up_waiting_is_not_overwritten_by_the_slower_leader(where: str) -> None:
    """The leader computes from the old data (paused); a second caller waits lock_wait,
    gives up, computes from the new data and stores; then the leader's compute ends:
    the cache keeps the newer value."""
    def act(follower: Cache) -> None:
        assert follower.get_or_set("k", lambda: "new", ttl=60) == "new"
        assert follower.get("k") == "new"

    assert _leader_and(where, "stale-follower", "old", act, lock_wait=0.05) == ("old", "new")


def test_a_caller_that_gave_up_waiting_does_not_store_a_value_computed_before_a_delete(where: str) -> None:
    """The leader and a caller that gave up waiting for it both compute (paused); a
    delete comes: neither value is stored."""
    def act(follower: Cache) -> None:
        assert _while_computing(lambda f: follower.get_or_set("k", f, ttl=60), "follower",
                                lambda: follower.delete("k")) == "follower"

    assert _leader_and(where, "stale-follower-del", "leader", act, lock_wait=0.05) == ("leader", None)


# -- locks ----------------------------------------------------------------------------------


def test_a_lock_wait_of_nan_is_refused(redis_line_url: str) -> None:
    """NaN compares false with everything: the wait never reached its deadline."""
    cache = Cache(redis_line_url, namespace="stale-nan")
    try:
        holder = cache.lock("job", timeout=60)
        assert holder.acquire(blocking=False)
        with pytest.raises(ValueError, match="nan"):
            cache.lock("job").acquire(timeout=math.nan)
        with pytest.raises(ValueError, match="nan"):
            cache.lock("job", blocking_timeout=math.nan)
        holder.release()
    finally:
        cache.close()


@pytest.mark.parametrize("setting", ["lock_wait", "lock_ttl", "stale_ttl", "breaker_reset", "xfetch_beta",
                                     "near_max_age"])
def test_a_cache_setting_of_nan_is_refused(setting: str) -> None:
    """``lock_wait=nan``: a get_or_set behind a slow leader never reached its deadline
    (the same NaN as acquire()'s); ``breaker_reset=nan`` kept the breaker from ever
    staying open; ``lock_ttl=nan`` failed only at the first lock. All refused at once."""
    with pytest.raises(ConfigError, match=setting):
        Cache("memory://stale-settings", **{setting: math.nan})
    with pytest.raises(ConfigError, match=setting):
        Cache("memory://stale-settings", **{setting: "1"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_hold_its_parents_lock(redis_line_url: str) -> None:
    """The child of a fork copies the thread that held the lock, token included: its
    release() released the parent's lock (and locked() said it held it)."""
    cache = Cache(redis_line_url, namespace="stale-fork")
    lock = cache.lock("job", timeout=60)
    try:
        assert lock.acquire(blocking=False)
        parent, child = multiprocessing.get_context("fork").Pipe()

        def in_child() -> None:  # what the child's copy of this thread thinks it holds
            held = lock.locked()
            try:
                lock.release()
                released = True
            except LockError:
                released = False
            child.send((held, released))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            proc = multiprocessing.get_context("fork").Process(target=in_child)
            proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        assert parent.recv() == (False, False)  # the child neither holds nor releases it
        assert lock.locked()
        lock.release()  # still the parent's
    finally:
        cache.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_child_forked_by_a_compute_does_not_store_under_the_parents_lease(redis_line_url: str) -> None:
    """A compute that forks: the child returns into the same get_or_set, with the
    parent's single-flight token at hand. It stored its value under the parent's lease
    and released the parent's lock (another caller then computed again)."""
    cache = Cache(redis_line_url, namespace="stale-fork-sf")
    observer = Cache(redis_line_url, namespace="stale-fork-sf")
    parent = os.getpid()
    seen: list[Any] = []

    def compute() -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            return "child"
        seen.append(os.waitpid(pid, 0)[1])
        seen.append(observer.get("k"))
        seen.append(observer._try_lock("k"))  # still the parent's
        return "parent"

    result = None
    try:
        result = cache.get_or_set("k", compute, ttl=60)
    finally:
        if os.getpid() != parent:  # pragma: no cover - the child: its get_or_set returned
            os._exit(0 if result == "child" else 1)
    try:
        assert result == "parent"
        assert seen == [0, None, False]
        assert observer.get("k") == "parent"
    finally:
        cache.close()
        observer.close()


# -- namespaces and the near cache ----------------------------------------------------------


def test_two_threads_first_namespace_call_make_one_cache(redis_line_url: str) -> None:
    """Both threads ask for namespace "x" before either has made it: each made its
    own (two near caches, two sets of counters, two lock tables for one namespace)."""
    barrier = threading.Barrier(2)

    class Paused(Cache):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("_parent") is not None:
                try:  # both constructors at once, if namespace() lets them in
                    barrier.wait(timeout=1.0)
                except threading.BrokenBarrierError:
                    pass
            super().__init__(*args, **kwargs)

    root = Paused(redis_line_url)
    made: list[Cache] = []
    threads = [threading.Thread(target=lambda: made.append(root.namespace("x"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(made) == 2 and made[0] is made[1]
    finally:
        root.close()


def test_a_dropped_caches_finalizer_inside_a_near_cache_lock_does_not_deadlock(redis_line_url: str) -> None:
    """The listener thread holds a near cache's lock while it evicts a key; a garbage
    collection then frees the cache (only the near cache outlives it here) and runs
    its finalizer on that thread: stop() must not wait for that lock."""
    cache = Cache(redis_line_url, namespace="stale-finalizer", near_cache=True)
    assert cache.near_ready(10)
    near = cache._near
    listener = cache._listener
    assert near is not None and listener is not None
    held = [cache]
    del cache
    free_inside_a_locked_section(held, lambda: near.lock, near, listener)  # as inside evict()


def free_inside_a_locked_section(held: list[Any], section: Callable[[], Any], near: Any,
                                 listener: Any) -> None:
    """Drop *held* (the last references to a cache or session store) and collect
    garbage on a thread inside *section* of their near cache: the finalizers (theirs,
    and their connections', which flush) must not wait for that lock. The listener,
    told to stop, ends on its own with the copies off. Shared with test_sessions_near."""
    done = threading.Event()

    def freeing() -> None:
        with section():
            held.clear()
            gc.collect()
        done.set()

    t = threading.Thread(target=freeing, daemon=True)
    t.start()
    t.join(30)
    assert done.is_set(), "the finalizer deadlocked on the near cache's lock"
    thread = listener._thread
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive() and not near.active
