"""Review 18: the connections a Redis Cluster client holds, through every path.

* A sync client of a URL with ``max_connections`` bounds what its callers hold with
  turns (:class:`statekit.redis.ClusterGate`): a node's pool connection is held only
  within one (or kept by a transport, within its share). Two paths took one outside:
  a transaction pipeline's ``WATCH`` (it keeps its node's connection until its reset,
  and waited for a turn only at ``execute()``, holding it: a caller in the turn waited
  in that node's pool for it, one of the two failed after the socket timeout), and the
  background script load a ``NOSCRIPT`` sends to the other primaries
  (``Transport._load_behind``).
* redis-py's asyncio client asks a startup node for the slot map on a connection of
  its own, apart from the node's pool, and kept it open for the client's life: one
  connection more than ``max_connections`` on that node (the sync client closes it).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from typing import Any

import pytest
from test_review16_sync_cluster_gate import (  # (tests/ is on sys.path; sync or asyncio client)
    _key_on,
    _most_per_node,
    _run_threads,
    _url,
)

from statekit.embedded import RedisCluster
from statekit.redis import create_client, get_client
from statekit.redis.aio import create_async_client
from statekit.redis.scripts import Script
from statekit.redis.transport import Transport

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

#: every wait of the test's own, at most (a wait that runs out fails the test, saying so)
WAIT = 30.0


def _server_counts(cluster: RedisCluster, name: str) -> dict[str, int]:
    """Each node's connections named *name*, as the node counts them (``CLIENT LIST``)."""
    counts = {}
    for node in cluster.nodes:
        with node.client() as c:
            counts[f"127.0.0.1:{node.port}"] = sum(1 for x in c.client_list() if x.get("name") == name)
    return counts


