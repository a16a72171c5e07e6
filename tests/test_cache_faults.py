"""Fault tests: Redis killed, paused and failed over while the cache is in use.

Each test starts its own private servers (never the shared one) and kills only them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from statekit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from statekit.cache import Cache
from statekit.embedded import RedisSentinel, RedisServer, find_redis_servers
from statekit.errors import BackendUnavailable

pytestmark = pytest.mark.redis


def _wait_until(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_redis_killed_mid_test_miss_policy(private_redis: RedisServer) -> None:
    cache = Cache(private_redis.url, on_error="miss", timeout=0.3, failure_threshold=3,
                  breaker_reset=2.0, near_cache=True)
    cache.set("k", "v")
    assert cache.get("k") == "v"

    private_redis.kill()
    results = []
    for i in range(12):  # no exception, every read a miss, every write dropped
        results.append(cache.get("k", "default"))
        assert cache.set(f"w{i}", i) is False
        assert cache.get_many(["k", "x"]) == {}
        assert cache.has("k") is False
        assert cache.get_or_set("computed", lambda: "fresh") == "fresh"
    assert results == ["default"] * 12
    stats = cache.stats()
    assert stats["breaker_opened"] >= 1
    assert cache.breaker.state == OPEN
    assert stats["dropped_writes"] >= 12

    # While open the breaker makes no I/O: the error count stops growing.
    errors = cache.stats()["errors"]
    for _ in range(50):
        cache.get("k")
    assert cache.stats()["errors"] == errors

    private_redis.start()  # same port, empty: a restarted Redis
    assert _wait_until(lambda: cache.set("back", 1) and cache.get("back") == 1)
    assert cache.breaker.state == CLOSED
    assert cache.stats()["breaker_state"] == 0


def test_redis_killed_raise_policy(private_redis: RedisServer) -> None:
    cache = Cache(private_redis.url, timeout=0.3, failure_threshold=2, breaker_reset=2.0)
    cache.set("k", 1)
    private_redis.kill()
    with pytest.raises(BackendUnavailable):
        cache.get("k")
    with pytest.raises(BackendUnavailable):
        cache.set("k", 2)
    with pytest.raises(BackendUnavailable, match="circuit breaker is open"):
        cache.get("k")
    with pytest.raises(BackendUnavailable):
        cache.incr("n")
    private_redis.start()
    assert _wait_until(lambda: _ok(cache))
    assert cache.get("k") is None  # the restarted server lost its data


def _ok(cache: Cache) -> bool:
    try:
        cache.set("k2", 1)
        return True
    except BackendUnavailable:
        return False


def test_paused_redis_times_out_and_degrades(private_redis: RedisServer) -> None:
    cache = Cache(private_redis.url, on_error="miss", timeout=0.2, failure_threshold=2, breaker_reset=2.0)
    cache.set("k", "v")
    private_redis.pause()
    try:
        assert cache.get("k", "d") == "d"
        assert cache.get("k", "d") == "d"
        assert cache.breaker.state == OPEN
    finally:
        private_redis.resume()
    assert _wait_until(lambda: cache.get("k") == "v")


@pytest.fixture(params=find_redis_servers(), ids=lambda b: b.line)
def sentinel_line(request: pytest.FixtureRequest) -> Iterator[RedisSentinel]:
    """A fresh sentinel setup per test, on every server line found."""
    setup = RedisSentinel(binary=request.param)
    setup.start()
    yield setup
    setup.stop()


@pytest.mark.sentinel
def test_sentinel_failover_during_use(sentinel_line: RedisSentinel) -> None:
    redis_sentinel = sentinel_line
    def replica_synced() -> bool:
        with redis_sentinel.replicas[0].client() as r:
            return bool(r.info("replication").get("master_link_status") == "up")

    assert _wait_until(replica_synced, 30)  # the first sync waits for repl-diskless-sync-delay
    cache = Cache(redis_sentinel.url, on_error="raise")
    near = Cache(redis_sentinel.url, near_cache=True)
    assert near.near_ready(10)
    cache.set("before", "v")
    cache.incr("n")
    assert near.get("before") == "v"
    with redis_sentinel.master.client() as r:
        assert r.execute_command("WAIT", 1, 5000) == 1
        keys = r.dbsize()
    # WAIT counts a replica that received the writes, not one that applied them (Valkey
    # 8.1 answered 1 while the replica still lacked the key, 2 runs in 12)
    with redis_sentinel.replicas[0].client() as replica:
        assert _wait_until(lambda: replica.dbsize() >= keys, 10)
    old = redis_sentinel.master_port()
    new = redis_sentinel.failover()
    assert new != old

    def works() -> bool:
        try:
            cache.set("after", "w")
            return cache.get("after") == "w"
        except BackendUnavailable:
            return False

    assert _wait_until(works, 5)  # within 5 s of the new master answering
    assert cache.get("before") == "v"
    assert cache.incr("n") == 2  # the first incr was applied once
    # The near cache followed the new master: it is coherent with writes made there.
    assert near.near_ready(15)
    assert near._listener is not None
    assert _wait_until(lambda: [port for _h, port, _p in near._listener.current] == [new])  # type: ignore[union-attr]
    cache.set("before", "changed")
    assert _wait_until(lambda: near.get("before") == "changed")
    assert near.get("before") == "changed"


def test_breaker_unit() -> None:
    now = [0.0]
    changes: list[str] = []
    b = CircuitBreaker(2, 1.0, on_change=changes.append, clock=lambda: now[0])
    assert b.allow()
    b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 1.5
    assert b.state == HALF_OPEN
    assert b.allow() and not b.allow()  # one trial at a time
    b.failure()
    assert b.state == OPEN and b.opened == 2
    now[0] = 3.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]
    with pytest.raises(ValueError):
        CircuitBreaker(0)
