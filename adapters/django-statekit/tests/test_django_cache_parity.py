"""django-redis's extras on ``StatekitCache`` (``ttl``, ``pttl``, ``expire``, ``persist``,
``lock``, ``delete_pattern``, ``iter_keys``, ``keys``, ``incr(ignore_key_check=)``,
``set(nx=, xx=)`` and their ``a``-twins), with django-redis's semantics, on a real Redis and
a real Redis Cluster: versions, ``KEY_PREFIX``, a custom ``KEY_FUNCTION``, namespaces
and generations, and near copies dropped in every process by ``delete_pattern``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from django_statekit.cache import StatekitCache
from statekit.cache.redis import sweeper
from statekit.cache.tools import lock_keeper
from statekit.errors import LockError

pytestmark = pytest.mark.redis

_names = itertools.count()


@pytest.fixture(autouse=True)
def _close_made_caches() -> Iterator[None]:
    """Each test's caches (a namespace of their own: a configuration of their own, kept
    by ``django_statekit.cache`` for the process) are closed after it: their clients and
    near-cache listeners would outlive the worker's servers and log redis-py's
    "Topology refresh failed" at its exit. And a test leaves no lock held in the
    process's lock keeper: a lock taken without a timeout by a thread that lives on
    (the test's) is extended every ``lock_ttl / 3`` for the process's life, through
    the Cluster after the worker stopped it (that log again, every extension)."""
    from django_statekit import cache as module

    before = set(module._shared)
    kept = set(lock_keeper._held)
    yield
    for key in set(module._shared) - before:
        sync, acache = module._shared.pop(key)
        sync.close()
        with contextlib.suppress(Exception):
            asyncio.run(acache.aclose())
    left = set(lock_keeper._held) - kept
    for hid in left:
        lock_keeper.release(hid)
    assert not left, "the test left a lock held: the lock keeper would extend it for good"


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "standalone" else "redis_cluster_url"))


def _client(url: str) -> Any:
    if url.startswith("redis+cluster://"):
        host, _, port = url.partition("://")[2].split(",")[0].partition(":")
        return redis.RedisCluster(host=host, port=int(port.partition("/")[0]))
    return redis.Redis.from_url(url)


def make(url: str, namespace: str | None = None, **params: Any) -> StatekitCache:
    """A cache of its own namespace (unless given): tests sharing a server stay apart."""
    options = {"namespace": namespace or f"parity{next(_names)}", **params.pop("OPTIONS", {})}
    return StatekitCache(url, {**params, "OPTIONS": options})


def prefixed(key: str, key_prefix: str, version: int) -> str:
    return f"{key_prefix}|v{version}|{key}"


def unprefixed(made: str) -> str:
    return made.split("|", 2)[2]


# -- ttl, pttl, expire, persist ------------------------------------------------------------


def test_ttl_and_pttl_as_django_redis(url: str) -> None:
    c = make(url)
    assert c.ttl("missing") == 0 and c.pttl("missing") == 0
    c.set("forever", 1, timeout=None)
    assert c.ttl("forever") is None and c.pttl("forever") is None
    c.set("short", 1, timeout=100)
    assert 90 <= (c.ttl("short") or 0) <= 100
    assert 90_000 < (c.pttl("short") or 0) <= 100_000
    c.set("v2", 1, timeout=50, version=2)  # another version is another key
    assert c.ttl("v2") == 0 and 40 <= (c.ttl("v2", version=2) or 0) <= 50
    assert c.get_or_set("computed", lambda: "x", timeout=30) == "x"
    assert 20 <= (c.ttl("computed") or 0) <= 30  # a get_or_set value: until due, as get() sees it


def test_expire_pexpire_expire_at_persist(url: str) -> None:
    c = make(url)
    assert c.expire("missing", 10) is False and c.persist("missing") is False
    c.set("k", "v", timeout=None)
    assert c.expire("k", 60) is True and 50 <= (c.ttl("k") or 0) <= 60
    assert c.expire("k", dt.timedelta(minutes=2)) is True and 110 <= (c.ttl("k") or 0) <= 120
    assert c.pexpire("k", 30_000) is True and 20_000 < (c.pttl("k") or 0) <= 30_000
    assert c.expire_at("k", time.time() + 50) is True and 40 <= (c.ttl("k") or 0) <= 50
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20)
    assert c.pexpire_at("k", when) is True and 10_000 < (c.pttl("k") or 0) <= 20_000
    assert c.pexpire_at("k", int((time.time() + 45) * 1000)) is True and 35 <= (c.ttl("k") or 0) <= 45
    assert c.persist("k") is True and c.ttl("k") is None and c.get("k") == "v"
    assert c.expire("k", 0) is True and c.get("k") is None  # as Redis' EXPIRE: gone
    c.set("k", "v")
    assert c.expire_at("k", time.time() - 5) is True and not c.has_key("k")
    c.set("d", 1, timeout=None)
    assert c.expire("d", c.default_timeout) is True and 290 <= (c.ttl("d") or 0) <= 300


def test_incr_ignore_key_check_and_set_nx(url: str) -> None:
    c = make(url)
    with pytest.raises(ValueError, match="not found"):
        c.incr("hits")
    assert c.incr("hits", 5, ignore_key_check=True) == 5 and c.ttl("hits") is None
    assert c.incr("hits", ignore_key_check=True) == 6 and c.decr("other", 2, ignore_key_check=True) == -2
    c.set("text", "abc")
    with pytest.raises(TypeError):
        c.incr("text", ignore_key_check=True)
    assert c.set("once", 1, nx=True) is True and c.set("once", 2, nx=True) is False and c.get("once") == 1
    assert c.set("once", 3, timeout=0, nx=True) is False and c.get("once") == 1  # as django-redis


def test_set_xx_stores_only_over_a_value_get_finds(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """django-redis' ``set(xx=True)``: stores only an existing key (in this version and
    generation), answers whether it stored; a ``get_or_set`` value past its timeout
    (kept to be served stale) is not there; a timeout <= 0 deletes, as django-redis."""
    import statekit.cache

    c = make(url)
    assert c.set("k", 1, xx=True) is False and c.get("k") is None and not c.has_key("k")
    c.set("k", 1, timeout=None)
    assert c.set("k", 2, timeout=100, xx=True) is True and c.get("k") == 2
    assert 90 <= (c.ttl("k") or 0) <= 100  # the new value's timeout
    assert c.set("k", 3, xx=True, version=2) is False and c.get("k", version=2) is None
    c.clear()
    assert c.set("k", 4, xx=True) is False and c.get("k") is None  # the cleared generation is not there
    assert c.get_or_set("g", lambda: "v", timeout=60) == "v"
    later = time.time() + 61
    monkeypatch.setattr(statekit.cache, "_time", lambda: later)
    assert c.get("g") is None and c.set("g", "w", xx=True) is False
    monkeypatch.undo()
    assert c.get("g") == "v"
    c.set("d", 1)
    assert c.set("d", 2, timeout=0, xx=True) is True and c.get("d") is None  # deleted, as django-redis
    assert c.set("d", 2, timeout=0, xx=True) is False
    with pytest.raises(ValueError, match="nx and xx"):
        c.set("k", 5, nx=True, xx=True)


def test_persist_is_false_without_an_expiry(url: str) -> None:
    """django-redis' ``persist`` is Redis' ``PERSIST``: ``True`` only if an expiry was removed."""
    c = make(url)
    c.set("k", "v", timeout=None)
    assert c.persist("k") is False and c.ttl("k") is None
    c.set("k", "v", timeout=60)
    assert c.persist("k") is True and c.ttl("k") is None and c.get("k") == "v"
    assert c.persist("k") is False and c.persist("missing") is False


def test_set_xx_drops_near_copies_everywhere(near_pair: tuple[StatekitCache, StatekitCache]) -> None:
    a, b = near_pair
    a.set("page", "one")
    near_a, near_b = a.statekit._near, b.statekit._near
    assert near_a is not None and near_b is not None
    for c, near in ((a, near_a), (b, near_b)):  # each keeps a copy
        assert _wait(lambda c=c, near=near: c.get("page") == "one" and c.make_key("page") in near.data)
    assert a.set("page", "two", xx=True) is True
    assert a.make_key("page") not in near_a.data and a.get("page") == "two"  # this process: at once
    assert _wait(lambda: b.get("page") == "two")


# -- lock -----------------------------------------------------------------------------------


def test_lock_on_the_made_key(url: str) -> None:
    c = make(url, KEY_PREFIX="shop", VERSION=3)
    other = make(url, namespace=c.statekit.namespace_name, KEY_PREFIX="shop", VERSION=3,
                 OPTIONS={"near_max_age": 59.0})  # another statekit cache: another process's view
    assert other.statekit is not c.statekit
    with c.lock("job", timeout=5):
        with contextlib.closing(_client(url)) as raw:
            assert raw.exists(f"{c.statekit.base}lock:u:shop:3:job") == 1  # the made key's lock
        assert other.lock("job", blocking=False).acquire() is False
        assert other.lock("job", blocking_timeout=0.05).acquire() is False
        held = other.lock("job", version=4)  # another version, another lock
        assert held.acquire(blocking=False) is True
        held.release()
    after = other.lock("job")  # no timeout: kept (extended) until released
    assert after.acquire(blocking=False) is True  # released on the way out
    after.release()


def test_lock_without_timeout_is_kept_while_held(url: str) -> None:
    """django-redis' default, no expiry: kept (extended every lock_ttl/3) until released."""
    c = make(url, OPTIONS={"lock_ttl": 1.5})
    lock = c.lock("report")
    assert lock.acquire() is True
    lease = c.statekit.lock_ttl
    deadline = time.monotonic() + 3 * lease  # three leases: lost twice over if not extended
    while time.monotonic() < deadline:
        assert c.lock("report", blocking=False).acquire() is False
        threading.Event().wait(lease / 4)
    lock.release()
    assert c.lock("report", timeout=1).acquire(blocking=False) is True
    with pytest.raises(LockError):
        lock.release()
    with pytest.raises(ValueError, match="thread_local"):
        c.lock("report", thread_local=False)


