"""Review of the Redis layer under cancellation and faults (statekit/redis: aio.py,
transport.py, __init__.py), sync and asyncio, standalone, Sentinel and Cluster.

Each test drives one interleaving or fault at a chosen point (a read paused on an
event, a reply the server is made to send), never a sleep that hopes the timing is
right. What each checks is in its docstring."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from statekit.embedded import RedisCluster
from statekit.redis import create_client, key_slot
from statekit.redis.aio import AsyncTransport, create_async_client
from statekit.redis.scripts import Script
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest().encode())


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make())  # type: ignore[arg-type]


# -- a reply that says nothing was applied (READONLY, LOADING) ----------------------

# The first attempt is answered as a demoted master (READONLY) or a loading server
# (LOADING) answers: with nothing applied but the attempt count (the test's own
# bookkeeping, KEYS[2]); the next attempt applies the write. The retry rule: such a
# reply drops the connection and the write is sent again (a Sentinel connection asks
# for the master again), applied once.
_REFUSED_ONCE = """
if redis.call('INCR', KEYS[2]) == 1 then return redis.error_reply(ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""
REFUSED_ONCE = _script("refused-once", _REFUSED_ONCE)
REPLIES = {
    "READONLY": "READONLY You can't write against a read only replica.",
    "LOADING": "LOADING Redis is loading the dataset in memory",
}


def _url(kind: str, redis_url: str, sentinel_url: str) -> str:
    return f"{sentinel_url if kind == 'sentinel' else redis_url}?retries=2&retry_backoff_cap=0.01"


@pytest.mark.sentinel
@pytest.mark.parametrize("kind", ["standalone", "sentinel"])
@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_a_write_refused_unapplied_is_sent_again_and_applied_once_async(
        kind: str, reply: str, redis_url: str, sentinel_url: str) -> None:
    """asyncio: redis-py's Sentinel connection turns READONLY into a
    ``ConnectionError`` and LOADING is one (``BusyLoadingError``): both were taken
    for a dropped connection after sending (outcome unknown, not retried), where the
    sync transport retries them as the rule says."""
    url = _url(kind, redis_url, sentinel_url)
    keys = ["{r}n", "{r}attempts"]

    async def main() -> None:
        client = create_async_client(url)
        t = AsyncTransport(client, what="test")
        try:
            await t.command(b"DEL", *keys)
            assert await t.script(REFUSED_ONCE, keys, [REPLIES[reply]]) == 1
            assert await t.command(b"GET", keys[1]) == b"2"  # two attempts, the write applied once
        finally:
            await t.aclose()
            await client.aclose()

    run(main)
    # the sync transport, for comparison (the one rule)
    sync = Transport(create_client(url), what="test")
    try:
        sync.command(b"DEL", *keys)
        assert sync.script(REFUSED_ONCE, keys, [REPLIES[reply]]) == 1
        assert sync.command(b"GET", keys[1]) == b"2"
    finally:
        sync.client.close()


# -- Cluster: a script a node lacks ---------------------------------------------------

GET_SCRIPT = _script("review-get", "return redis.call('GET', KEYS[1])")


def _flush_scripts(cluster: RedisCluster) -> None:
    for node in cluster.masters():
        with node.client() as r:
            r.script_flush()


def _loaded_on(cluster: RedisCluster, script: Script) -> list[bool]:
    loaded = []
    for node in cluster.masters():
        with node.client() as r:
            loaded.append(bool(r.script_exists(script.sha)[0]))
    return loaded


@pytest.mark.cluster
def test_a_script_the_async_transport_loads_is_loaded_on_every_primary(
        redis_cluster_url: str, redis_cluster: RedisCluster) -> None:
    """asyncio, Cluster: at ``NOSCRIPT`` the script is loaded on the key's node (then
    run there) and on every other primary, as the sync transport does (it was loaded
    on the key's node only: a sync process's or a bulk call's pipelines then met
    ``NOSCRIPT`` on every other master)."""
    _flush_scripts(redis_cluster)

    async def main() -> None:
        client = create_async_client(redis_cluster_url)
        t = AsyncTransport(client, what="test")
        try:
            await t.command(b"SET", "{s}k", "v")
            assert await t.script(GET_SCRIPT, ["{s}k"], []) == b"v"
            await asyncio.gather(*t._loading.values())  # the other primaries' loads, not awaited by the call
        finally:
            await t.aclose()
            await client.aclose()

    run(main)
    assert _loaded_on(redis_cluster, GET_SCRIPT) == [True] * len(redis_cluster.masters())


def _keys_by_port(t: Transport, count: int) -> dict[int, str]:
    """A key on each of *count* masters (set to ``"v"``, which also makes this
    thread's connection to each)."""
    by_port: dict[int, str] = {}
    i = 0
    while len(by_port) < count:
        key = f"k{i}"
        i += 1
        t.command(b"SET", key, "v")
        by_port.setdefault(t.client.nodes_manager.slots_cache[key_slot(key)][0].port, key)
    return by_port


@pytest.mark.cluster
def test_a_script_load_on_the_other_masters_never_waits_for_a_paused_one(
        own_redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sync, Cluster direct path: at ``NOSCRIPT`` the script is loaded on every other
    primary too, best effort. A paused one (SIGSTOP) made the call wait for that
    reply up to the socket timeout, on every call that met ``NOSCRIPT``: now the
    loads are sent first and only the replies already there are read. The paused
    master's connection owes its reply: its next command reads its own reply."""
    cluster = own_redis_cluster
    _flush_scripts(cluster)
    t = Transport(create_client(f"{cluster.url}?socket_timeout=1&retries=0"), what="test")
    try:
        by_port = _keys_by_port(t, len(cluster.masters()))
        run_port, paused_port = sorted(by_port)[:2]
        paused = next(node for node in cluster.masters() if node.port == paused_port)
        lane = next(lane for lane in t._here().nodes.values() if lane.port == paused_port)
        conn = lane.conn
        waited: list[int] = []
        read = conn.read_response

        def read_response(*args: Any, **kwargs: Any) -> Any:
            waited.append(paused_port)
            return read(*args, **kwargs)

        monkeypatch.setattr(conn, "read_response", read_response)
        paused.pause()
        try:
            start = time.monotonic()
            assert t.script(GET_SCRIPT, [by_port[run_port]], []) == b"v"
            took = time.monotonic() - start
            assert waited == []  # the paused master's reply was never waited for
        finally:
            paused.resume()
        print(f"NOSCRIPT with a paused master: {took * 1000:.1f} ms")
        monkeypatch.undo()
        assert t.command(b"GET", by_port[paused_port]) == b"v"  # its own reply, not the load's
        assert t.script(GET_SCRIPT, [by_port[paused_port]], []) == b"v"
    finally:
        t.close()
        t.client.close()


# -- connections redis-py marks for reconnect (should_reconnect) -----------------------
# redis-py marks a pool's connections in use for reconnect when the server announces
# a move (maintenance notifications, on by default with RESP3) or a Cluster node
# leaves the topology: "closed once their current command completes". The
# transports keep connections between commands (per thread, per node, or idle on the
# loop), so they must look at the mark themselves.


def test_a_connection_marked_for_reconnect_is_reconnected_before_its_next_command_sync(
        redis_url: str) -> None:
    t = Transport(create_client(redis_url), what="test")
    try:
        first = t.command(b"CLIENT", b"ID")
        t.client.connection_pool.update_active_connections_for_reconnect()
        second = t.command(b"CLIENT", b"ID")
        assert second != first
        assert t.command(b"CLIENT", b"ID") == second  # once
    finally:
        t.close()
        t.client.close()


def test_a_connection_marked_for_reconnect_is_reconnected_before_its_next_command_async(
        redis_url: str) -> None:
    async def main() -> None:
        client = create_async_client(redis_url)
        t = AsyncTransport(client, what="test", limit=1)
        try:
            first = await t.command(b"CLIENT", b"ID")
            await client.connection_pool.update_active_connections_for_reconnect()
            second = await t.command(b"CLIENT", b"ID")
            assert second != first
            assert await t.command(b"CLIENT", b"ID") == second  # once
        finally:
            await t.aclose()
            await client.aclose()

    run(main)


@pytest.mark.cluster
def test_a_node_connection_marked_for_reconnect_is_not_kept_by_the_thread(redis_cluster_url: str) -> None:
    """Cluster direct path: this thread's connection to a node is reconnected before
    its next command once marked, and one the thread no longer uses (its node left
    the topology) goes back to its pool when the thread opens its next one."""
    t = Transport(create_client(redis_cluster_url), what="test")
    try:
        by_port = _keys_by_port(t, 3)
        t.close()  # this thread's node connections given back: the next ones are made as needed
        (a_port, a_key), (b_port, b_key), (_, c_key) = sorted(by_port.items())
        assert t.command(b"GET", a_key) == t.command(b"GET", b_key) == b"v"
        lanes = t._here().nodes
        a, b = (next(lane for lane in lanes.values() if lane.port == port) for port in (a_port, b_port))
        sock = a.conn._sock
        a.pool.update_active_connections_for_reconnect()
        assert t.command(b"GET", a_key) == b"v"
        assert a.conn._sock is not None and a.conn._sock is not sock and not a.conn.should_reconnect()
        # b's node leaves the topology (redis-py marks its connections); the thread's
        # next new connection (to c's node) gives b's back
        conn = b.conn
        b.pool.update_active_connections_for_reconnect()
        assert t.command(b"GET", c_key) == b"v"
        assert b not in lanes.values() and conn not in b.pool._in_use_connections
    finally:
        t.close()
        t.client.close()
