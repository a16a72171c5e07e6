"""Review 19, a django-redis user switching to ``StatekitCache`` on a real Redis:

* ``incr``/``decr`` past Redis' signed 64-bit counters raised ``TypeError`` "the value
  of key ... is not an integer" for a value that is an integer; now ``OverflowError``
  naming the 64-bit range, the value left as it was (a value that is not an integer
  is still ``TypeError``, Django's contract);
* ``incr_version``/``decr_version`` (Django's, a ``get``, ``set``, ``delete``) gave
  the moved value the cache's default ``TIMEOUT``: a value set with ``timeout=None``
  expired 300 s later; it now keeps the time it had left, as django-redis';
* django-redis's ``OPTIONS`` keys (``CLIENT_CLASS``, ``PASSWORD``, ``SOCKET_TIMEOUT``
  ...) and Django's ``MAX_ENTRIES`` were a ``TypeError`` from
  ``_CacheCore.__init__()``; now an ``ImproperlyConfigured`` naming the key and what
  statekit takes instead;
* a ``LOCATION`` list (django-redis's and Django's form) was a ``ConfigError``
  "backend URL is empty"; a list of one URL is that URL, more than one (replicas) is
  an ``ImproperlyConfigured`` pointing to ``redis+sentinel://``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_statekit.cache import StatekitCache

I64_MAX = 2**63 - 1


def _cache(url: str, **params: Any) -> StatekitCache:
    return StatekitCache(url, params)


# -- incr past 64 bits ------------------------------------------------------------------


def test_incr_past_64_bits_is_an_overflow_and_keeps_the_value(redis_url: str) -> None:
    cache = _cache(redis_url)
    cache.set("top", I64_MAX)
    cache.set("bottom", -I64_MAX - 1)
    with pytest.raises(OverflowError, match="64-bit"):
        cache.incr("top")
    with pytest.raises(OverflowError, match="64-bit"):
        cache.decr("bottom")
    with pytest.raises(OverflowError, match="64-bit"):
        asyncio.run(cache.aincr("top", 10))
    with pytest.raises(OverflowError, match="64-bit"):
        cache.incr("top", ignore_key_check=True)
    assert (cache.get("top"), cache.get("bottom")) == (I64_MAX, -I64_MAX - 1)
    assert cache.decr("top") == I64_MAX - 1  # still a counter


def test_incr_of_an_integer_outside_64_bits_is_an_overflow(redis_url: str) -> None:
    cache = _cache(redis_url)
    cache.set("huge", 2**70)
    with pytest.raises(OverflowError, match="64-bit"):
        cache.incr("huge")
    assert cache.get("huge") == 2**70


@pytest.mark.parametrize("value", ["abc", 1.5, [1]])
def test_incr_of_a_value_that_is_not_an_integer_stays_a_type_error(redis_url: str, value: Any) -> None:
    cache = _cache(redis_url)
    cache.set("v", value)
    with pytest.raises(TypeError, match="not an integer"):
        cache.incr("v")
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")


# -- incr_version keeps the time left ------------------------------------------------------


def test_incr_version_keeps_a_value_that_never_expires(redis_url: str) -> None:
    cache = _cache(redis_url, TIMEOUT=300)
    cache.set("forever", {"a": 1}, timeout=None)
    assert cache.incr_version("forever") == 2
    assert cache.get("forever", version=2) == {"a": 1}
    assert cache.ttl("forever", version=2) is None  # was 300: the default TIMEOUT
    assert cache.has_key("forever") is False
    assert cache.decr_version("forever", version=2) == 1
    assert cache.ttl("forever") is None


def test_incr_version_keeps_the_time_left(redis_url: str) -> None:
    cache = _cache(redis_url, TIMEOUT=300)
    cache.set("short", 1, timeout=50)
    assert cache.incr_version("short", delta=3) == 4
    assert 0 < cache.ttl("short", version=4) <= 50
    assert asyncio.run(cache.aincr_version("short", version=4)) == 5
    assert 0 < cache.ttl("short", version=5) <= 50
    assert asyncio.run(cache.adecr_version("short", version=5)) == 4
    assert cache.get("short", version=4) == 1 and cache.get("short", version=5) is None


def test_incr_version_of_a_missing_key_is_a_value_error(redis_url: str) -> None:
    cache = _cache(redis_url)
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("nothing")
    with pytest.raises(ValueError, match="not found"):
        asyncio.run(cache.aincr_version("nothing"))


# -- OPTIONS carried over from django-redis ---------------------------------------------------


@pytest.mark.parametrize(("option", "hint"), [
    ("CLIENT_CLASS", "redis+sentinel://"),
    ("PASSWORD", "redis://:"),
    ("SOCKET_TIMEOUT", "socket_timeout="),
    ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout="),
    ("CONNECTION_POOL_KWARGS", "max_connections="),
    ("IGNORE_EXCEPTIONS", "on_error"),
    ("SERIALIZER", "serializer"),
    ("COMPRESSOR", "compress"),
    ("MAX_ENTRIES", "maxmemory"),
    ("CULL_FREQUENCY", "maxmemory"),
    ("PARSER_CLASS", "not a StatekitCache option"),
    ("near_cach", "not a StatekitCache option"),
])
def test_an_option_statekit_does_not_take_is_named(redis_url: str, option: str, hint: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=option) as raised:
        _cache(redis_url, OPTIONS={option: "x"})
    assert hint in str(raised.value)


def test_statekit_options_still_work(redis_url: str) -> None:
    cache = _cache(redis_url, OPTIONS={"on_error": "miss", "namespace": "review19-opts",
                                       "REVERSE_KEY_FUNCTION": None})
    cache.set("k", 1)
    assert cache.get("k") == 1


# -- LOCATION as a list -----------------------------------------------------------------------


def test_a_location_list_of_one_url_is_that_url(redis_url: str) -> None:
    for location in ([redis_url], (redis_url,)):
        cache = StatekitCache(location, {})  # type: ignore[arg-type]  # Django passes what settings hold
        cache.set("k", "v")
        assert cache.get("k") == "v"


@pytest.mark.parametrize("form", ["list", "comma", "semicolon"])
def test_a_location_of_several_servers_is_refused_with_the_way(redis_url: str, form: str) -> None:
    replica = redis_url.replace("/0", "/1")
    location: Any = {"list": [redis_url, replica], "comma": f"{redis_url},{replica}",
                     "semicolon": f"{redis_url};{replica}"}[form]
    with pytest.raises(ImproperlyConfigured, match="redis\\+sentinel://") as raised:
        StatekitCache(location, {})
    assert "2 servers" in str(raised.value)


def test_a_sentinel_host_list_is_still_one_url() -> None:
    """Commas between a sentinel URL's hosts are not several LOCATIONs (the URL's own
    check runs: no sentinel here, so only the parse is asked for)."""
    cache = StatekitCache("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster", {})
    assert cache.statekit is not None


# -- cache.lock() as redis-py's Lock ------------------------------------------------------------


def test_a_lock_not_acquired_in_time_is_redis_pys_lock_error(redis_url: str) -> None:
    """django-redis code catches ``redis.exceptions.LockError`` around ``with
    cache.lock(...)``; statekit's ``LockError`` still catches it too."""
    import redis.exceptions

    from statekit.errors import LockError

    cache = _cache(redis_url)
    holder = cache.lock("job", timeout=30)
    assert holder.acquire(blocking=False)
    try:
        with pytest.raises(redis.exceptions.LockError) as raised, cache.lock("job", blocking_timeout=0.05):
            pytest.fail("the lock was taken twice")
        assert isinstance(raised.value, LockError)
    finally:
        holder.release()


