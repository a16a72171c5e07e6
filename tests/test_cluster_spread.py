"""Sessions and broadcast values spread over a 3-master Redis Cluster (issue 19,
point 4): their keys hash per session and per value name, not per store, so no
master holds most of them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from statekit.broadcast.redis import RedisBackend
from statekit.embedded import RedisCluster
from statekit.redis import create_client
from statekit.sessions import SessionStore

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def _shares(cluster: RedisCluster, match: str) -> list[float]:
    counts = []
    for node in cluster.masters():
        with node.client() as r:
            counts.append(sum(1 for _ in r.scan_iter(match=match, count=1000)))
    total = sum(counts)
    assert total > 0 and len(counts) == 3
    return [c / total for c in counts]


def test_sessions_spread_over_every_master(redis_cluster_url: str, redis_cluster: RedisCluster) -> None:
    """1,500 sessions: each master holds 25-42 % of their keys, and each loads back."""
    store = SessionStore(redis_cluster_url, secret_keys=["spread-key-0123456789abcdef"], key_prefix="sp")
    sids = [store.create({"n": i}).sid for i in range(1500)]
    shares = _shares(redis_cluster, "sp:*")
    print(f"session keys per master: {', '.join(f'{s:.1%}' for s in shares)}")
    assert all(0.25 <= s <= 0.42 for s in shares), shares
    assert [store.load(sid) for sid in sids[::100]] == [{"n": i} for i in range(0, 1500, 100)]


def test_broadcast_values_spread_over_every_master(redis_cluster_url: str,
                                                   redis_cluster: RedisCluster) -> None:
    """600 broadcast values: their state keys (a hash tag per name) spread too."""
    client: Any = create_client(redis_cluster_url)
    try:
        backend = RedisBackend(client, prefix="spb")
        now = int(time.time() * 1000)
        for i in range(600):
            assert backend.publish(f"value{i}", b'{"n": %d}' % i, token=None, now_ms=now) == 1
        shares = _shares(redis_cluster, "spb:*")
        print(f"broadcast keys per master: {', '.join(f'{s:.1%}' for s in shares)}")
        assert all(0.25 <= s <= 0.42 for s in shares), shares
        assert backend.read(["value7"])["value7"].payload == b'{"n": 7}'
        backend.close()
    finally:
        client.close()
