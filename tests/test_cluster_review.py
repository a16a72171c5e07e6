"""Cluster bulk calls on this thread's node connections (review of issue 18's
Cluster fast paths), on real servers."""

from __future__ import annotations

import time

import pytest

from statekit.cache import Cache
from statekit.embedded import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def test_a_bulk_write_after_the_server_closed_idle_connections_is_sent(redis_cluster_url: str,
                                                                      redis_cluster: RedisCluster) -> None:
    """Every master closes the cache's idle connections (an idle ``timeout``, a
    restart, a proxy): the next set_many finds them closed before sending and sends
    on new ones. It raised BackendUnavailable ('outcome unknown') when bulk calls
    began to keep their node connections between calls (the connection was only
    found closed after the pipeline went out), where a single set and a8e4572's
    pool checkout found it first."""
    cache = Cache(redis_cluster_url, prefix="idle")
    try:
        cache.set_many({f"k{i}": i for i in range(30)}, ttl=60)
        for node in redis_cluster.masters():
            with node.client() as r:
                assert r.client_kill_filter(_type="normal", skipme=True) >= 1
        time.sleep(0.1)  # the servers' FINs reach this process
        assert cache.set_many({f"k{i}": i + 1 for i in range(30)}, ttl=60) is True
        assert cache.get_many([f"k{i}" for i in range(30)]) == {f"k{i}": i + 1 for i in range(30)}
    finally:
        cache.close()