def test_locked_says_whether_anyone_holds_it_and_owned_whether_this_one_does(redis_url: str) -> None:
    """redis-py's ``locked()`` asks Redis whether any process holds the lock; ``owned()``
    whether this lock object (this thread) does."""
    cache = _cache(redis_url)
    holder, other = cache.lock("report", timeout=30), cache.lock("report", timeout=30)
    assert (holder.locked(), other.locked(), holder.owned()) == (False, False, False)
    assert holder.acquire(blocking=False)
    try:
        assert (holder.locked(), holder.owned()) == (True, True)
        assert (other.locked(), other.owned()) == (True, False)  # was False: another's hold unseen
    finally:
        holder.release()
    assert (holder.locked(), other.locked(), holder.owned()) == (False, False, False)


def test_releasing_a_lock_not_owned_is_redis_pys_not_owned_error(redis_url: str) -> None:
    import redis.exceptions

    from statekit.errors import LockError

    cache = _cache(redis_url)
    lock = cache.lock("once", timeout=30)
    with pytest.raises(redis.exceptions.LockNotOwnedError) as raised:
        lock.release()
    assert isinstance(raised.value, LockError)
    with lock:
        pass
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        lock.release()


# -- delete_many's count ------------------------------------------------------------------------


def test_delete_many_answers_how_many_it_deleted_as_django_redis(redis_url: str) -> None:
    """django-redis returns Redis' ``DEL`` count (``None`` for no keys, as Django's test
    of ``delete_many([])`` wants); it returned ``None`` always."""
    cache = _cache(redis_url)
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.delete_many(["a", "b", "missing"]) == 2
    assert asyncio.run(cache.adelete_many(["c", "missing"])) == 1
    assert cache.delete_many([]) is None and asyncio.run(cache.adelete_many([])) is None
    assert cache.get_many(["a", "b", "c"]) == {}


