"""Readers that trust what the invalidation listener has not told them yet (a near
copy, the Cluster cache's generation) while the listener thread runs in the middle
of their check: the thread switch is forced, on real servers."""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from statekit.cache import Cache
from statekit.embedded import RedisCluster
from statekit.pytest_plugin import wait_for
from statekit.sessions import SessionStore
from statekit.sessions.redis import RedisEngine

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def listener_held_until_pending(listener: Any, applied: Callable[[], bool]) -> Iterator[None]:
    """Hold *listener*'s thread before it applies what it reads until a reader calls
    ``pending()``; that call then waits until the thread applied it (*applied*) and
    has finished handling: the thread switch between a reader's look at its copy
    (or counter) and its ``pending()``, made to happen."""
    gate = threading.Event()
    handle, real = listener._handle, listener.pending

    def held(msg: Any) -> Any:
        gate.wait(10)
        return handle(msg)

    def switched() -> Any:
        gate.set()
        wait_for(lambda: applied() and not listener._handling, timeout=10, what="the invalidation applied")
        return real()

    listener._handle, listener.pending = held, switched
    try:
        yield
    finally:
        gate.set()
        del listener._handle, listener.pending


def test_an_invalidation_applied_during_the_load_check_is_seen(redis_line_url: str) -> None:
    """A load took the copy, then asked ``pending()`` whether an invalidation waits.
    The listener thread may take the invalidation off its socket and apply it
    between the two (a thread switch): ``pending()`` then says no, and the copy taken
    before was served although it had just been invalidated (a change made and
    acknowledged elsewhere before the load began, not seen). Here the switch is
    forced: ``pending()`` first waits until the listener dropped the copy."""
    a = SessionStore(redis_line_url, secret_keys=["race-secret"], near_cache=100)
    b = SessionStore(redis_line_url, secret_keys=["race-secret"])
    engine = a.engine
    assert isinstance(engine, RedisEngine) and engine.near is not None and engine.listener is not None
    near, listener = engine.near, engine.listener
    try:
        s = a.create({"n": 1})
        wait_for(lambda: a.load(s.sid) is not None and s.key in near.data, timeout=10, what="a copy")
        with listener_held_until_pending(listener, lambda: s.key not in near.data):
            theirs = b.load(s.sid)
            assert theirs is not None
            theirs["n"] = 2
            assert b.save(theirs)  # acknowledged before a's load begins
            mine = a.load(s.sid)
        assert mine is not None and mine["n"] == 2
    finally:
        listener.stop()


@pytest.mark.cluster
def test_a_counter_invalidation_applied_during_the_trust_check_is_seen(redis_cluster_url: str,
                                                                      redis_cluster: RedisCluster) -> None:
    """The Cluster cache trusts its generation while the listener applied no counter
    invalidation since it was read and has none waiting (``pending()``). One the
    thread took and applied between the reader's look at the applied count and its
    ``pending()`` was seen by neither: a read that began after another process's
    clear returned served the cleared generation (seen once in 16,000 reads by
    test_no_old_value_after_clear_from_another_process)."""
    cache = Cache(redis_cluster_url, prefix="trustcheck")
    cache.set("k", "old", ttl=60)
    cache.get("k")
    listener: Any = cache._listener
    assert listener is not None
    assert wait_for(lambda: listener.connected.is_set() and listener.covers(cache.base + "gen"), 10,
                    "the generation listener")
    assert cache.get("k") == "old"
    assert cache.get("k") == "old"  # the generation is trusted now
    other = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        before = listener.counter_changes
        with listener_held_until_pending(listener, lambda: listener.counter_changes > before):
            other.incr(cache._backend._gen_key)  # a clear made by another process
            assert cache.get("k") is None
    finally:
        other.close()
        cache.close()



def test_an_invalidation_taken_off_the_socket_during_the_load_check_is_seen(
        redis_line_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pending()`` asks two things: is the listener applying messages it took off
    its socket (``_handling``), and are bytes waiting on the socket (a poll). Asked in
    that order, the listener could take the invalidation off its socket between the
    two (a thread switch, or the reader descheduled at its poll syscall under load):
    not handling yet, nothing on the socket any more, so the copy was served while
    the invalidation sat unapplied in the listener thread (the clean-clone make test
    failure of test_copies_stay_coherent_while_saves_time_out: 15 served after 16 and
    a PING, on valkey-8.1). Here that order of events is forced: the listener waits
    after ``select`` until the reader polls, then takes the message off its socket and
    stops before applying it."""
    a = SessionStore(redis_line_url, secret_keys=["race-secret"], near_cache=100)
    b = SessionStore(redis_line_url, secret_keys=["race-secret"])
    engine = a.engine
    assert isinstance(engine, RedisEngine) and engine.near is not None and engine.listener is not None
    near, listener = engine.near, engine.listener
    listener.timeout = 30.0  # no PING meanwhile: only the invalidation comes on its socket
    entered, selected, release, taken, apply = (threading.Event() for _ in range(5))
    real_select, handle = select.select, listener._handle

    def held_select(*args: Any) -> Any:
        mine = threading.current_thread() is listener._thread
        if mine:
            entered.set()
        ready = real_select(*args)
        if mine and ready[0] and not selected.is_set():
            selected.set()
            release.wait(10)  # until the reader polls
        return ready

    def held_handle(msg: Any) -> Any:
        if isinstance(msg, list) and msg[:1] == [b"message"]:
            taken.set()  # off the socket, not applied yet
            apply.wait(10)
        return handle(msg)

    try:
        s = a.create({"n": 1})
        wait_for(lambda: a.load(s.sid) is not None and s.key in near.data, timeout=10, what="a copy")
        check = listener._pending
        assert check is not None

        def reader_polls() -> bool:
            release.set()  # the listener goes on: takes the message off its socket
            taken.wait(10)
            return check()

        monkeypatch.setattr(select, "select", held_select)
        listener._handle = held_handle  # type: ignore[method-assign]
        assert entered.wait(10)
        theirs = b.load(s.sid)
        assert theirs is not None
        theirs["n"] = 2
        assert b.save(theirs)  # acknowledged before a's load begins
        assert selected.wait(10), "the invalidation did not reach the listener"
        listener._pending = reader_polls
        mine = a.load(s.sid)
        assert taken.is_set()
        assert mine is not None and mine["n"] == 2
    finally:
        release.set()
        apply.set()
        del listener._handle
        listener.stop()
        a.close()
        b.close()
        if listener._thread is not None:
            listener._thread.join(10)
