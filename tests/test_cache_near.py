"""Near cache: coherent across processes through Redis invalidations, flushed and
bypassed while the invalidation connection is down, safe after fork."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import pytest
import redis

from statekit.cache import Cache

pytestmark = pytest.mark.redis


def _until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def _reader(url: str, ready: Any, go: Any, results: Any) -> None:
    cache = Cache(url, near_cache=True)
    assert cache.near_ready(10)
    first = cache.get("shared")
    cache.get("shared")
    near_hits = cache.stats()["near_hits"]
    ready.set()
    go.wait(10)
    seen = _until(lambda: cache.get("shared") == "v2")
    results.put((first, near_hits, seen))


def test_write_in_one_process_is_seen_in_another(redis_line_url: str) -> None:
    writer = Cache(redis_line_url)
    writer.set("shared", "v1")
    ctx = mp.get_context("fork")
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_reader, args=(redis_line_url, ready, go, results))
    proc.start()
    try:
        assert ready.wait(20)
        writer.set("shared", "v2")
        go.set()
        first, near_hits, seen = results.get(timeout=20)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert first == "v1"
    assert near_hits >= 1  # the reader served v1 from its near cache ...
    assert seen  # ... and still saw v2 once it was written


def test_near_hits_and_read_your_writes(redis_line_url: str) -> None:
    cache = Cache(redis_line_url, near_cache=True)
    assert cache.near_ready()
    cache.set("k", 1)
    assert _until(lambda: cache.get("k") == 1 and cache.stats()["near_hits"] > 0)
    cache.set("k", 2)  # a local write drops the local copy at once
    assert cache.get("k") == 2
    cache.delete("k")
    assert cache.get("k") is None
    cache.set_many({"a": 1, "b": 2})
    assert cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert _until(lambda: cache.get_many(["a", "b"]) == {"a": 1, "b": 2}
                  and cache.stats()["near_hits"] >= 3)


def test_other_writers_clear_and_flush_invalidate(redis_line_url: str) -> None:
    near = Cache(redis_line_url, near_cache=True)
    other = Cache(redis_line_url)
    assert near.near_ready()
    other.set("a", "old")
    other.set("b", "old")
    near.get("a")
    near.get("b")
    other.set("a", "new")
    assert _until(lambda: near.get("a") == "new")
    other.clear()  # generation bump: the whole namespace is dropped locally
    assert _until(lambda: near.get("b") is None)
    other.set("b", "again")
    near.get("b")
    with redis.Redis.from_url(redis_line_url) as r:
        r.flushdb()
    assert _until(lambda: near.get("b") is None)


def test_bounded_lru() -> None:
    from statekit.cache.near import NearCache

    n = NearCache(maxsize=3)
    n.set_active(True)
    for i in range(5):
        n.store(str(i), (i, 0.0, 0.0), None, n.seq)
    assert list(n.data) == ["2", "3", "4"]
    seq = n.seq
    n.evict("3")
    n.store("3", ("stale", 0.0, 0.0), None, seq)  # read raced with an invalidation of "3"
    assert "3" not in n.data
    n.set_active(False)
    assert len(n) == 0


def test_race_check_is_per_key() -> None:
    """A read is refused only if *its* key was invalidated while it was in flight (or
    the cache flushed): with concurrent traffic to many keys, a check shared by all
    keys refused nearly every store. Evictions remembered per key are bounded; a
    forgotten one refuses every read older than it."""
    from statekit.cache.near import NearCache

    n: NearCache[str] = NearCache(maxsize=100, evictions=3)
    n.set_active(True)
    seq = n.seq
    n.evict("other")  # another key changed meanwhile
    n.store("k", "v", None, seq)
    assert n.data["k"][0] == "v"

    seq = n.seq
    n.flush()  # everything changed meanwhile
    n.store("k", "v", None, seq)
    assert "k" not in n.data

    n.evict("k")  # this process changes k: drop it, then write, then settle
    seq = n.seq
    n.settle("k", "mine", seq)
    assert n.data["k"][0] == "mine"
    n.store("k", "older read", None, seq)  # a read begun before the change
    assert n.data["k"][0] == "mine"

    seq = n.seq
    n.evict("k")
    for i in range(3):  # k's eviction is forgotten: the floor refuses the read
        n.evict(f"x{i}")
    n.store("k", "stale", None, seq)
    assert "k" not in n.data
    n.store("k", "fresh", None, n.seq)
    assert n.data["k"][0] == "fresh"


def test_connection_drop_flushes_and_bypasses(redis_line_url: str) -> None:
    cache = Cache(redis_line_url, near_cache=True)
    other = Cache(redis_line_url)
    assert cache.near_ready()
    other.set("k", "v1")
    assert _until(lambda: cache.get("k") == "v1" and len(cache._near or ()) == 1)
    listener = cache._listener
    assert listener is not None
    with redis.Redis.from_url(redis_line_url) as r:
        r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert _until(lambda: not listener.connected.is_set() or listener.reconnects > 0)
    other.set("k", "v2")
    assert _until(lambda: cache.get("k") == "v2")
    assert cache.near_ready(10)  # it reconnects on its own
    assert _until(lambda: cache.get("k") == "v2" and len(cache._near or ()) == 1)
    other.set("k", "v3")
    assert _until(lambda: cache.get("k") == "v3")


def _child_after_fork(cache: Cache, other_url: str, results: Any) -> None:
    seen_old = cache.get("k")
    Cache(other_url).set("k", "child-write")
    results.put((seen_old, cache.get("k"), cache.near_ready(10), os.getpid()))


def test_fork_safety(redis_line_url: str) -> None:
    cache = Cache(redis_line_url, near_cache=True)
    assert cache.near_ready()
    cache.set("k", "parent")
    assert _until(lambda: cache.get("k") == "parent" and len(cache._near or ()) == 1)
    Cache(redis_line_url).set("k", "changed-before-fork")
    assert _until(lambda: cache.get("k") == "changed-before-fork")
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    proc = ctx.Process(target=_child_after_fork, args=(cache, redis_line_url, results))
    proc.start()
    seen_old, seen_new, ready, pid = results.get(timeout=20)
    proc.join(10)
    assert pid != os.getpid()
    assert seen_old == "changed-before-fork"
    assert seen_new == "child-write"
    assert ready
    assert _until(lambda: cache.get("k") == "child-write")


@pytest.mark.cluster
def test_near_cache_on_cluster(redis_cluster_url: str) -> None:
    near = Cache(redis_cluster_url, near_cache=True)
    other = Cache(redis_cluster_url)
    assert near.near_ready()
    for ns in ("a", "b", "c", "d"):
        other.namespace(ns).set("k", "v1")
        assert near.namespace(ns).get("k") == "v1"
        other.namespace(ns).set("k", "v2")
        assert _until(lambda ns=ns: near.namespace(ns).get("k") == "v2")  # type: ignore[misc]


@pytest.mark.sentinel
def test_near_cache_on_sentinel(redis_sentinel: Any) -> None:
    near = Cache(redis_sentinel.url, near_cache=True)
    other = Cache(redis_sentinel.url)
    assert near.near_ready()
    other.set("k", "v1")
    assert near.get("k") == "v1"
    other.set("k", "v2")
    assert _until(lambda: near.get("k") == "v2")


@pytest.mark.parametrize("protocol", [2, 3])
def test_without_hiredis(redis_url: str, protocol: int) -> None:
    """hiredis is optional: redis-py's pure-Python reply parser serves the data
    connections and the invalidation connection alike."""
    from redis._parsers import _RESP2Parser, _RESP3Parser

    parser = _RESP3Parser if protocol == 3 else _RESP2Parser
    pool = redis.ConnectionPool.from_url(redis_url, protocol=protocol, parser_class=parser)
    cache = Cache(client=redis.Redis(connection_pool=pool), near_cache=True, namespace=f"nohiredis{protocol}")
    other = Cache(redis_url, namespace=f"nohiredis{protocol}")
    assert cache.near_ready()
    cache.set_many({"a": [1, "x"], "b": None, "n": 5})
    assert cache.get_many(["a", "b", "n", "zz"]) == {"a": [1, "x"], "b": None, "n": 5}
    assert cache.incr("n") == 6
    with pytest.raises(ValueError):
        cache.incr("a")
    assert cache.get("a") == [1, "x"]
    other.set("a", "changed")
    assert _until(lambda: cache.get("a") == "changed")
    backend: Any = cache._backend
    assert isinstance(backend.transport._lane().conn._parser, parser)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private redis-server and a rediss:// URL reaching it through a TLS proxy
    (the embedded binaries are built without TLS)."""
    from test_redis_helpers import tls_url

    from statekit.embedded import RedisServer

    server = RedisServer()
    server.start()
    try:
        with tls_url(server, tmp_path_factory.mktemp("tls")) as url:
            yield server, url
    finally:
        server.stop()


