"""Broadcast on Redis Cluster (issue 19, point 4): where the servers have sharded
pub/sub (Valkey, Redis 7+) a publish is an ``SPUBLISH`` on the value's shard only and
workers ``SSUBSCRIBE`` per name; on Redis 6.2 the pattern subscription and
``PUBLISH`` stay. Either way every worker sees every publish."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from statekit.broadcast import Broadcaster, SharedValue
from statekit.broadcast import hub as _hub
from statekit.embedded import RedisBinary, RedisCluster
from statekit.pytest_plugin import redis_command_calls, wait_for
from statekit.redis import get_client

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


@pytest.fixture
def line_cluster(redis_line_cluster: RedisCluster, redis_line_cluster_url: str) -> Iterator[RedisCluster]:
    """The line's shared cluster (conftest.py), flushed. The subscriber threads the
    test starts stop with it: the cluster outlives the test, and a subscriber left
    reading from it would read on into later tests (one took the interruption
    test_redis_interrupt.py arms for its own next read)."""
    # started here: statekit's lazy Cluster client fails a thread that uses it while
    # another (the subscriber) starts it (a Redis-layer bug, reported)
    get_client(redis_line_cluster_url).get_nodes()
    before = set(_hub._hubs)
    yield redis_line_cluster
    with _hub._hubs_lock:
        started = [_hub._hubs.pop(k) for k in set(_hub._hubs) - before]
    for hub in started:
        hub.stop()


def _sharded(binary: RedisBinary) -> bool:
    return int(binary.version.split(".")[0]) >= 7


def test_every_worker_sees_every_publish(line_cluster: RedisCluster) -> None:
    url = line_cluster.url
    names = [f"v{i}" for i in range(12)]
    values: list[SharedValue[Any]] = [SharedValue(n, url=url, key_prefix="shb") for n in names]
    assert [v.get() for v in values] == [None] * 12  # registered: the subscriber runs
    broadcaster = Broadcaster(url, key_prefix="shb")
    for node in line_cluster.masters():
        with node.client() as r:
            r.config_resetstat()
    for round_ in range(1, 4):
        for n in names:
            broadcaster.publish(n, {"name": n, "round": round_})
        wait_for(lambda round_=round_: all(v.get() == {"name": v.name, "round": round_} for v in values),
                 30, f"round {round_} everywhere")
    calls: dict[str, int] = {}
    for node in line_cluster.masters():
        with node.client() as r:
            for name, n in redis_command_calls(r).items():
                calls[name] = calls.get(name, 0) + n
    assert values[0]._hub is not None and values[0]._hub.backend.sharded is _sharded(line_cluster.binary)
    if _sharded(line_cluster.binary):
        assert calls.get("spublish") == 36 and not calls.get("publish")
    else:
        assert calls.get("publish") == 36 and not calls.get("spublish")


def test_a_value_registered_later_is_subscribed_too(line_cluster: RedisCluster) -> None:
    url = line_cluster.url
    first: SharedValue[Any] = SharedValue("early", url=url, key_prefix="shl")
    assert first.get() is None
    broadcaster = Broadcaster(url, key_prefix="shl")
    late: SharedValue[Any] = SharedValue("late", url=url, key_prefix="shl")
    assert late.get() is None
    broadcaster.publish("late", 1)
    broadcaster.publish("early", 2)
    wait_for(lambda: late.get() == 1 and first.get() == 2, 30, "both values")
    broadcaster.publish("late", 3)
    wait_for(lambda: late.get() == 3, 30, "the later publish")
