"""Review 18: a write sent through redis-py's ``RedisCluster`` whose outcome is
unknown is never sent again, also when redis-py's own handling of that failure
raises.

The transport sends a Cluster command once more when redis-py's cluster client
fails with an ``AttributeError`` of its own code (:func:`statekit.redis.cluster_client_glitch`:
a node dropped from under it during a reshard, before anything was sent). An
``AttributeError`` raised by redis-py while it handled a failure *after* sending (its
``except (ConnectionError, TimeoutError)`` branch updates the topology) was taken for
one: the write went out again, and the error said "nothing sent".
"""

from __future__ import annotations

import asyncio
import threading
import types

import pytest
from test_review16_sync_cluster_gate import _key_on  # (tests/ is on sys.path)

from statekit.embedded import RedisCluster
from statekit.errors import BackendUnavailable
from statekit.redis import create_client
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.transport import Transport

pytestmark = [pytest.mark.redis, pytest.mark.cluster]


def test_an_error_in_redis_pys_handling_of_a_sent_write_does_not_send_it_again(
        own_redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = own_redis_cluster
    # no handshake (RESP2, no CLIENT SETINFO): a new connection to the stopped server
    # sends its command at once, as a resend on a connection made before would
    client = create_client(f"{cluster.url}?socket_timeout=0.5&retries=0&protocol=2", driver_info=None)
    transport = Transport(client, what="review18")
    node = client.get_primaries()[0]
    key = _key_on(client, node, "append")
    server = next(s for s in cluster.nodes if f"127.0.0.1:{s.port}" == node.name)
    pool = node.redis_connection.connection_pool
    ready = [pool.get_connection() for _ in range(2)]  # two connected: a resend would find one
    for conn in ready:
        pool.release(conn)
    # redis-py's handler of a failure after sending raises from its own code (its
    # method run on a manager without its node tables: AttributeError in redis/cluster.py)
    manager = client.nodes_manager
    monkeypatch.setattr(manager, "move_node_to_end_of_cached_nodes", types.MethodType(
        type(manager).move_node_to_end_of_cached_nodes, types.SimpleNamespace(_lock=threading.Lock())))
    server.pause()  # the APPEND is sent and never answered: its outcome is unknown
    try:
        with pytest.raises(BackendUnavailable) as caught:
            transport.command(b"APPEND", key, b"x")  # (not a KEY_AT command: through RedisCluster)
    finally:
        server.resume()
    with server.client() as c:  # the APPENDs sent, applied as the server resumed
        assert c.get(key) == b"x"
    assert "outcome is unknown" in str(caught.value) and "nothing sent" not in str(caught.value)
    client.close()


def test_the_asyncio_transport_does_not_send_it_again_either(own_redis_cluster: RedisCluster) -> None:
    """The same through redis-py's asyncio ``RedisCluster`` (the asyncio transport's
    Cluster path): its handler of a failure after sending raises an
    ``AttributeError`` of its own code (its node manager without its startup nodes),
    and the write is not sent again."""
    cluster = own_redis_cluster

    async def main() -> tuple[BaseException | None, bytes | None]:
        client = create_async_client(f"{cluster.url}?socket_timeout=0.5&retries=0&protocol=2",
                                     driver_info=None)
        transport = AsyncTransport(client, what="review18")
        node = (await client.initialize()).get_primaries()[0]
        key = _key_on(client, node, "append")
        await asyncio.gather(client.get(key), client.get(key))  # two connected: a resend would find one
        server = next(s for s in cluster.nodes if f"127.0.0.1:{s.port}" == node.name)
        manager = client.nodes_manager
        startup = manager.startup_nodes
        del manager.startup_nodes  # its failure handler raises AttributeError in redis-py's code
        server.pause()
        caught: BaseException | None = None
        try:
            await transport.command(b"APPEND", key, b"x")
        except BaseException as e:  # noqa: BLE001 - checked below
            caught = e
        finally:
            server.resume()
            manager.startup_nodes = startup
        await transport.aclose()
        await client.aclose()
        with server.client() as c:
            return caught, c.get(key)

    caught, value = asyncio.run(main())
    assert value == b"x"  # the APPEND sent once
    assert isinstance(caught, BackendUnavailable), caught
