"""The shipped cache contract (statekit.testing.contracts.cache) run against every
backend: redis:// on every server line, memory://, Sentinel and Cluster; and what
the Redis backend promises beyond it: bulk calls chunked, clear() leaves nothing
behind."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest

from statekit.backends import load_backend
from statekit.cache import BACKENDS, Cache
from statekit.cache import redis as rediscache
from statekit.errors import ConfigError
from statekit.pytest_plugin import redis_command_calls, wait_for
from statekit.testing.contracts.cache import CacheContract, missing_methods


def test_every_builtin_backend_implements_the_contract() -> None:
    for scheme in BACKENDS:
        cls = load_backend("cache", scheme, BACKENDS)
        assert not missing_methods(cls), f"{scheme}:// {cls.__name__} lacks {missing_methods(cls)}"


def test_unknown_scheme_is_a_config_error_naming_the_entry_point_group() -> None:
    with pytest.raises(ConfigError, match="statekit.cache"):
        Cache("nosuch://x")
    with pytest.raises(ConfigError, match="cannot be used here"):
        Cache("s3://bucket/prefix")


class TestMemory(CacheContract):
    @pytest.fixture
    def make(self) -> Any:
        return lambda **kw: Cache("memory://contract", **kw)


@pytest.mark.redis
class TestRedis(CacheContract):
    @pytest.fixture
    def make(self, redis_line_url: str) -> Any:
        return lambda **kw: Cache(redis_line_url, **kw)

    @pytest.fixture
    def make_unreachable(self) -> Any:
        with socket.socket() as s:  # a free loopback port, closed again: nothing listens
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return lambda **kw: Cache(f"redis://127.0.0.1:{port}/0?retries=0", timeout=0.5, **kw)


@pytest.mark.redis
@pytest.mark.sentinel
class TestSentinel(CacheContract):
    @pytest.fixture
    def make(self, sentinel_url: str) -> Any:
        return lambda **kw: Cache(sentinel_url, **kw)

    @pytest.fixture
    def make_unreachable(self) -> Any:
        """Sentinels that are not there: the master cannot even be asked for."""
        from statekit.embedded import free_port

        url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster/0?retries=0"
        return lambda **kw: Cache(url, timeout=0.5, **kw)


@pytest.mark.redis
@pytest.mark.cluster
class TestCluster(CacheContract):
    @pytest.fixture
    def make(self, redis_cluster_url: str) -> Any:
        return lambda **kw: Cache(redis_cluster_url, **kw)


# -- beyond the contract: bounded work on a real server ------------------------------


@pytest.mark.redis
def test_clears_leave_nothing_behind(redis_line_url: str, redis_line_server: Any) -> None:
    """5 x (10,000 sets with no expiry + clear()) leaves at most 10,000 keys: the old
    generations are swept in the background (SCAN + UNLINK in chunks); other
    namespaces and locks are untouched."""
    cache = Cache(redis_line_url, prefix="sweep")
    other = cache.namespace("other")
    other.set("keep", 1, ttl=None)
    assert cache.lock("held", timeout=60).acquire(blocking=False)
    for round_ in range(5):
        cache.set_many({f"k{i}": round_ for i in range(10_000)}, ttl=None)
        assert cache.clear() is True
    with redis_line_server.client() as r:
        assert wait_for(lambda: r.dbsize() <= 10_000 and rediscache.sweeper.wait(0), 60,
                        "the sweep")
        assert r.dbsize() == 3  # the generation counter, the lock, the other namespace's key
    assert other.get("keep") == 1
    assert not cache.lock("held").acquire(blocking=False)


@pytest.mark.redis
@pytest.mark.cluster
def test_clear_sweeps_on_cluster(redis_cluster_url: str, redis_cluster: Any) -> None:
    cache = Cache(redis_cluster_url, prefix="sweep")
    for round_ in range(3):
        cache.set_many({f"k{i}": round_ for i in range(1000)}, ttl=None)
        cache.clear()
    cache.set("live", 1, ttl=None)

    def total() -> int:
        count = 0
        for node in redis_cluster.nodes:
            with node.client() as r:
                count += r.dbsize() if r.info("replication")["role"] == "master" else 0
        return count

    assert wait_for(lambda: total() == 2 and rediscache.sweeper.wait(0), 60, "the sweep")
    assert cache.get("live") == 1


@pytest.mark.redis
def test_big_bulk_calls_are_chunked(redis_line_url: str, redis_line_server: Any) -> None:
    """10,000 keys go as calls of at most CHUNK keys: counted on the server (one
    script call per chunk to write and delete, one MGET per chunk to read)."""
    cache = Cache(redis_line_url, prefix="chunks")
    cache.set("warm", 1)  # the script is loaded, the generation read
    chunks = math.ceil(10_000 / rediscache.CHUNK)
    with redis_line_server.client() as r:
        items = {f"k{i}": i for i in range(10_000)}
        r.config_resetstat()
        assert cache.set_many(items, ttl=60)
        calls = redis_command_calls(r)
        assert calls.get("evalsha") == chunks and calls.get("set") == 10_000
        r.config_resetstat()
        assert cache.get_many(list(items)) == items
        assert redis_command_calls(r).get("mget") == chunks
        r.config_resetstat()
        assert cache.delete_many(list(items)) == 10_000
        assert redis_command_calls(r).get("evalsha") == chunks


def test_memory_reset_empties_memory_caches() -> None:
    """Users' tests empty memory:// stores with statekit.backends.memory.reset()."""
    from statekit.backends import memory

    c = Cache("memory://reset-me")
    c.set("k", 1, ttl=None)
    c.namespace("other").set("k", 2)
    memory.reset()
    assert c.get("k") is None and c.namespace("other").get("k") is None