# -- delete_pattern, iter_keys, keys ----------------------------------------------------------


def test_delete_pattern_in_this_version_prefix_and_namespace(url: str) -> None:
    c = make(url, KEY_PREFIX="sh*p")
    ns = c.statekit.namespace_name
    plain = make(url, namespace=ns, KEY_PREFIX="shop")  # '*' in the prefix matches only itself
    v2 = make(url, namespace=ns, KEY_PREFIX="sh*p", VERSION=2)
    elsewhere = make(url, KEY_PREFIX="sh*p")  # another namespace
    n = 1205  # pages of 100 names, every master on a cluster
    c.set_many({f"foo_{i}": i for i in range(n)})
    c.set_many({"bar_1": 1, "food": 2})
    for other in (plain, v2, elsewhere):
        other.set_many({"foo_1": "kept", "foo_x": "kept"})
    assert len(c.keys("foo_*")) == n and sorted(c.keys("foo_11?")) == [f"foo_11{i}" for i in range(10)]
    assert c.delete_pattern("foo_*", itersize=100) == n
    assert c.keys("foo_*") == [] and c.get("foo_7") is None
    assert sorted(c.iter_keys("*")) == ["bar_1", "food"]
    for other in (plain, v2, elsewhere):
        assert other.get_many(["foo_1", "foo_x"]) == {"foo_1": "kept", "foo_x": "kept"}
    assert c.delete_pattern("foo_*", version=2) == 2 and v2.keys("*") == []
    assert c.delete_pattern("foo_[1]", prefix="shop") == 1 and plain.keys("*") == ["foo_x"]
    assert c.delete_pattern("nothing*") == 0


