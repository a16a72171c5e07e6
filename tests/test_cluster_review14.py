"""Review of the Redis layer on Cluster (statekit/redis: aio.py, transport.py):
script loading on masters whose script caches diverge, connections redis-py marks
for reconnect, and a paused master's effect on calls to the others. Real local
clusters; what each test checks is in its docstring."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from test_redis_aio import _with, run  # tests/ is on sys.path
from test_redis_cancel_review import GET_SCRIPT, _flush_scripts

from statekit.embedded import RedisCluster, RedisServer
from statekit.pytest_plugin import redis_command_calls, wait_for
from statekit.redis import create_client, key_slot
from statekit.redis.aio import AsyncTransport
from statekit.redis.transport import Transport

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

T = TypeVar("T")


def _key_on(cluster: RedisCluster, node: RedisServer, tag: str = "") -> str:
    """A key whose slot *node* serves (the fixture's even split of the slots)."""
    per = 16384 // len(cluster.nodes)
    i = cluster.nodes.index(node)
    n = 0
    while True:
        key = f"{tag}k{n}"
        if min(key_slot(key) // per, len(cluster.nodes) - 1) == i:
            return key
        n += 1


def _on_masters(cluster: RedisCluster, do: Callable[[Any], T]) -> list[T]:
    """``do(client)`` on each master, in the order of ``cluster.masters()``."""
    out = []
    for node in cluster.masters():
        with node.client() as r:
            out.append(do(r))
    return out


def _checkouts_here(t: Transport, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ports of the masters whose pool this thread takes a connection from (a
    connection made, or an idle one taken), from now on."""
    here = threading.get_ident()
    ports: list[int] = []
    for node in t.client.get_primaries():
        pool = t.client.get_redis_connection(node).connection_pool

        def counting(*args: Any, _port: int = node.port, _checkout: Any = pool.get_connection,
                     **kwargs: Any) -> Any:
            if threading.get_ident() == here:
                ports.append(_port)
            return _checkout(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counting)
    return ports


# -- 1. masters whose script caches diverge ---------------------------------------------


def test_an_async_script_on_masters_whose_script_caches_diverge(redis_cluster_url: str,
                                                                redis_cluster: RedisCluster) -> None:
    """asyncio: the script is on every master, then one master forgets it (a restart, a
    ``SCRIPT FLUSH``). Calls routed to that master meet ``NOSCRIPT`` once: the script
    is loaded there and run, and every later call is one ``EVALSHA`` (no failure, no
    extra round trip per call); the other masters see their own calls and at most the
    background load of a script they have. (The last session's note said the async
    transport loaded a script on one node only: ee18b92 fixed that already.)"""
    masters = redis_cluster.masters()
    keys = {node.port: _key_on(redis_cluster, node, "div") for node in masters}
    for node in masters:
        with node.client() as r:
            r.script_load(GET_SCRIPT.source)
            r.set(keys[node.port], node.port)
    forgot = masters[1]
    with forgot.client() as r:
        r.script_flush()
    _on_masters(redis_cluster, lambda r: r.config_resetstat())

    async def main(t: AsyncTransport) -> None:
        for _ in range(10):
            for node in masters:
                assert await t.script(GET_SCRIPT, [keys[node.port]], []) == str(node.port).encode()

    run(lambda: _with(redis_cluster_url, main))
    evalsha = _on_masters(redis_cluster, lambda r: redis_command_calls(r).get("evalsha", 0))
    scripts = _on_masters(redis_cluster, lambda r: redis_command_calls(r).get("script", 0))
    assert evalsha == [10 + (node is forgot) for node in masters]
    assert scripts[masters.index(forgot)] == 1
    assert all(n <= 1 for n in scripts)  # (the others at most the background load)


# -- 3. a paused master and a call to a healthy one ---------------------------------------


def test_a_call_to_a_healthy_master_is_not_delayed_by_a_paused_one_it_never_used(
        own_redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync, Cluster direct path: this thread has a connection to one master only; the
    script is on no master; another master is paused (SIGSTOP). A script call on the
    healthy master meets ``NOSCRIPT``, loads the script there and on the other
    primaries, best effort. The calling thread connected to the paused master for
    that load and waited for its handshake, the whole socket timeout (2.00 s here), on
    a call that never needed it: now it makes no connection there (the loads on the
    primaries it has none to are sent from a thread of their own). Once the paused
    master runs again it has the script (that load came through), and this thread's
    first call there runs it at once."""
    cluster = own_redis_cluster
    _flush_scripts(cluster)
    healthy, paused, third = cluster.nodes
    key, paused_key, third_key = (_key_on(cluster, node) for node in (healthy, paused, third))
    t = Transport(create_client(f"{cluster.url}?socket_timeout=2&retries=0"), what="test")
    try:
        t.command(b"SET", key, "v")
        assert [lane.port for lane in t._here().nodes.values()] == [healthy.port]
        connects = _checkouts_here(t, monkeypatch)
        paused.pause()
        try:
            start = time.monotonic()
            reply = t.script(GET_SCRIPT, [key], [])
            took = time.monotonic() - start
        finally:
            paused.resume()
        assert reply == b"v"
        assert connects == []  # no connection made by the call (to the paused master or any)
        print(f"NOSCRIPT with a paused master this thread had no connection to: {took * 1000:.1f} ms")
        with paused.client() as r:
            assert wait_for(lambda: r.script_exists(GET_SCRIPT.sha)[0], 10, "the load on the paused master")  # noqa: B023
            r.config_resetstat()
        with third.client() as r:
            assert wait_for(lambda: r.script_exists(GET_SCRIPT.sha)[0], 10, "the load on the third master")  # noqa: B023
            r.config_resetstat()
        assert t.command(b"SET", paused_key, "w") in (b"OK", True)
        assert t.command(b"SET", third_key, "x") in (b"OK", True)
        assert t.script(GET_SCRIPT, [paused_key], []) == b"w"
        assert t.script(GET_SCRIPT, [third_key], []) == b"x"
        for node in (paused, third):
            with node.client() as r:
                calls = redis_command_calls(r)
                assert calls.get("evalsha") == 1 and "script" not in calls  # no NOSCRIPT there
        assert sorted(connects) == sorted([paused.port, third.port])  # made by the calls that need them
    finally:
        t.close()
        t.client.close()


# -- 2. a master whose address changes ----------------------------------------------------


def _fail_over_to_a_new_node(cluster: RedisCluster, old: RedisServer) -> RedisServer:
    """A replica of *old* on a new port takes over its slots (``CLUSTER FAILOVER
    TAKEOVER``): the slots' master has a new address; *old* is its replica."""
    new = cluster.add_node(replica_of=old)
    with new.client() as c:
        c.execute_command("CLUSTER FAILOVER", "TAKEOVER")
        assert wait_for(lambda: c.info("replication")["role"] == "master", 30, "the failover")  # noqa: B023
    cluster.wait_ok()
    return new


def _remove(cluster: RedisCluster, old: RedisServer) -> None:
    """*old* leaves the cluster: killed, and forgotten by every other node."""
    old_id = cluster.node_id(old)
    old.kill()
    for node in cluster.nodes:
        if node.running:
            with node.client() as c:
                c.execute_command("CLUSTER FORGET", old_id)
    cluster.wait_ok()


def test_a_master_whose_address_changes_is_followed_and_its_old_connection_not_kept(
        own_redis_cluster: RedisCluster) -> None:
    """Sync and asyncio: a key's master fails over to a replica on another port, and
    the old master leaves the cluster. Both transports' next commands on the key are
    served by the new master (the sync direct path's connection to the old node got
    ``MOVED``, then ``RedisCluster`` refreshed its map). When redis-py's refresh drops
    the old node it marks that node's connections in use for reconnect
    (``should_reconnect``), and its refresh closes them (the node is dead), which
    clears the mark: the sync thread kept its connection to the old node (closed, in
    the old pool) for the thread's life, as it dropped only marked ones. Now a
    connection whose node left the topology is not kept once the thread connects
    anew, as redis-py's own release does. The asyncio transport keeps no Cluster
    connection between commands: redis-py's ``ClusterNode`` checks the mark at each
    acquire."""
    cluster = own_redis_cluster
    old, other = cluster.nodes[0], cluster.nodes[1]
    key, other_key = _key_on(cluster, old, "moved"), _key_on(cluster, other, "moved")
    sync = Transport(create_client(cluster.url), what="test")

    async def main(t: AsyncTransport) -> None:
        assert await t.command(b"SET", key, "v") in (b"OK", True)
        assert sync.command(b"GET", key) == b"v"
        lane = next(lane for lane in sync._here().nodes.values() if lane.port == old.port)
        old_conn = lane.conn
        new = _fail_over_to_a_new_node(cluster, old)
        with new.client() as r:
            r.config_resetstat()
        assert sync.command(b"GET", key) == b"v"  # the old node's MOVED, followed
        assert sync.command(b"SET", key, "w") in (b"OK", True)
        assert await t.command(b"GET", key) == b"w"
        assert await t.command(b"SET", key, "x") in (b"OK", True)
        assert sync.command(b"GET", key) == b"x"
        with new.client() as r:
            calls = redis_command_calls(r)
        assert (calls.get("get"), calls.get("set")) == (3, 2)
        assert lane.conn is old_conn and old_conn._sock is not None  # kept: its node is a replica now
        _remove(cluster, old)
        sync.client.nodes_manager.initialize()  # the refresh redis-py makes after an error
        assert old_conn._sock is None and not old_conn.should_reconnect()  # closed by the refresh, unmarked
        assert sync.command(b"GET", other_key) is None  # a new connection (to another master)
        assert all(lane.port != old.port for lane in sync._here().nodes.values())
        pool = lane.pool
        del lane
        # (the MOVED it got left it in a frame of a reference cycle: collected, not leaked)
        gc.collect()
        assert old_conn not in pool._in_use_connections

    try:
        run(lambda: _with(cluster.url, main))
    finally:
        sync.close()
        sync.client.close()


def test_an_async_call_to_a_healthy_master_is_not_delayed_by_a_paused_one(
        own_redis_cluster: RedisCluster) -> None:
    """asyncio, as the sync test above: the script is on no master and one master is
    paused. A script call on a healthy master loads it there, runs it and returns
    while the load on the paused master is still under way (in the background: the
    call did not wait for it); once that master runs again the load ends and its own
    keys' script runs there without ``NOSCRIPT``."""
    cluster = own_redis_cluster
    _flush_scripts(cluster)
    healthy, paused, _ = cluster.nodes
    key, paused_key = _key_on(cluster, healthy), _key_on(cluster, paused)

    async def main(t: AsyncTransport) -> None:
        assert await t.command(b"SET", key, "v") in (b"OK", True)
        assert await t.command(b"SET", paused_key, "w") in (b"OK", True)
        paused.pause()
        try:
            reply = await t.script(GET_SCRIPT, [key], [])
            loading = list(t._loading.values())
            under_way = [not task.done() for task in loading]
        finally:
            paused.resume()
        assert reply == b"v"
        assert under_way == [True]  # the other primaries' load: the paused one has not answered
        await asyncio.gather(*loading)
        with paused.client() as r:
            r.config_resetstat()
        assert await t.script(GET_SCRIPT, [paused_key], []) == b"w"
        with paused.client() as r:
            calls = redis_command_calls(r)
        assert calls.get("evalsha") == 1 and "script" not in calls  # no NOSCRIPT there

    run(lambda: _with(f"{cluster.url}?socket_timeout=5&retries=0", main))
