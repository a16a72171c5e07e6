"""Redis-specific behaviour of the cache (the contract itself runs from
tests/test_cache_contract.py on every backend)."""

from __future__ import annotations

from typing import Any

import pytest

from statekit.cache import Cache
from statekit.cache.protocol import CacheBackend
from statekit.errors import ConfigError
from statekit.pytest_plugin import wait_for


def test_base_class_names_the_missing_method() -> None:
    with pytest.raises(NotImplementedError, match="get_with_ttl"):
        CacheBackend().get("k")
    with pytest.raises(NotImplementedError, match="from_url"):
        CacheBackend.from_url("x://", "b:", {})


@pytest.mark.redis
def test_ready_client_and_unix_socket(redis_line_url: str, redis_line_server: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_line_url)
    c = Cache(client=client)
    c.set("k", [1])
    assert Cache(f"unix://{redis_line_server.unix_socket}").get("k") == [1]
    assert Cache(redis_line_url, fast_path=False).get("k") == [1]
    with pytest.raises(ConfigError):
        Cache(client=redis.Redis.from_url(redis_line_url, decode_responses=True)).get("k")


@pytest.mark.redis
def test_integers_are_raw_in_redis(redis_line_url: str, redis_line_server: Any) -> None:
    c = Cache(redis_line_url, prefix="raw")
    c.set("n", 5)
    with redis_line_server.client() as r:
        assert r.get("raw:{default}:0:n") == b"5"
        assert r.incrby("raw:{default}:0:n", 2) == 7
    assert c.get("n") == 7


@pytest.mark.redis
@pytest.mark.cluster
def test_namespaces_spread_over_nodes(redis_cluster_url: str, redis_cluster: Any) -> None:
    c = Cache(redis_cluster_url)
    for i in range(30):
        c.namespace(f"ns{i}").set_many({"a": 1, "b": 2})
    used = 0
    for node in redis_cluster.nodes:
        with node.client() as r:
            used += r.dbsize() > 0
    assert used >= 2


@pytest.mark.redis
def test_near_copies_are_refused_while_the_listener_lags(redis_url: str, redis_server: Any) -> None:
    """While invalidations wait unhandled (listener.pending()), get and get_many read
    Redis instead of the near copy, as the session store does."""
    from statekit.pytest_plugin import redis_command_calls

    cache = Cache(redis_url, prefix="lag", near_cache=True)
    assert cache.near_ready(10)
    listener: Any = cache._listener
    routed = listener.visits
    cache.set("k", "v")
    # the set's own invalidation comes back to the listener: once it has been routed,
    # no invalidation of "k" is left to evict the copy the next get stores
    wait_for(lambda: listener.visits > routed, timeout=10, what="the set's invalidation")
    assert cache.get("k") == "v"
    hits = cache.stats()["near_hits"]
    assert cache.get("k") == "v" and cache.stats()["near_hits"] == hits + 1
    hits += 1
    with redis_server.client() as r:
        r.config_resetstat()
        listener.pending = lambda: True
        try:
            assert cache.get("k") == "v"
            assert cache.get_many(["k"]) == {"k": "v"}
        finally:
            del listener.pending
        calls = redis_command_calls(r)
    assert cache.stats()["near_hits"] == hits
    assert calls.get("evalsha", 0) + calls.get("mget", 0) == 2
    assert cache.get("k") == "v" and cache.stats()["near_hits"] == hits + 1
    cache.close()


@pytest.mark.parametrize(("module", "url", "extra"), [("redis", "redis://127.0.0.1:1/0", "redis"),
                                                      ("fakeredis", "memory://x", "memory")])
def test_missing_extra_is_named_on_first_use(monkeypatch: pytest.MonkeyPatch, module: str, url: str,
                                             extra: str) -> None:
    import sys

    monkeypatch.setitem(sys.modules, module, None)
    cache = Cache(url)  # nothing is imported or connected before first use
    with pytest.raises(ConfigError, match=rf"pip install 'statekit\[{extra}\]'"):
        cache.get("k")
