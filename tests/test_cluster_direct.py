"""Cluster commands straight to their key's node (statekit/redis/transport.py): a
cache get or set on Cluster is sent on this thread's connection to the node
redis-py's slot map names, not through ``RedisCluster.execute_command`` (~60 µs of
CPU per command on its own). What the rule needs still goes through it: a slot that
moved (``MOVED``) is followed there and the map refreshed, and a write whose outcome
is unknown is not sent again."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from statekit.cache import Cache
from statekit.embedded import RedisCluster
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import redis_command_calls, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def _through_client(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The commands the cache sends through ``RedisCluster.execute_command`` from
    this thread (the invalidation listener's thread reads ``CLUSTER NODES`` through
    it every second, and once as it starts)."""
    client: Any = cache._be().transport.client
    sent: list[tuple[Any, ...]] = []
    execute = client.execute_command
    here = threading.get_ident()

    def counting(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == here:
            sent.append(args)
        return execute(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    return sent


def _why(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Why commands went through RedisCluster (the transport's debug log), once
    ``caplog`` records ``statekit.redis`` at debug level."""
    return [r.getMessage() for r in caplog.records if r.name == "statekit.redis" and "through" in r.msg]


def test_gets_and_sets_go_straight_to_the_node(redis_cluster_url: str, redis_cluster: RedisCluster,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(redis_cluster_url, prefix="direct")
    for i in range(30):  # the slot map read, this thread's connection to each master made, the
        cache.set(f"k{i}", -1)  # script loaded on each (a NOSCRIPT'd EVALSHA counts in the stats)
    caplog.set_level(logging.DEBUG, logger="statekit.redis")
    sent = _through_client(cache, monkeypatch)
    for node in redis_cluster.masters():
        with node.client() as r:
            r.config_resetstat()
    for i in range(30):
        cache.set(f"k{i}", i, ttl=60)
    assert [cache.get(f"k{i}") for i in range(30)] == list(range(30))
    assert cache.incr("n") == 1
    assert sent == [], _why(caplog)
    assert _why(caplog) == []
    per_node = []
    for node in redis_cluster.masters():
        with node.client() as r:
            calls = redis_command_calls(r)
            per_node.append(calls.get("evalsha", 0))
    assert sum(per_node) == 31 and all(per_node)  # every master served its keys' sets
    cache.close()


def test_a_script_a_master_lacks_is_loaded_on_its_connection(redis_cluster_url: str,
                                                            redis_cluster: RedisCluster,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache script is on one master only (a restarted master has none; before
    ee18b92 an AsyncCache loaded it on the node that ran it only, which
    tests/test_redis_cancel_review.py checks it no longer does): the sync cache's
    first set on another master is answered
    ``NOSCRIPT`` on its connection, loads the script on every master through this
    thread's connections and runs there. It went through RedisCluster (the EVALSHA
    again, SCRIPT LOAD on every primary, the EVALSHA): in a clean clone's two
    workers, test_review_async_cache's Cluster test ran just before this file in the
    same worker and the test above, warmed by one key then, counted those 3."""
    from statekit.cache.redis import SCRIPT

    masters = redis_cluster.masters()
    for node in masters:
        with node.client() as r:
            r.script_flush()

    with masters[0].client() as r:
        r.script_load(SCRIPT.source)
    loaded = []
    for node in masters:
        with node.client() as r:
            loaded.append(r.script_exists(SCRIPT.sha)[0])
            r.config_resetstat()
    assert loaded == [True] + [False] * (len(masters) - 1)
    cache = Cache(redis_cluster_url, prefix="noscript")
    sent = _through_client(cache, monkeypatch)
    for i in range(30):
        cache.set(f"k{i}", i, ttl=60)
    assert [cache.get(f"k{i}") for i in range(30)] == list(range(30))
    assert sent == []
    scripts, evalsha = [], []
    for node in masters:
        with node.client() as r:
            calls = redis_command_calls(r)
            assert r.script_exists(SCRIPT.sha)[0]
        scripts.append(calls.get("script", 0))
        evalsha.append(calls.get("evalsha", 0))
    assert scripts == [1] * len(masters)  # loaded everywhere at the first NOSCRIPT
    assert sum(evalsha) == 30 + 1 and all(evalsha)  # one answered NOSCRIPT, then each set once
    cache.close()


def test_a_moved_slot_is_followed_and_then_served_straight(own_redis_cluster: RedisCluster,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The slot of a key moves to another master behind the cache's back: the next
    get is answered MOVED by the old node, goes through RedisCluster (which follows
    it and refreshes its map), and the calls after it go straight to the new node.
    The transport's debug log says why that get went through RedisCluster."""
    from redis.crc import key_slot

    cluster = own_redis_cluster
    cache = Cache(cluster.url, prefix="moved")
    cache.set("k", "v", ttl=60)
    name = b"moved:{}{default}:0:k"
    slot = key_slot(name)
    owner = cluster.nodes[0] if slot < 16384 // 3 else cluster.nodes[1] if slot < 2 * (16384 // 3) \
        else cluster.nodes[2]
    target = next(n for n in cluster.masters() if n is not owner)
    assert cache.get("k") == "v"
    cluster.move_slots([slot], to=target)
    cluster.wait_ok()
    sent = _through_client(cache, monkeypatch)
    caplog.set_level(logging.DEBUG, logger="statekit.redis")
    assert cache.get("k") == "v"
    assert [args[0] for args in sent] == ["GET"]  # the MOVED one, followed by RedisCluster
    assert [cache.get("k") for _ in range(5)] == ["v"] * 5
    assert len(sent) == 1
    assert _why(caplog) == [f"Cluster: through RedisCluster: GET on 127.0.0.1:{owner.port}: MovedError: "
                            f"{slot} 127.0.0.1:{target.port}"]
    with target.client() as r:
        assert wait_for(lambda: redis_command_calls(r).get("get", 0) >= 6, 5, "the new owner's gets")  # noqa: B023
    cache.close()


def test_a_node_connection_not_made_goes_through_the_client_once(redis_cluster_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """This thread's connection to the key's master cannot be made (its pool's
    checkout fails: a node going down, a failover): nothing was sent, so the set
    goes through RedisCluster, once, and the transport's debug log says why; the
    next set makes the connection and goes straight."""
    import redis

    warm = Cache(redis_cluster_url, prefix="noconn")
    warm.set("warm", 0)  # the slot map read, the script loaded
    warm.close()
    cache = Cache(redis_cluster_url, prefix="noconn")  # a transport with no connection yet
    sent = _through_client(cache, monkeypatch)
    node: Any = cache._be().transport.client.get_node_from_key("noconn:{}{default}:0:k")
    pool = node.redis_connection.connection_pool
    checkout, refused, here = pool.get_connection, [], threading.get_ident()

    def refused_once(*args: Any, **kwargs: Any) -> Any:
        if not refused and threading.get_ident() == here:  # (not the listener's CLUSTER NODES)
            refused.append(here)
            raise redis.ConnectionError("Connection refused (the test's)")
        return checkout(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", refused_once)
    caplog.set_level(logging.DEBUG, logger="statekit.redis")
    cache.set("k", 1)
    cache.set("k", 2)
    assert cache.get("k") == 2
    assert [args[0] for args in sent] == ["EVALSHA"]
    assert _why(caplog) == [f"Cluster: through RedisCluster: no connection to {node.name}: ConnectionError: "
                            "Connection refused (the test's)"]
    cache.close()


def test_a_set_whose_outcome_is_unknown_is_not_sent_again(own_redis_cluster: RedisCluster) -> None:
    """The key's master is paused (SIGSTOP) past the socket timeout while a set is in
    flight: BackendUnavailable; once it runs again it executes that set once."""
    cluster = own_redis_cluster
    cache = Cache(cluster.url + "?retries=0", prefix="unknown", timeout=0.3)
    cache.set("k", "warm")
    from redis.crc import key_slot

    slot = key_slot(b"unknown:{}{default}:0:k")
    per = 16384 // 3
    paused = cluster.nodes[min(slot // per, 2)]
    with paused.client() as r:
        r.config_resetstat()
    paused.pause()
    try:
        with pytest.raises(BackendUnavailable, match="outcome"):
            cache.set("k", "new")
    finally:
        paused.resume()
    with paused.client() as r:
        assert wait_for(lambda: redis_command_calls(r).get("evalsha", 0) >= 1, 10, "the set ran")  # noqa: B023
        assert redis_command_calls(r).get("evalsha", 0) == 1
    assert cache.get("k") == "new"
    cache.close()