def test_memory_clears_leave_nothing_behind() -> None:
    """memory:// runs the same sweep (the same script, on fakeredis)."""
    from statekit.redis import memory_client

    cache = Cache("memory://sweep", prefix="sweep")
    for round_ in range(3):
        cache.set_many({f"k{i}": round_ for i in range(1200)}, ttl=None)
        cache.clear()
    cache.set("live", 1, ttl=None)
    assert rediscache.sweeper.wait(30)
    assert memory_client("sweep").dbsize() == 2  # the generation counter and "live"
    assert cache.get("live") == 1


def test_a_lost_generation_counter_stops_the_sweep() -> None:
    """A sweep for generations below N does not remove keys once the counter is
    below N again (FLUSHALL, eviction): those names are live."""
    from statekit.redis import memory_client

    cache = Cache("memory://lost-gen", prefix="lost")
    backend: Any = cache._be()
    cache.clear()
    cache.clear()  # generation 2
    assert rediscache.sweeper.wait(30)
    memory_client("lost-gen").flushall()  # the counter is gone: generation 0 again
    cache.set_many({f"k{i}": i for i in range(10)}, ttl=None)
    assert rediscache.sweep(backend, 2) == 0
    assert len(cache.get_many([f"k{i}" for i in range(10)])) == 10


def test_a_failed_sweep_is_logged_and_finished_by_the_next_clear(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from statekit.errors import BackendUnavailable
    from statekit.redis import memory_client

    real = rediscache.sweep

    def down(backend: Any, below: int) -> int:
        raise BackendUnavailable("Redis went away mid-sweep")

    cache = Cache("memory://failed-sweep", prefix="fs")
    cache.set_many({f"k{i}": i for i in range(100)}, ttl=None)
    monkeypatch.setattr(rediscache, "sweep", down)
    with caplog.at_level("WARNING", logger="statekit.cache"):
        cache.clear()
        assert rediscache.sweeper.wait(30)
    assert any("went away" in r.getMessage() for r in caplog.records)
    assert memory_client("failed-sweep").dbsize() == 101  # unreachable, still there
    monkeypatch.setattr(rediscache, "sweep", real)
    cache.clear()
    assert rediscache.sweeper.wait(30)
    assert memory_client("failed-sweep").dbsize() == 1  # every older generation went


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_inherits_no_sweep() -> None:
    """A gunicorn worker forked while the master sweeps starts with no sweep of its
    own (the master finishes it) and can sweep its own clears."""
    import os

    from statekit.redis import memory_client

    cache = Cache("memory://fork-sweep", prefix="fork")
    cache.set_many({f"k{i}": i for i in range(3000)}, ttl=None)
    cache.clear()
    pid = os.fork()
    if pid == 0:  # the child: idle at once, and a clear of its own is swept
        try:
            idle = rediscache.sweeper.wait(0)
            cache.set("mine", 1, ttl=None)
            cache.clear()
            done = rediscache.sweeper.wait(30)
            os._exit(0 if idle and done else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rediscache.sweeper.wait(30)
    assert memory_client("fork-sweep").dbsize() == 1