def test_near_cache_over_tls(tls_redis: Any) -> None:
    server, url = tls_redis
    near = Cache(url, near_cache=True)
    plain = Cache(server.url)
    assert near.near_ready()
    near.set("k", {"v": 1})
    assert near.get_many(["k"]) == {"k": {"v": 1}}
    assert _until(lambda: near.get("k") == {"v": 1} and near.stats()["near_hits"] > 0)
    plain.set("k", {"v": 2})  # written over the plain port, invalidated over TLS
    assert _until(lambda: near.get("k") == {"v": 2})
    assert near.incr("n") == 1


def test_a_flush_from_inside_a_locked_section_is_done_as_it_ends() -> None:
    """A finalizer (a dropped connection's) run by a garbage collection inside one of
    the near cache's locked sections flushes: it must not wait for the lock its own
    thread holds, and the copies still go, before the section lets anyone else in."""
    from statekit.cache.near import NearCache

    near: NearCache[str] = NearCache(10)
    near.set_active(True)
    near.store("a", "A", None, near.seq)
    seq = near.seq
    near._enter()
    try:
        near.flush()  # would deadlock on a plain lock
        assert "a" in near.data  # not yet: the section is not finished
    finally:
        near._leave()
    assert near.data == {} and near.seq > seq
    near.store("b", "B", None, seq)  # a read begun before the flush is refused
    assert "b" not in near.data