def test_pattern_operations_see_the_current_generation_only(url: str) -> None:
    c = make(url)
    c.set_many({"a1": 1, "a2": 2})
    c.clear()
    assert sweeper.wait(30)  # the background sweep of generation 0 is over: what is written now stays
    old = f"{c.statekit._backend.head}0:{c.make_key('a3')}"  # a name of the cleared generation
    with contextlib.closing(_client(url)) as raw:
        raw.set(old, b"\x01\"stale\"")
        c.set("a4", 4)
        assert c.keys("a*") == ["a4"]
        assert c.delete_pattern("a*") == 1 and raw.get(old) is not None


def test_custom_key_function_and_reverse(url: str) -> None:
    c = make(url, KEY_FUNCTION=prefixed, KEY_PREFIX="p", VERSION=7,
             OPTIONS={"REVERSE_KEY_FUNCTION": f"{__name__}.unprefixed"})
    c.set_many({"user:1": 1, "user:2": 2, "order:1": 3})
    assert sorted(c.keys("user:*")) == ["user:1", "user:2"]
    assert c.delete_pattern("user:*") == 2 and list(c.iter_keys("*")) == ["order:1"]
    bare = make(url, namespace=c.statekit.namespace_name, KEY_FUNCTION=prefixed, KEY_PREFIX="p", VERSION=7)
    with pytest.raises(ImproperlyConfigured, match="REVERSE_KEY_FUNCTION"):
        bare.keys("*")
    assert bare.delete_pattern("order:*") == 1 and c.get("order:1") is None


