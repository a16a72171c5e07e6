"""Review 16: a sync Redis Cluster client under a URL's ``max_connections``.

Statekit's sync Cluster client gives each node a ``BlockingConnectionPool`` of
``max_connections`` connections, so a single command waits for one. redis-py's sync
``ClusterPipeline`` takes the connections of its nodes one at a time and keeps those
it has while it waits for the next: two pipelines visiting two nodes in opposite
orders each held one node's last connection and waited for the other's, until the
pool's wait (the socket timeout) ended and one failed "No connection available."
The client :func:`statekit.redis.create_client` makes for such a URL lets a bounded
number of commands and pipelines through at a time (a turn each, shared by every
store on the client), so nothing waits in a node's pool while holding another
connection; past it a caller waits its turn up to the socket timeout, then fails
unsent naming ``max_connections``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_redis_observability import _commands, spans  # noqa: F401 - a fixture (tests/ is on sys.path)

from statekit.cache import Cache
from statekit.errors import BackendUnavailable
from statekit.redis import create_client, get_client
from statekit.redis.transport import Transport, kept_share
from statekit.sessions import SessionStore

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

KEYS = ["review16-sync-gate-secret-key-0123456789"]

#: every wait of the test's own threads, at most (a call that hangs fails the test)
JOIN = 60.0


def _url(base: str, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{base}&{query}" if "?" in base else f"{base}?{query}"


def _pools(client: Any) -> dict[str, Any]:
    """Each primary's connection pool (the client connected)."""
    client.ping(target_nodes=client.ALL_NODES)
    return {node.name: node.redis_connection.connection_pool for node in client.get_primaries()}


def _most_per_node(client: Any) -> dict[str, int]:
    """Each primary's connections the client ever made (a ``BlockingConnectionPool``
    keeps every connection it made in ``_connections``; made connections are never
    dropped from it, only disconnected)."""
    return {node.name: len(node.redis_connection.connection_pool._connections)
            for node in client.get_primaries()}


def _key_on(client: Any, node: Any, tag: str) -> str:
    """A key whose slot *node* serves."""
    for i in range(100000):
        key = f"review16-gate-{tag}-{i}"
        if client.get_node_from_key(key).name == node.name:
            return key
    raise AssertionError(f"no key found for {node.name}")


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Run each target in a thread of its own; their errors. Every thread must end
    within :data:`JOIN` seconds."""
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} thread(s) still running after {JOIN:g} s"
    return errors


class _Race:
    """Wraps the ``get_connection`` of *pools*: a racing thread (one that called
    :meth:`racing`), once it holds the first connection of its pipeline, waits (up to
    *window* seconds) until every racer holds its first one, before asking for its
    next: the interleaving where pipelines visiting nodes in opposite orders each hold
    what the others want. A gate that lets fewer of them in makes the wait end at
    *window* (the barrier broken) and the pipelines run one after another."""

    def __init__(self, pools: list[Any], racers: int, window: float) -> None:
        self.barrier = threading.Barrier(racers, timeout=window)
        self._local = threading.local()
        for pool in pools:
            pool.get_connection = self._wrap(pool.get_connection)

    def racing(self) -> None:
        self._local.first = True

    def _wrap(self, get: Callable[..., Any]) -> Callable[..., Any]:
        def get_connection(*args: Any, **kwargs: Any) -> Any:
            conn = get(*args, **kwargs)
            if getattr(self._local, "first", False):
                self._local.first = False
                try:
                    self.barrier.wait()
                except threading.BrokenBarrierError:
                    pass  # fewer racers got a connection at once: no deadlock to set up
            return conn

        return get_connection


def _race_opposite_pipelines(client: Any, pools: dict[str, Any], a: Any, b: Any, count: int) -> None:
    """*count* threads each run a pipeline of a SET on node *a* and one on node *b*,
    half *a* first, half *b* first, racing (:class:`_Race`) to hold their first
    connection together: each must succeed within the pool's wait (10 s)."""
    race = _Race([pools[a.name], pools[b.name]], racers=count, window=2.0)
    took: list[float] = []

    def pipeline(first: Any, second: Any, i: int) -> Callable[[], None]:
        keys = (_key_on(client, first, f"{i}a"), _key_on(client, second, f"{i}b"))

        def run() -> None:
            race.racing()
            start = time.monotonic()
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, i)
            assert pipe.execute() == [True, True]
            took.append(time.monotonic() - start)

        return run

    errors = _run_threads([pipeline(a, b, i) if i % 2 else pipeline(b, a, i) for i in range(count)])
    assert not errors, errors
    assert len(took) == count and max(took) < 10, took


