"""Review 18: a Cluster client's own ``pubsub()`` stays within ``max_connections``.

A statekit Cluster client of a URL with ``max_connections`` (sync and asyncio) bounds
what its callers hold with turns, each node's pool at most ``max_connections``. A
pubsub made on the client (``client.pubsub()``, redis-py's ``ClusterPubSub``) took its
connection from its node's pool and held it for as long as it listened, outside the
turns: on ``max_connections=1`` a command for that node waited for the pool's one
connection and failed after the socket timeout (sync: "No connection available"), or
at once (asyncio: "Too many connections"). It now listens on connections of its own,
outside the node pools, as statekit's broadcast subscribers do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from test_review16_sync_cluster_gate import _key_on, _url  # (tests/ is on sys.path)
from test_review18_cluster_connections import _server_counts

from statekit.embedded import RedisCluster
from statekit.redis import create_client
from statekit.redis.aio import create_async_client

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

#: every wait of the test's own, at most (a wait that runs out fails the test, saying so)
WAIT = 30.0

def _has_spublish(cluster: RedisCluster) -> bool:
    """Whether the cluster's servers have sharded pub/sub (Redis 7+, Valkey)."""
    with cluster.nodes[0].client() as c:
        reply = c.execute_command("COMMAND INFO", "SPUBLISH")
    return bool(reply) and reply[0] is not None


def _next(get: Any, kind: str) -> dict[str, Any]:
    """The next message of *kind* ``get(timeout=)`` reads, within :data:`WAIT`."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        msg = get(timeout=1.0)
        if msg is not None and msg["type"] == kind:
            return dict(msg)
    raise AssertionError(f"no {kind} message within {WAIT:g} s")


def _settles(cluster: RedisCluster, name: str, node: Any, want: int) -> None:
    """*node* comes to count *want* connections named *name* within :data:`WAIT` (a
    connection closed or opened is seen by the server a moment later)."""
    deadline = time.monotonic() + WAIT
    while (seen := _server_counts(cluster, name)[f"127.0.0.1:{node.port}"]) != want:
        assert time.monotonic() < deadline, f"{node.name}: {seen} connections named {name}, not {want}"
        time.sleep(0.05)


async def _anext(get: Any, kind: str) -> dict[str, Any]:
    """:func:`_next` for an asyncio pubsub."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        msg = await get(timeout=1.0)
        if msg is not None and msg["type"] == kind:
            return dict(msg)
    raise AssertionError(f"no {kind} message within {WAIT:g} s")


_KINDS = {"subscribe": ("subscribe", "message"), "node": ("subscribe", "message"),
          "psubscribe": ("psubscribe", "pmessage"), "ssubscribe": ("ssubscribe", "smessage")}


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "asyncio"])
@pytest.mark.parametrize("how", ["subscribe", "node", "psubscribe"])
def test_a_pubsub_of_the_client_leaves_its_nodes_pool_to_the_commands(
        redis_cluster_url: str, redis_cluster: RedisCluster, how: str, aio: bool) -> None:
    """``max_connections=1``: with a pubsub of the client subscribed on a node, a
    command for that node runs at once and the pubsub still gets what is published;
    the node sees the pubsub's connection beside its pool's one, gone once the pubsub
    is closed, and the pool made one. Before, the pubsub held the pool's one
    connection: the command waited for it and failed after the socket timeout (sync:
    "No connection available"), or at once (asyncio: "Too many connections")."""
    (_async_case if aio else _sync_case)(redis_cluster_url, redis_cluster, how)


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "asyncio"])
def test_a_sharded_pubsub_of_the_client_leaves_its_nodes_pool_to_the_commands(
        redis_line_cluster_url: str, redis_line_cluster: RedisCluster, aio: bool) -> None:
    """The same with sharded channels (one pubsub a node, Redis 7+ and Valkey)."""
    if not _has_spublish(redis_line_cluster):
        pytest.skip("no sharded pub/sub on this server")
    (_async_case if aio else _sync_case)(redis_line_cluster_url, redis_line_cluster, "ssubscribe")


def _sync_case(url: str, cluster: RedisCluster, how: str) -> None:
    name = f"review18-{uuid.uuid4().hex[:12]}"
    client: Any = create_client(_url(url, max_connections=1, socket_timeout=10, client_name=name))
    try:
        node = client.get_primaries()[0]
        chan, key = _key_on(client, node, "chan"), _key_on(client, node, "key")
        pubsub = client.pubsub(node=node) if how == "node" else client.pubsub()
        subscribed, kind = _KINDS[how]
        get = pubsub.get_sharded_message if how == "ssubscribe" else pubsub.get_message
        getattr(pubsub, "subscribe" if how == "node" else how)(chan)
        assert _next(get, subscribed)["channel"] == chan.encode()
        assert client.set(key, "v") is True  # (before: ConnectionError "No connection available" after 10 s)
        assert client.get(key) == b"v"
        listening = pubsub.node_pubsub_mapping[node.name] if how == "ssubscribe" else pubsub
        pool = node.redis_connection.connection_pool
        assert listening.connection is not None and listening.connection not in pool._connections
        _settles(cluster, name, node, 2)  # the pool's one and the pubsub's
        if how == "ssubscribe":
            client.spublish(chan, "hello")
        else:
            client.publish(chan, "hello")
        assert _next(get, kind)["data"] == b"hello"

        pubsub.close()
        assert listening.connection is None
        _settles(cluster, name, node, 1)
        assert client.get(key) == b"v"
        assert len(pool._connections) == 1
    finally:
        client.close()


def _async_case(url: str, cluster: RedisCluster, how: str) -> None:
    name = f"review18-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        client = create_async_client(_url(url, max_connections=1, socket_timeout=10,
                                          client_name=name))
        try:
            await client.initialize()
            node = client.get_primaries()[0]
            chan, key = _key_on(client, node, "achan"), _key_on(client, node, "akey")
            pubsub = client.pubsub(node=node) if how == "node" else client.pubsub()
            subscribed, kind = _KINDS[how]
            get = pubsub.get_sharded_message if how == "ssubscribe" else pubsub.get_message
            await getattr(pubsub, "subscribe" if how == "node" else how)(chan)
            assert (await _anext(get, subscribed))["channel"] == chan.encode()
            assert await client.set(key, "v") is True  # (before: MaxConnectionsError at once)
            assert await client.get(key) == b"v"
            listening = pubsub.node_pubsub_mapping[node.name] if how == "ssubscribe" else pubsub
            assert listening.connection is not None and listening.connection not in node._connections
            _settles(cluster, name, node, 2)
            if how == "ssubscribe":
                await client.spublish(chan, "hello")
            else:
                await client.publish(chan, "hello")
            assert (await _anext(get, kind))["data"] == b"hello"

            await pubsub.aclose()
            assert listening.connection is None
            _settles(cluster, name, node, 1)
            assert await client.get(key) == b"v"
            assert len(node._connections) == 1
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