class _Blocked:
    """Sets :attr:`event` when the thread named by :meth:`watch` blocks: asking
    *pool* for a connection (it has none free: the caller waits there) or waiting for
    a turn of *gate* (one that is free is taken at once)."""

    def __init__(self, gate: Any, pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.event = threading.Event()
        self._thread: int | None = None
        with gate:  # its semaphore made
            pass
        free = gate._free
        outer = self

        class Turns:
            def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
                if free.acquire(blocking=False):
                    return True
                outer._blocked()
                return free.acquire(blocking, timeout)

            def release(self) -> None:
                free.release()

        gate._free = Turns()
        get = pool.get_connection

        def get_connection(*args: Any, **kwargs: Any) -> Any:
            outer._blocked()
            return get(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", get_connection)

    def watch(self) -> None:
        self._thread = threading.get_ident()

    def _blocked(self) -> None:
        if threading.get_ident() == self._thread:
            self.event.set()


def _in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    """*target* started in a thread; the list gets its result or its error."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _joined(thread: threading.Thread, out: list[Any]) -> Any:
    thread.join(WAIT)
    assert not thread.is_alive(), f"the thread still runs after {WAIT:g} s"
    assert len(out) == 1
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


@pytest.mark.parametrize("how", ["watch", "execute_command"])
def test_a_watching_transaction_holds_its_turn_while_it_holds_its_connection(
        redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """One connection a node, one turn: a transaction's ``WATCH`` holds the node's
    connection and its turn until ``execute()``; a command for that node from another
    thread waits for the turn (not in the pool, holding it) and runs after. Before,
    the command took the turn and waited in the pool for the pipeline's connection
    while the pipeline's ``execute()`` waited for the turn: one failed after the
    socket timeout."""
    client = create_client(_url(redis_cluster_url, max_connections=1, socket_timeout=10))
    try:
        node = client.get_primaries()[0]
        watched, other = _key_on(client, node, "watched"), _key_on(client, node, "other")
        blocked = _Blocked(client.statekit_gate, node.redis_connection.connection_pool, monkeypatch)
        with client.pipeline(transaction=True) as pipe:
            if how == "watch":
                pipe.watch(watched)
            else:
                pipe.execute_command("WATCH", watched)
            assert pipe.get(watched) is None  # run at once, on the watched connection

            def command() -> Any:
                blocked.watch()
                return client.set(other, "b")

            thread, out = _in_thread(command)
            assert blocked.event.wait(WAIT), f"the other command neither ran nor waited in {WAIT:g} s"
            pipe.multi()
            pipe.set(watched, "a")
            assert pipe.execute() in ([True], [b"OK"])  # (raw in a transaction, as redis-py gives it)
        assert _joined(thread, out) is True
        assert client.mget(watched) == [b"a"] and client.get(other) == b"b"
    finally:
        client.close()


def test_a_watch_that_fails_or_a_reset_in_another_thread_gives_the_turn_back(redis_cluster_url: str) -> None:
    """The turn a ``WATCH`` took is given back when it failed holding no connection
    (a pipeline that is no transaction refuses it) and by a reset in another thread
    (the garbage collector's, say): the one turn is free for the next call."""
    client = create_client(_url(redis_cluster_url, max_connections=1, socket_timeout=10))
    try:
        node = client.get_primaries()[0]
        key = _key_on(client, node, "gone")
        pipe = client.pipeline(transaction=False)
        with pytest.raises(Exception, match="(?i)watch"):
            pipe.watch(key)
        assert _joined(*_in_thread(lambda: client.set(key, "1"))) is True

        watching = client.pipeline(transaction=True)
        _joined(*_in_thread(lambda: watching.watch(key)))  # that thread holds the turn, and ends
        watching.reset()  # here: the turn freed
        assert _joined(*_in_thread(lambda: client.get(key))) == b"1"
        assert client.get(key) == b"1"
    finally:
        client.close()


def _script(tag: str) -> Script:
    """A script no node has yet (``return 7``)."""
    source = f"return 7 -- review18 {tag} {uuid.uuid4().hex}"
    return Script("review18", source, hashlib.sha1(source.encode()).hexdigest().encode())


@pytest.mark.parametrize("n", [1, 2])
def test_threads_on_every_path_stay_within_max_connections(redis_cluster_url: str,
                                                           redis_cluster: RedisCluster, n: int) -> None:
    """Six threads, 8 rounds each, on one URL's client of ``max_connections=N``: the
    transport's commands (this thread's node connections, within the kept share; a
    cache's would add its generation listener's connections, outside the pools), a
    transaction watching a key of its own
    (``client.transaction``), a script no node has (``NOSCRIPT``: loaded there and,
    in the background, on the other primaries) and a pipeline over every primary,
    half the threads in reverse node order. Every call succeeds within the socket
    timeout (10 s), no node's pool ever made more than N connections, and no node
    sees more than N of the client's (``CLIENT LIST``)."""
    name = f"review18-{uuid.uuid4().hex[:12]}"
    url = _url(redis_cluster_url, max_connections=n, socket_timeout=10, client_name=name)
    client: Any = get_client(url)
    transport = Transport(client, what="review18")
    primaries = client.get_primaries()
    most_seen: dict[str, int] = {}

    def worker(w: int) -> Any:
        nodes = primaries if w % 2 else primaries[::-1]
        raw = [_key_on(client, node, f"paths-{n}-{w}-{j}") for j, node in enumerate(nodes)]
        watched = _key_on(client, nodes[0], f"paths-{n}-{w}-watched")
        plain = _key_on(client, nodes[-1], f"paths-{n}-{w}-plain")

        def run() -> None:
            for r in range(8):
                assert transport.command(b"SET", plain, r) in (b"OK", True)
                assert transport.command(b"GET", plain) == str(r).encode()

                def add(pipe: Any) -> None:
                    value = int(pipe.get(watched) or 0)
                    pipe.multi()
                    pipe.set(watched, value + 1)

                client.transaction(add, watched)
                assert transport.script(_script(f"{w}-{r}"), [raw[r % len(raw)]], []) == 7
                pipe = client.pipeline(transaction=False)
                for key in raw:
                    pipe.incr(key)
                assert pipe.execute() == [r + 1] * len(raw)
                for node, count in _server_counts(redis_cluster, name).items():
                    most_seen[node] = max(most_seen.get(node, 0), count)
            assert client.get(watched) == b"8"

        return run

    try:
        errors = _run_threads([worker(w) for w in range(6)])
        assert not errors, errors[:3]
        most = _most_per_node(client)
        assert all(count <= n for count in most.values()), most
        assert most_seen and all(count <= n for count in most_seen.values()), most_seen
    finally:
        transport.close()


def _loaded(cluster: RedisCluster, script: Script) -> dict[str, bool]:
    """Which of *cluster*'s nodes have *script*."""
    out = {}
    for node in cluster.nodes:
        with node.client() as c:
            out[f"127.0.0.1:{node.port}"] = bool(c.script_exists(script.sha.decode())[0])
    return out


def _loads_of(transport: Transport) -> list[threading.Event]:
    """The background loads of *transport* under way (their ``done`` events)."""
    with transport._loads_lock:
        return list(transport._loads.values())


def test_a_background_script_load_takes_a_place_of_its_nodes_kept_share(
        redis_cluster_url: str, redis_cluster: RedisCluster) -> None:
    """The loads a ``NOSCRIPT`` sends to the primaries this thread has no connection
    to take a place of the node's kept share, as a connection a thread keeps there
    would: while other threads keep all of it, the load is not sent (best effort, the
    node loads the script at its own ``NOSCRIPT``); with room, it is. Before, it
    took a connection of the node's pool outside the share and the turns, which a
    caller in a turn counts on finding free."""
    client = create_client(_url(redis_cluster_url, max_connections=2, socket_timeout=10))
    try:
        client.ping()  # the slot map read
        primaries = client.get_primaries()
        home, others = primaries[0], primaries[1:]
        key = _key_on(client, home, "script")

        def run_script(script: Script) -> Any:
            transport = Transport(client, what="review18")
            try:
                result = _joined(*_in_thread(lambda: transport.script(script, [key], [])))
                for done in _loads_of(transport):
                    assert done.wait(WAIT), f"a background load still runs after {WAIT:g} s"
                return result
            finally:
                transport.close()

        keeper = Transport(client, what="review18 keeper")
        kept, release = threading.Event(), threading.Event()

        def keep() -> None:  # this thread keeps a connection to each other primary (the share: 1)
            try:
                for node in others:
                    keeper.command(b"GET", _key_on(client, node, "kept"))
                kept.set()
                assert release.wait(WAIT)
            finally:
                keeper.close()

        thread, out = _in_thread(keep)
        assert kept.wait(WAIT), f"the keeper did not connect in {WAIT:g} s"
        shared = _script("shared")
        try:
            assert run_script(shared) == 7
        finally:
            release.set()
            _joined(thread, out)
        assert _loaded(redis_cluster, shared) == {n.name: n.name == home.name for n in primaries}
        free = _script("free")
        assert run_script(free) == 7
        assert _loaded(redis_cluster, free) == {n.name: True for n in primaries}
    finally:
        client.close()


def test_a_load_to_a_paused_primary_keeps_no_caller_waiting(own_redis_cluster: RedisCluster) -> None:
    """While a background load waits for a paused primary's handshake, a call of the
    client through ``RedisCluster`` (a turn of its gate: the only one of a pool of 2)
    to a healthy primary runs at once: the load holds a place of the paused node's
    kept share, not a turn."""
    cluster = own_redis_cluster
    client = create_client(_url(cluster.url, max_connections=2, socket_timeout=10))
    transport = Transport(client, what="review18")
    try:
        client.ping()
        home, paused = client.get_primaries()[:2]
        key = _key_on(client, home, "script")
        server = next(s for s in cluster.nodes if f"127.0.0.1:{s.port}" == paused.name)
        for node in cluster.nodes:  # the paused master is not failed over meanwhile (2 s)
            with node.client() as c:
                c.config_set("cluster-node-timeout", 600000)
        server.pause()
        try:
            assert _joined(*_in_thread(lambda: transport.script(_script("paused"), [key], []))) == 7
            loads = _loads_of(transport)
            assert loads, "no background load under way"
            assert client.set(_key_on(client, home, "healthy"), 1) is True
            assert not all(done.is_set() for done in loads), "the call waited for the paused primary's load"
        finally:
            server.resume()
        for done in loads:
            assert done.wait(WAIT), f"a background load still runs after {WAIT:g} s"
    finally:
        transport.close()
        client.close()


@pytest.mark.parametrize("max_connections", [None, 1, 2])
def test_the_async_client_keeps_no_connection_beside_its_node_pools(
        redis_cluster_url: str, redis_cluster: RedisCluster, max_connections: int | None) -> None:
    """After its first use, under 20 commands at once a node, and after a later
    topology query, every connection a node sees from the asyncio client is one of
    that node's pool, at most ``max_connections``: the startup node asked for the
    slot map kept one more (two on a pool of 1)."""
    name = f"review18-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {"client_name": name}
    if max_connections:
        options["max_connections"] = max_connections

    async def main() -> list[tuple[dict[str, int], dict[str, int]]]:
        client = create_async_client(_url(redis_cluster_url, **options))
        seen = []

        def counts() -> tuple[dict[str, int], dict[str, int]]:
            pools = {n.name: sum(1 for c in n._connections if c.is_connected) for n in client.get_nodes()}
            return _server_counts(redis_cluster, name), pools

        try:
            await client.get("review18-first")
            seen.append(counts())
            keys = [_key_on(client, node, "load") for node in client.get_primaries()]
            await asyncio.gather(*(client.set(key, 1) for key in keys * 20))
            seen.append(counts())
            await client.nodes_manager.initialize()  # a later topology query
            seen.append(counts())
        finally:
            await client.aclose()
        return seen

    for server, pools in asyncio.run(main()):
        assert server == pools
        if max_connections:
            assert max(server.values()) <= max_connections, server


def test_an_asyncio_watching_transaction_holds_its_turn_while_it_holds_its_connection(
        redis_cluster_url: str) -> None:
    """The asyncio client's turns (one connection a node, one turn): a transaction's
    ``WATCH`` holds the node's connection and a turn until its reset (a refused one
    gives it back at once); a command for that node from another task waits for the
    turn and runs after ``execute()``.
    Before, it took the turn and the node's pool, whose one connection the pipeline
    held, refused it at once ("Too many connections")."""

    async def main() -> tuple[Any, Any, Any]:
        client = create_async_client(_url(redis_cluster_url, max_connections=1, socket_timeout=10))
        try:
            await client.initialize()
            node = client.get_primaries()[0]
            watched, other = _key_on(client, node, "awatched"), _key_on(client, node, "aother")
            go, waiting = asyncio.Event(), asyncio.Event()
            turns = client.statekit_gate._turns
            with pytest.raises(Exception, match="(?i)watch"):  # no transaction: refused, holding nothing
                await client.pipeline(transaction=False).watch(watched)
            assert not turns.locked()  # its turn given back

            async def command() -> Any:
                await go.wait()
                if turns.locked():
                    waiting.set()  # (asyncio: nothing runs between this and the wait)
                try:
                    return await client.set(other, "b")
                finally:
                    waiting.set()

            task = asyncio.ensure_future(command())  # (started before the WATCH: not in its turn)
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch(watched)
                go.set()
                await asyncio.wait_for(waiting.wait(), WAIT)
                pipe.multi()
                pipe.set(watched, "a")
                executed = await pipe.execute()
            done = await asyncio.wait_for(task, WAIT)
            return executed, done, [await client.get(watched), await client.get(other)]
        finally:
            await client.aclose()

    executed, done, values = asyncio.run(main())
    assert executed in ([True], [b"OK"])
    assert done is True and values == [b"a", b"b"]