def _wait(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


@pytest.fixture
def near_pair(url: str) -> Iterator[tuple[StatekitCache, StatekitCache]]:
    """Two caches of one namespace with near caches and listeners of their own (as two
    processes have)."""
    a = make(url, OPTIONS={"near_cache": 100})
    b = make(url, namespace=a.statekit.namespace_name, OPTIONS={"near_cache": 100, "near_max_age": 59.0})
    assert a.statekit is not b.statekit
    assert a.statekit.near_ready(10) and b.statekit.near_ready(10)
    yield a, b


def test_delete_pattern_drops_near_copies_everywhere(near_pair: tuple[StatekitCache, StatekitCache]) -> None:
    a, b = near_pair
    a.set_many({"page_1": "one", "page_2": "two", "menu": "m"})
    for c in (a, b):
        assert c.get("page_1") == "one" and c.get("page_2") == "two" and c.get("menu") == "m"
    made = [a.make_key(k) for k in ("page_1", "page_2", "menu")]
    near_a, near_b = a.statekit._near, b.statekit._near
    assert near_a is not None and near_b is not None
    for c, near in ((a, near_a), (b, near_b)):  # a copy is kept by a read no invalidation overtook
        assert _wait(lambda c=c, near=near: all(c.get(k) and c.make_key(k) in near.data
                                                for k in ("page_1", "page_2", "menu")))
    hits = b.statekit.counters.near_hits  # served locally, once the listener is not behind (under load)
    assert _wait(lambda: b.get("page_1") == "one" and b.statekit.counters.near_hits > hits)
    assert a.delete_pattern("page_*") == 2
    assert a.get("page_1") is None and a.get("page_2") is None  # this process: at once
    assert _wait(lambda: made[0] not in near_b.data and made[1] not in near_b.data)  # the other: invalidated
    assert b.get("page_1") is None and b.get("page_2") is None and b.get("menu") == "m"


# -- the async twins ------------------------------------------------------------------------


def test_async_twins(url: str) -> None:
    c = make(url, KEY_PREFIX="as")

    async def body() -> None:
        assert await c.attl("k") == 0
        await c.aset("k", "v", timeout=None)
        assert await c.attl("k") is None and await c.apttl("k") is None
        assert await c.aexpire("k", 60) is True and 50 <= (await c.attl("k") or 0) <= 60
        assert await c.apexpire("k", 15_000) is True and 5_000 < (await c.apttl("k") or 0) <= 15_000
        assert await c.aexpire_at("k", time.time() + 30) is True and 20 <= (await c.attl("k") or 0) <= 30
        assert await c.apexpire_at("k", int(time.time() * 1000) + 20_000) is True
        assert await c.apersist("k") is True and await c.attl("k") is None
        assert await c.aset("n", 1, nx=True) is True and await c.aset("n", 2, nx=True) is False
        assert await c.aset("n", 3, timeout=None, xx=True) is True
        assert await c.aset("absent", 1, xx=True) is False
        assert await c.apersist("n") is False and await c.aget("n") == 3  # no expiry to remove
        assert await c.aincr("fresh", 3, ignore_key_check=True) == 3
        await c.aset_many({f"item_{i}": i for i in range(250)})
        assert len(await c.akeys("item_*")) == 250
        found = [k async for k in c.aiter_keys("item_1?", itersize=50)]
        assert sorted(found) == [f"item_1{i}" for i in range(10)]
        assert await c.adelete_pattern("item_*", itersize=50) == 250
        assert await c.akeys("item_*") == []

    asyncio.run(body())
    assert c.get("k") == "v" and sorted(c.keys("*")) == ["fresh", "k", "n"]