@pytest.mark.parametrize("n", [1, 2])
def test_pipelines_in_opposite_node_orders_do_not_deadlock(redis_cluster_url: str, n: int) -> None:
    """2N threads each run a pipeline of a SET on node A and one on node B, half A
    first, half B first, made to reach their first connection together (:class:`_Race`):
    every pipeline succeeds, none waits the pool's timeout (10 s) and no node ever has
    more than N connections. Before: all of A's and B's connections held, each
    pipeline waited 10 s for the other node's, then "No connection available"."""
    url = _url(redis_cluster_url, max_connections=n, socket_timeout=10)
    client: Any = create_client(url)
    try:
        pools = _pools(client)
        a, b = client.get_primaries()[:2]
        _race_opposite_pipelines(client, pools, a, b, 2 * n)
        most = _most_per_node(client)
        assert all(count <= n for count in most.values()), most
    finally:
        client.close()


def test_pipelines_under_kept_node_connections_do_not_deadlock(redis_cluster_url: str) -> None:
    """``max_connections=2``: a thread whose direct commands keep a connection to each
    node (the pool's kept share, 1 of 2) while it lives leaves each node one
    connection for everything else; two pipelines in opposite node orders then must
    not each take one of those and wait for the other's. Both succeed within the
    pool's wait."""
    n = 2
    assert kept_share(n) == 1
    url = _url(redis_cluster_url, max_connections=n, socket_timeout=10)
    client: Any = get_client(url)
    transport = Transport(client, what="review16 keeper")
    keeping, done = threading.Event(), threading.Event()
    try:
        pools = _pools(client)
        primaries = client.get_primaries()

        def keeper() -> None:
            for node in primaries:  # a direct command to each node: a kept connection to each
                transport.command(b"SET", _key_on(client, node, "kept"), b"1")
            keeping.set()
            done.wait(JOIN)

        holder = threading.Thread(target=keeper, daemon=True)
        holder.start()
        assert keeping.wait(JOIN), "the keeping thread did not run its commands"
        kept = {name: pool._statekit_kept[1] for name, pool in pools.items()
                if hasattr(pool, "_statekit_kept")}
        assert kept and all(count == 1 for count in kept.values()), kept
        a, b = primaries[:2]
        _race_opposite_pipelines(client, pools, a, b, 2)
        most = _most_per_node(client)
        assert all(count <= n for count in most.values()), most
    finally:
        done.set()
        holder.join(JOIN)


@pytest.mark.parametrize("n", [1, 2])
def test_threads_of_bulk_calls_sessions_and_commands_within_max_connections(redis_cluster_url: str,
                                                                            n: int) -> None:
    """Six threads, 12 rounds each, on one URL's client: cache gets, sets, bulk sets
    and gets across slots (each thread its own key order), sessions created for a few
    users, listed (a pipeline over their slots) and revoked (pipelines), and a raw
    pipeline over every primary, half the threads in reverse node order: every call
    succeeds within the pool's wait (10 s), and no node ever has more than N
    connections."""
    url = _url(redis_cluster_url, max_connections=n, socket_timeout=10)
    prefix = f"review16-sync-gate-{n}"
    cache = Cache(url, namespace=prefix, on_error="raise")
    store = SessionStore(url, secret_keys=KEYS, key_prefix=prefix)
    client: Any = get_client(url)
    primaries = client.get_primaries()
    slowest: list[float] = []

    def worker(w: int) -> Callable[[], None]:
        nodes = primaries if w % 2 else primaries[::-1]
        raw = [_key_on(client, node, f"{n}-{w}-{j}") for j, node in enumerate(nodes)]

        def run() -> None:
            for r in range(12):
                start = time.monotonic()
                assert cache.set(f"k{w}", r)
                assert cache.get(f"k{w}") == r
                many = {f"m{w}:{j}": j + r for j in range(8)}
                keys = list(many) if w % 2 else list(many)[::-1]
                assert cache.set_many(many)
                assert cache.get_many(keys) == {k: many[k] for k in keys}
                user = f"u{w}"
                for _ in range(3):
                    store.create({"w": w, "r": r}, user_id=user)
                assert len(store.list_user_sessions(user)) >= 1
                if r % 4 == 3:
                    store.revoke_user(user)
                pipe = client.pipeline(transaction=False)
                for key in raw:
                    pipe.incr(key)
                assert pipe.execute() == [r + 1] * len(raw)
                slowest.append(time.monotonic() - start)

        return run

    try:
        errors = _run_threads([worker(w) for w in range(6)])
        assert not errors, errors[:3]
        assert len(slowest) == 6 * 12 and max(slowest) < 10, max(slowest)
        most = _most_per_node(client)
        assert all(count <= n for count in most.values()), most
    finally:
        cache.close()
        store.close()


_BUSY = (r"all 1 connections of the pool \(max_connections\) were in use and none came free "
         r"within 1 s \(nothing was sent\)")


