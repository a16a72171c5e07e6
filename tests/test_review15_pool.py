"""Review 15: a small ``max_connections`` and the sync transport's per-thread
connections (statekit/redis/transport.py), against the suite's real server.

``max_connections=N`` bounds the connections a URL's pool opens, and every operation
works with any N >= 1: a thread keeps a connection of its own only while the pool
has room beside it (one at least is left for the rest), other commands borrow one
for each command, and a caller waits for one (up to the socket timeout) instead of
failing. The transport kept one connection per thread for good: with
``max_connections=1`` a thread's took the only one, and a pipeline of the same
client, another thread's command or another store's on the same URL failed with
``Too many connections``. The server's ``CLIENT LIST`` shows at most N connections
of the pool (a near cache's invalidation listener is one more, its own, outside the
pool)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from statekit.broadcast import SharedValue
from statekit.cache import Cache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import run_threads, wait_for
from statekit.redis import get_client
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis

KEYS = ["review15-pool-secret-key-0123456789"]


class Peak:
    """The most connections named *name* the server listed at once (``CLIENT LIST``,
    sampled every few milliseconds until stopped), a near cache's invalidation
    listeners apart (each has a connection of its own, not the pool's: told by its
    subscription, seen in any sample; before it subscribes, its handshake lists it
    like any other)."""

    def __init__(self, server: RedisServer, name: str) -> None:
        self.name = name
        self.seen: list[set[str]] = []
        self.listeners: set[str] = set()
        self._stop = threading.Event()
        self._client = server.client()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rows = [row for row in self._client.client_list() if row.get("name") == self.name]
        self.seen.append({row["id"] for row in rows})
        self.listeners |= {row["id"] for row in rows if "P" in row.get("flags", "")}

    @property
    def most(self) -> int:
        return max((len(ids - self.listeners) for ids in self.seen), default=0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.002)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()
        self._client.close()


@pytest.fixture
def pool_url(redis_server: RedisServer, redis_url: str) -> Iterator[Callable[[int], str]]:
    """A URL of the suite's server with ``max_connections=n`` and a client name of its
    own (so ``CLIENT LIST`` finds this test's connections); every store made from it
    shares one pool (:func:`statekit.redis.get_client`). Generous socket timeout: the
    wait for a connection is bounded by it, and the machine is loaded."""
    name = f"review15-pool-{uuid.uuid4().hex[:8]}"
    made: list[str] = []

    def make(n: int) -> str:
        url = f"{redis_url}?max_connections={n}&client_name={name}&socket_timeout=10"
        made.append(url)
        return url

    make.name = name  # type: ignore[attr-defined]
    yield make
    for url in made:
        get_client(url).connection_pool.disconnect()


def _work(cache: Cache, store: SessionStore, url: str, i: int) -> None:
    """What one request thread does (:func:`_calls`), and a pipeline of the stores'
    client."""
    _calls(cache, store, i)
    with get_client(url).pipeline(transaction=False) as pipe:  # the stores' client, and pool
        assert pipe.ping().ping().execute() == [True, True]


def _calls(cache: Cache, store: SessionStore, i: int) -> None:
    """Cache gets and sets, a bulk pair, a session with a user (its save updates the
    user's index), and the user's listing (a pipeline of the pool's client)."""
    for j in range(10):
        assert cache.set(f"t{i}:k{j}", {"i": i, "j": j})
        assert cache.get(f"t{i}:k{j}") == {"i": i, "j": j}
    assert cache.set_many({f"t{i}:a": 1, f"t{i}:b": 2})
    assert cache.get_many([f"t{i}:a", f"t{i}:b"]) == {f"t{i}:a": 1, f"t{i}:b": 2}
    session = store.create({"n": 0}, user_id=f"user{i}")
    loaded = store.load(session.sid)
    assert loaded is not None
    loaded["n"] = 1
    assert store.save(loaded)
    assert [s.handle for s in store.list_user_sessions(f"user{i}")] == [session.handle]


@pytest.mark.parametrize("threads", [1, 2, 8])
@pytest.mark.parametrize("size", [1, 2])
def test_every_operation_works_on_a_small_pool_and_stays_within_it(
        redis_server: RedisServer, pool_url: Any, size: int, threads: int) -> None:
    """A cache and a session store on one URL with ``max_connections=1`` (or 2), used
    from 1, 2 and 8 threads at once: every get, set, bulk call, session save with a
    user index and listing pipeline works, and the server never sees more than
    ``size`` connections of the pool."""
    url = pool_url(size)
    cache = Cache(url, namespace="review15-pool")
    store = SessionStore(url, secret_keys=KEYS, key_prefix="review15-pool")
    try:
        with Peak(redis_server, pool_url.name) as peak:
            run_threads(lambda i: _work(cache, store, url, i), threads, timeout=120)
        assert 1 <= peak.most <= size
    finally:
        cache.close()
        store.close()


@pytest.mark.parametrize("size", [1, 2])
def test_near_caches_work_on_a_small_pool(redis_server: RedisServer, pool_url: Any, size: int) -> None:
    """A near-cache ``Cache`` and a session store with a near cache (its tracked
    connections, kept for good, take no more than the pool's share) on a pool of 1
    (or 2), from 8 threads: reads see every write, the session index works, and
    the pool's connections stay within ``size``."""
    url = pool_url(size)
    cache = Cache(url, namespace="review15-pool-near", near_cache=True)
    store = SessionStore(url, secret_keys=KEYS, key_prefix="review15-pool-near", near_cache=100)
    try:
        assert cache.near_ready(10)
        with Peak(redis_server, pool_url.name) as peak:
            run_threads(lambda i: _work(cache, store, url, i), 8, timeout=120)
            for i in range(8):
                assert cache.get(f"t{i}:k0") == {"i": i, "j": 0}
        assert 1 <= peak.most <= size
    finally:
        cache.close()
        store.close()


def test_a_pipeline_beside_a_threads_connection_on_a_pool_of_one(pool_url: Any) -> None:
    """The reviewer's case: a cache call on this thread, then ``pipeline().execute()``
    of the same client with ``max_connections=1``: it got ``MaxConnectionsError: Too
    many connections`` (the thread kept the only connection)."""
    url = pool_url(1)
    cache = Cache(url, namespace="review15-pool-pipe")
    try:
        assert cache.set("k", 1)
        with get_client(url).pipeline(transaction=False) as pipe:
            assert pipe.get(b"nothing").ping().execute() == [None, True]
        assert cache.get("k") == 1
    finally:
        cache.close()


def test_a_sentinel_masters_pool_of_one(sentinel_setup: Any, sentinel_url: str) -> None:
    """The same on a Sentinel master (its pool waits for a connection too): a cache
    and a session store on ``max_connections=1``, from 8 threads, one connection to
    the master at most."""
    name = f"review15-pool-{uuid.uuid4().hex[:8]}"
    url = f"{sentinel_url}?max_connections=1&client_name={name}&socket_timeout=10"
    cache = Cache(url, namespace="review15-pool-sentinel")
    store = SessionStore(url, secret_keys=KEYS, key_prefix="review15-pool-sentinel")
    try:
        with Peak(sentinel_setup.master, name) as peak:
            run_threads(lambda i: _work(cache, store, url, i), 8, timeout=120)
        assert peak.most == 1
    finally:
        cache.close()
        store.close()
        get_client(url).connection_pool.disconnect()


@pytest.mark.cluster
def test_a_clusters_node_pools_of_one(redis_cluster: Any, redis_cluster_url: str) -> None:
    """Redis Cluster: ``max_connections`` bounds each node's pool. With 1, from 8
    threads, every cache call, bulk call and session save with a user index (a second
    call there: the index lives in another slot) works, through ``RedisCluster``
    (its node pools wait for their connection), one connection to each node at most
    (each failed with ``Too many connections`` when a thread kept one per node)."""
    name = f"review15-pool-{uuid.uuid4().hex[:8]}"
    url = f"{redis_cluster_url}?max_connections=1&client_name={name}&socket_timeout=10"
    cache = Cache(url, namespace="review15-pool-cluster")
    store = SessionStore(url, secret_keys=KEYS, key_prefix="review15-pool-cluster")

    try:
        with contextlib.ExitStack() as stack:
            peaks = [stack.enter_context(Peak(node, name)) for node in redis_cluster.nodes]
            run_threads(lambda i: _calls(cache, store, i), 8, timeout=120)
        assert all(peak.most <= 1 for peak in peaks), [peak.most for peak in peaks]
        assert sum(peak.most for peak in peaks) >= 1
    finally:
        cache.close()
        store.close()


def pool_waits(monkeypatch: pytest.MonkeyPatch, pool: Any) -> list[None]:
    """Each call of *pool*'s ``get_connection`` from now on (sync, or asyncio: the
    coroutine is returned as is), one item each: how many times a caller waited for
    the pool, counted rather than timed (a loaded machine may take seconds longer
    over one wait)."""
    calls: list[None] = []
    get_connection = pool.get_connection

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(None)
        return get_connection(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", counted)
    return calls


def test_a_command_waits_for_the_pool_its_socket_timeout_once(redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of the pool in use (here: the only one, held by the test):
    a cache call waits for one up to the socket timeout, then fails unsent, naming
    ``max_connections``, once (not again by the retry rule: the wait was the pool's);
    given back, the next call works. The waits are counted: the time of one (a 1 s
    wait, bounded by 2.5 s) failed the test under load now and then."""
    url = f"{redis_url}?max_connections=1&socket_timeout=1&retries=2"
    cache = Cache(url, namespace="review15-pool-wait", on_error="raise")
    pool = get_client(url).connection_pool
    try:
        assert cache.set("k", 1)
        held = pool.get_connection()
        waits = pool_waits(monkeypatch, pool)
        started = time.monotonic()
        try:
            with pytest.raises(BackendUnavailable, match=r"all 1 connections of the pool \(max_connections\) "
                                                          r"were in use and none came free within 1 s"):
                cache.get("k")
            waited = time.monotonic() - started
        finally:
            pool.release(held)
        assert len(waits) == 1  # one wait (the retries' three were 3 s and more)
        assert 1 <= waited < 30  # the pool's timeout, and no hang
        assert cache.get("k") == 1
    finally:
        cache.close()
        pool.disconnect()


def test_a_broadcast_subscriber_beside_the_cache_on_a_small_pool(redis_server: RedisServer,
                                                                  pool_url: Any) -> None:
    """A shared value's subscriber listens on a connection of its own, outside the
    URL's pool: on a pool of 2, the connection the hub's thread keeps (its share: 1)
    and this thread's cache call and pipeline fit. The subscriber held one of the
    pool's for as long as it listened, which the transports' kept share does not
    count: this cache call waited its timeout for one and failed (on 3, with this
    thread's kept one, the pipeline did)."""
    url = pool_url(2).replace("socket_timeout=10", "socket_timeout=1")
    value: SharedValue[int] = SharedValue("x", url=url, key_prefix="review15-pool-bcast")
    cache = Cache(url, namespace="review15-pool-bcast")
    try:
        with Peak(redis_server, pool_url.name) as peak:
            value.get()  # starts the subscriber
            wait_for(lambda: peak.listeners, what="the subscriber's pub/sub connection")
            assert cache.set("k", 1)
            with get_client(url).pipeline(transaction=False) as pipe:
                assert pipe.get(b"nothing").execute() == [None]
        assert 1 <= peak.most <= 2  # the pool's, the subscriber's own apart
    finally:
        cache.close()
        if value._hub is not None:
            value._hub.stop(5)