def test_on_error_miss_still_raises_for_a_counter_and_a_lock() -> None:
    """The row of docs/differences.md: with on_error="miss" (django-redis'
    IGNORE_EXCEPTIONS) a read misses and a write is dropped in an outage, but incr and a
    lock's acquire raise (django-redis' incr answers None). A port nothing listens on."""
    import socket

    from statekit.errors import BackendUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = _cache(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=1&socket_timeout=1&retries=0",
                   OPTIONS={"on_error": "miss", "failure_threshold": 100, "namespace": "review19-dead"})
    assert cache.get("k", "default") == "default" and cache.set("k", 1) is None
    with pytest.raises(BackendUnavailable):
        cache.incr("k", ignore_key_check=True)
    with pytest.raises(BackendUnavailable):
        cache.lock("job", blocking=False).acquire()


def test_a_made_key_past_1024_characters_is_refused(redis_url: str) -> None:
    """The row of docs/differences.md: Django's RedisCache and django-redis take a key of
    any length; statekit refuses a made key (``KEY_PREFIX:VERSION:key``) past 1024
    characters with InvalidKey, a ValueError, before anything is sent."""
    import warnings

    from statekit.errors import InvalidKey

    cache = _cache(redis_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Django's memcached-portability warning past 250
        cache.set("k" * (1024 - len(":1:")), 1)
        assert cache.get("k" * (1024 - len(":1:"))) == 1
        with pytest.raises(InvalidKey, match="1-1024 characters"):
            cache.set("k" * (1025 - len(":1:")), 1)


def test_incr_by_a_delta_outside_64_bits_is_an_overflow(redis_url: str) -> None:
    """Was TypeError "the value of key 'missing' is not an integer" for a missing key
    with ignore_key_check (Redis refuses the increment itself)."""
    cache = _cache(redis_url)
    cache.set("one", 1)
    for key, create in (("missing", True), ("missing", False), ("one", False)):
        with pytest.raises(OverflowError, match="64-bit"):
            cache.incr(key, 2**64, ignore_key_check=create)
        with pytest.raises(OverflowError, match="64-bit"):
            asyncio.run(cache.adecr(key, 2**63 + 1, ignore_key_check=create))
    assert cache.get("one") == 1 and cache.has_key("missing") is False
    assert cache.incr("one", I64_MAX - 1) == I64_MAX  # the largest delta that fits still counts