def test_past_the_wait_a_call_fails_unsent_naming_max_connections(redis_cluster_url: str) -> None:
    """Every turn taken (``max_connections=1``, the turn held by a thread of the
    test): a pipeline and a command through ``RedisCluster`` wait up to the socket
    timeout (1 s), then raise ``BackendUnavailable`` naming ``max_connections``,
    nothing sent. Given back, the next calls work; a call nested in a turn its thread
    holds runs in it."""
    url = _url(redis_cluster_url, max_connections=1, socket_timeout=1)
    client: Any = create_client(url)
    try:
        gate = client.statekit_gate
        key = "review16-gate-wait"
        held, go = threading.Event(), threading.Event()

        def hold() -> None:
            with gate:
                assert client.get(key) is None  # nested in the held turn: runs in it
                held.set()
                go.wait(JOIN)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        try:
            assert held.wait(JOIN), "the holder did not take the turn"
            pipe = client.pipeline(transaction=False).set(key, 1)
            for call in (lambda: client.set(key, 1), pipe.execute):
                start = time.monotonic()
                with pytest.raises(BackendUnavailable, match=_BUSY):
                    call()
                assert 0.9 < time.monotonic() - start < 5
        finally:
            go.set()
            holder.join(JOIN)
        assert not holder.is_alive()
        assert client.get(key) is None  # nothing was sent
        assert client.set(key, 2) and client.get(key) == b"2"
    finally:
        client.close()


GEVENT_CHILD = r"""
import json, os, sys, time

url, when = sys.argv[1], sys.argv[2]
if when != "after-patch":  # a preloaded app's client: made before gevent patches threading
    from statekit.redis import create_client
    client = create_client(url)
    if when == "used-before-fork":  # used at import in gunicorn's master, then a worker forked
        client.set("review16-gevent", 0)
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
from gevent import monkey
monkey.patch_all()
import gevent
if when == "after-patch":
    from statekit.redis import create_client
    client = create_client(url)
client.set("review16-gevent", 0)  # connected

ticks = [0]
def tick():
    while True:
        ticks[0] += 1
        gevent.sleep(0.01)

held = gevent.event.Event()
def hold():
    with client.statekit_gate:  # the one turn (max_connections=1)
        client.set("review16-gevent", 1)  # nested: runs in the turn this greenlet holds
        held.set()
        gevent.sleep(0.5)

def wait_turn():
    held.wait(10)
    start = time.monotonic()
    value = client.get("review16-gevent")  # waits for the holder's turn, yielding
    return value.decode(), time.monotonic() - start

ticker = gevent.spawn(tick)
holder = gevent.spawn(hold)
waiter = gevent.spawn(wait_turn)
gevent.joinall([holder, waiter], timeout=20)
ticker.kill()
print(json.dumps({"value": waiter.value and waiter.value[0], "waited": waiter.value and waiter.value[1],
                  "ticks": ticks[0], "errors": [repr(g.exception) for g in (holder, waiter) if g.exception]}),
      flush=True)
"""


@pytest.mark.parametrize("when", ["after-patch", "made-before-patch", "used-before-fork"])
def test_a_turn_waited_for_under_gevent_yields_to_other_greenlets(redis_cluster_url: str, when: str) -> None:
    """Under gevent (monkey-patched, a subprocess): a greenlet waiting for the turn
    another greenlet holds (``max_connections=1``) yields to the hub: the holder's
    sleep ends, its turn comes back and the waiter's command runs (0.5 s later), and
    a ticker greenlet kept running meanwhile; the holder's own nested command ran in
    its turn. Also for a client made before the patch (a preloaded app), and one used
    before a fork (gunicorn's master, then a gevent worker)."""
    import json
    import subprocess
    import sys

    url = _url(redis_cluster_url, max_connections=1, socket_timeout=10)
    out = subprocess.run([sys.executable, "-c", GEVENT_CHILD, url, when], capture_output=True, text=True,
                         timeout=JOIN)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["errors"], report
    assert report["value"] == "1", report
    assert 0.4 < report["waited"] < 10, report
    assert report["ticks"] > 10, report


def test_an_instrumented_gated_client_still_gives_each_command_a_span(
        redis_cluster_url: str, spans: Callable[[], list[str]]) -> None:  # noqa: F811 - the fixture
    """OpenTelemetry's redis instrumentation wraps ``RedisCluster.execute_command``,
    which the transport looks for on the client's class to send its direct commands
    through redis-py (a span each): the gate's turn is taken under it, so a client of
    a URL with ``max_connections`` still shows the wrapper and its commands get
    their spans."""
    client: Any = create_client(_url(redis_cluster_url, max_connections=4, socket_timeout=10))
    try:
        t = Transport(client, what="review16 spans")
        assert t.command("SET", "review16-gate-span", "1") in (b"OK", True)
        assert t.command("GET", "review16-gate-span") == b"1"
        assert [c for c in _commands(spans()) if c in ("SET", "GET")] == ["SET", "GET"]
    finally:
        client.close()
