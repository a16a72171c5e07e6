"""The invalidation listener on redis-py (statekit.redis.tracking): routing by lookup,
namespaces held weakly, the lag check, and data connections that opt in to
tracking (Transport(tracking=...))."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import redis

from statekit.cache import Cache
from statekit.cache.near import NearCache
from statekit.embedded import RedisServer
from statekit.redis import create_client
from statekit.redis.tracking import InvalidationListener, endpoints_of
from statekit.redis.transport import Transport


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def _message(keys: list[bytes] | None) -> list[Any]:
    return [b"message", b"__redis__:invalidate", keys]


def _namespaces(listener: InvalidationListener, count: int) -> list[NearCache[Any]]:
    nears = [NearCache[Any](10) for _ in range(count)]
    for i, near in enumerate(nears):
        listener.register(f"app:{{ns{i}}}:", near)
        near.set_active(True)
        near.store("k", "v", None, near.seq)
    return nears


# -- routing: a lookup per key, whatever the number of namespaces ---------------------


@pytest.mark.parametrize("count", [1, 10_000])
def test_an_invalidation_visits_one_namespace_per_key(count: int) -> None:
    listener = InvalidationListener(lambda: [], "app:")
    nears = _namespaces(listener, count)
    target = nears[count - 1]
    base = f"app:{{ns{count - 1}}}:0:"
    keys = [f"{base}k{i}".encode() for i in range(99)] + [f"{base}k".encode()]
    listener._handle(_message(keys))
    assert listener.visits == 100  # one dict lookup per key, not one per namespace
    assert "k" not in target.data
    assert all("k" in near.data for near in nears[:-1])  # nobody else touched


def test_generation_bump_flushes_only_its_namespace() -> None:
    listener = InvalidationListener(lambda: [], "app:")
    a, b = _namespaces(listener, 2)
    listener._handle(_message([b"app:{ns0}:gen"]))
    assert len(a) == 0 and len(b) == 1
    listener._handle(_message(None))  # FLUSHALL
    assert len(b) == 0


def test_whole_key_and_untagged_bases_are_found_by_length() -> None:
    listener = InvalidationListener(lambda: [], "s:")
    sessions: NearCache[Any] = NearCache(10)
    odd: NearCache[Any] = NearCache(10)  # a namespace whose name holds "}:"
    listener.register("s:session:", sessions, whole_keys=True)
    listener.register("app:{a}:b}:", odd)
    for near, key in ((sessions, "s:session:abc"), (odd, "k")):
        near.set_active(True)
        near.store(key, "v", None, near.seq)
    listener._handle(_message([b"s:session:abc", b"app:{a}:b}:0:k"]))
    assert len(sessions) == 0 and len(odd) == 0


def test_dropped_near_caches_are_unregistered() -> None:
    listener = InvalidationListener(lambda: [], "app:")
    nears = [NearCache[Any](2_000) for _ in range(50)]
    for i, near in enumerate(nears):
        listener.register(f"app:{{ns{i}}}:", near)
        near.set_active(True)
        for k in range(2_000):
            near.store(f"k{k}", b"x" * 100, None, near.seq)
    refs = [weakref.ref(near) for near in nears]
    assert listener.registered() == 50
    del nears, near
    gc.collect()
    assert listener.registered() == 0
    assert all(ref() is None for ref in refs)  # 100,000 entries freed


# -- against a real server ----------------------------------------------------------


@pytest.mark.redis
def test_dropped_cache_namespaces_are_unregistered(redis_url: str) -> None:
    root = Cache(redis_url, prefix="drop", near_cache=True)
    assert root.near_ready()
    listener = root._listener
    assert listener is not None
    before = listener.registered()
    for i in range(50):
        ns = root.namespace(f"n{i}")
        ns.set_many({f"k{k}": k for k in range(20)})
        ns.get_many([f"k{k}" for k in range(20)])
        del ns
    gc.collect()
    assert listener.registered() == before


@pytest.mark.redis
def test_bcast_listener_drops_writes_from_elsewhere(redis_url: str) -> None:
    listener = InvalidationListener(create_client(redis_url), "bc:")
    near: NearCache[Any] = NearCache(10)
    listener.register("bc:{n}:", near)
    listener.ensure_running()
    try:
        assert listener.connected.wait(10) and near.active
        near.store("k", "v", None, near.seq)
        redis.Redis.from_url(redis_url).set("bc:{n}:0:k", 1)
        assert _until(lambda: "k" not in near.data)
        assert not listener.pending()
    finally:
        listener.stop()


@pytest.mark.redis
def test_pending_is_true_while_invalidations_wait(redis_url: str) -> None:
    listener = InvalidationListener(create_client(redis_url), "pd:")
    near: NearCache[Any] = NearCache(10)
    listener.register("pd:{n}:", near)
    gate = threading.Event()
    handle = listener._handle

    def slow(msg: Any) -> None:
        gate.wait(10)
        handle(msg)

    listener._handle = slow  # type: ignore[method-assign]
    listener.ensure_running()
    try:
        assert listener.connected.wait(10)
        assert not listener.pending()
        redis.Redis.from_url(redis_url).set("pd:{n}:0:k", 1)
        assert _until(listener.pending)  # arrived, not applied: copies are not trusted
        gate.set()
        assert _until(lambda: not listener.pending())
    finally:
        gate.set()
        listener.stop()


@pytest.mark.redis
def test_transport_tracks_for_the_live_listener_only(private_redis: RedisServer) -> None:
    client = create_client(private_redis.url)
    listener = InvalidationListener(client, "t:", bcast=False)
    near: NearCache[Any] = NearCache(10)
    listener.register("t:", near, whole_keys=True)
    transport = Transport(client, what="session", tracking=listener)
    assert transport.command("PING") == b"PONG"
    assert not transport.tracked()  # connected before the listener was up
    listener.ensure_running()
    try:
        assert listener.connected.wait(10)
        transport.command("GET", "t:a")  # set up again for this listener, then read
        assert transport.tracked("t:a")
        near.store("t:a", "v", None, near.seq)
        redis.Redis.from_url(private_redis.url).set("t:a", 1)
        assert _until(lambda: "t:a" not in near.data)
        first = listener.generation
        with redis.Redis.from_url(private_redis.url) as admin:  # kill the listener's connection
            admin.client_kill_filter(_id=listener.client_id)
        assert _until(lambda: listener.generation > first and listener.connected.is_set())
        assert not transport.tracked("t:a")  # set up for the old listener connection
        transport.command("GET", "t:a")
        assert transport.tracked("t:a")
        near.store("t:a", "v", None, near.seq)
        redis.Redis.from_url(private_redis.url).set("t:a", 2)
        assert _until(lambda: "t:a" not in near.data)
    finally:
        listener.stop()


@pytest.mark.redis
@pytest.mark.cluster
def test_cluster_listener_keeps_one_connection_per_master(redis_cluster_url: str) -> None:
    client = create_client(redis_cluster_url)
    client.ping()
    assert len(endpoints_of(client)) == len(client.get_primaries())
    listener = InvalidationListener(client, "cl:")
    near: NearCache[Any] = NearCache(10)
    listener.register("cl:{n}:", near)
    listener.ensure_running()
    try:
        assert listener.connected.wait(10)
        assert len(listener.current) == len(client.get_primaries())
        near.store("k", "v", None, near.seq)
        client.set("cl:{n}:0:k", 1)
        assert _until(lambda: "k" not in near.data)
    finally:
        listener.stop()


@pytest.mark.redis
def test_sentinel_listener_follows_the_master_and_tracking_transports_follow_it(redis_sentinel: Any) -> None:
    setup = redis_sentinel
    client = create_client(setup.url)
    listener = InvalidationListener(client, "fo:", bcast=False)
    assert listener.follow > 0  # a Sentinel client: the master's address is re-checked
    listener.follow = 0.2
    near: NearCache[Any] = NearCache(10)
    listener.register("fo:", near, whole_keys=True)
    transport = Transport(client, what="session", tracking=listener)
    listener.ensure_running()
    try:
        assert listener.connected.wait(10)
        old = setup.master_port()
        assert [port for _host, port, _path in listener.current] == [old]
        new = setup.failover()
        assert _until(lambda: [p for _h, p, _x in listener.current] == [new] and listener.connected.is_set(),
                      20)

        def tracked_read() -> bool:
            try:
                transport.command("GET", "fo:a")  # refused by the demoted master at first
            except Exception:  # noqa: BLE001 - BackendUnavailable until it reconnects
                return False
            return transport.tracked("fo:a")

        assert _until(tracked_read, 20)
        near.store("fo:a", "v", None, near.seq)
        with redis.Redis(port=new) as master:
            master.set("fo:a", 1)
        assert _until(lambda: "fo:a" not in near.data)
    finally:
        listener.stop()


@pytest.mark.redis
def test_a_counters_only_listener_tracks_its_prefixes_and_counts_counter_changes(redis_url: str) -> None:
    """A listener made for generation counters (the Cluster cache without a near
    cache): writes of value keys reach it not at all, an INCR of a tracked counter
    bumps counter_changes, and track() adds a prefix (after a reconnect: the
    connection generation moves on and the new counter is covered)."""
    client = redis.Redis.from_url(redis_url)
    listener = InvalidationListener(client, "gl:{a}:gen")
    listener.ensure_running()
    try:
        assert listener.connected.wait(10) and listener.covers("gl:{a}:gen")
        assert not listener.covers("gl:{b}:gen") and not listener.covers("gl:{}{a}:0:k")
        client.set("gl:{}{a}:0:k", b"v")  # a value key: not tracked
        client.set("gl:{a}:lock:x", b"t")
        client.incr("gl:{a}:gen")
        assert _until(lambda: listener.counter_changes == 1)
        assert listener.messages == 1
        first = listener.generation
        listener.track("gl:{b}:gen")
        listener.track("gl:{a}:gen")  # covered already: nothing to do
        assert _until(lambda: listener.connected.is_set() and listener.covers("gl:{b}:gen"))
        assert listener.generation == first + 1 and listener.prefixes == ("gl:{a}:gen", "gl:{b}:gen")
        client.incr("gl:{b}:gen")
        assert _until(lambda: listener.counter_changes == 2)
    finally:
        listener.stop()
        client.close()
