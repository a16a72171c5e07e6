"""Django cache backend django_statekit.cache.StatekitCache: BaseCache behaviours
Django users rely on, cache_page and {% cache %} included."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import tests_django_urls
from django.core.cache import cache as default_cache
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.template import Context, Template
from django.test import Client
from django.urls import path
from django.views.decorators.cache import cache_page

from django_statekit.cache import StatekitCache

pytestmark = pytest.mark.redis

CALLS: list[str] = []


@cache_page(60)
def cached_view(request: HttpRequest) -> HttpResponse:
    CALLS.append("view")
    return HttpResponse(f"rendered {len(CALLS)}")


tests_django_urls.urlpatterns.append(path("statekit-cache/page/", cached_view))


def _caches(url: str) -> dict[str, Any]:
    return {
        "default": {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": url},
        "short": {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": url,
                  "TIMEOUT": None, "KEY_PREFIX": "short", "VERSION": 2,
                  "OPTIONS": {"namespace": "short", "serializer": "json"}},
        "memory": {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": "memory://dj"},
        "keyfunc": {"BACKEND": "django_statekit.cache.StatekitCache", "LOCATION": url,
                    "KEY_FUNCTION": "test_django_cache.reversed_key"},
    }


def reversed_key(key: str, key_prefix: str, version: int) -> str:
    return f"rev|{version}|{key[::-1]}"


@pytest.fixture
def dcache(redis_url: str, django_settings: Any) -> Iterator[StatekitCache]:
    django_settings.set(CACHES=_caches(redis_url))
    CALLS.clear()
    c = caches["default"]
    assert isinstance(c, StatekitCache)
    yield c


def test_basic_operations(dcache: StatekitCache) -> None:
    dcache.set("a", {"x": [1, 2]})
    assert dcache.get("a") == {"x": [1, 2]}
    assert dcache.get("missing", "dflt") == "dflt"
    assert dcache.add("a", 2) is False and dcache.add("b", 2) is True
    assert dcache.get_many(["a", "b", "c"]) == {"a": {"x": [1, 2]}, "b": 2}
    assert dcache.set_many({"c": 3, "d": 4}) == []
    assert dcache.has_key("c")
    dcache.delete_many(["c", "d"])
    assert not dcache.has_key("c")
    assert dcache.delete("a") is True and dcache.delete("a") is False
    assert dcache.touch("b", 10) is True and dcache.touch("zz", 10) is False
    assert default_cache.get("b") == 2  # django.core.cache.cache is this backend


def test_incr_decr_and_missing_raises_value_error(dcache: StatekitCache) -> None:
    dcache.set("n", 1)
    assert dcache.incr("n") == 2
    assert dcache.incr("n", 10) == 12
    assert dcache.decr("n", 2) == 10
    assert dcache.get("n") == 10
    with pytest.raises(ValueError):
        dcache.incr("missing")
    with pytest.raises(ValueError):
        dcache.decr("missing")
    assert dcache.get("missing") is None


def test_timeouts_have_djangos_meaning(dcache: StatekitCache) -> None:
    dcache.set("none", 1, timeout=None)
    assert dcache.statekit.ttl(dcache.make_key("none")) == math.inf
    dcache.set("zero", 1, timeout=0)  # 0: expire at once, i.e. do not cache
    assert dcache.get("zero") is None
    dcache.set("old", 1)
    dcache.set("old", 2, timeout=-5)
    assert dcache.get("old") is None
    assert dcache.add("z", 1, timeout=0) is True and dcache.get("z") is None
    left = dcache.statekit.ttl(dcache.make_key("default"))
    assert left is None
    dcache.set("default", 1)
    left = dcache.statekit.ttl(dcache.make_key("default"))
    assert left is not None and 0 < left <= 300
    short = caches["short"]
    short.set("k", 1)
    assert short.statekit.ttl(short.make_key("k")) == math.inf  # TIMEOUT None: never expires
    dcache.set("t", 1, timeout=100)
    dcache.touch("t", None)
    assert dcache.statekit.ttl(dcache.make_key("t")) == math.inf
    dcache.touch("t", 0)
    assert dcache.get("t") is None


def test_versions_prefix_and_key_function(dcache: StatekitCache) -> None:
    dcache.set("v", "one", version=1)
    dcache.set("v", "two", version=2)
    assert dcache.get("v") == "one" and dcache.get("v", version=2) == "two"
    assert dcache.incr_version("v") == 2
    assert dcache.get("v", version=2) == "one"
    assert dcache.get("v", version=1) is None
    short = caches["short"]
    short.set("v", "short")
    assert short.make_key("v") == "short:2:v"
    assert dcache.get("v", version=2) == "one"
    kf = caches["keyfunc"]
    kf.set("abc", 1)
    assert kf.make_key("abc") == "rev|1|cba"
    assert kf.statekit.get("rev|1|cba") == 1


def test_get_or_set(dcache: StatekitCache) -> None:
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "value"

    assert dcache.get_or_set("g", compute, 60) == "value"
    assert dcache.get_or_set("g", compute, 60) == "value"
    assert calls == [1]
    assert dcache.get("g") == "value"
    assert dcache.get_or_set("plain", "x") == "x"
    assert dcache.get_or_set("zero", compute, 0) == "value"
    assert dcache.get_or_set("count", 0) == 0
    assert dcache.incr("count") == 1
    assert dcache.get_or_set("count", 0) == 1


def test_clear_empties_only_this_namespace(dcache: StatekitCache, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as r:
        r.set("not-django", "keep")
        dcache.set("a", 1)
        caches["short"].set("a", 2)
        dcache.clear()
        assert dcache.get("a") is None
        assert caches["short"].get("a") == 2
        assert r.get("not-django") == b"keep"


def test_signed_pickle_default_and_forgery(dcache: StatekitCache, redis_url: str) -> None:
    dcache.set("obj", HttpResponse("hello"))
    assert dcache.get("obj").content == b"hello"
    import pickle

    with redis.Redis.from_url(redis_url) as r:
        raw_key = next(k for k in r.keys() if k.endswith(b":obj"))
        r.set(raw_key, b"\x01" + b"\x00" * 32 + pickle.dumps([1]))
    # refused, never unpickled, and a miss rather than an error (the cache heals)
    assert dcache.get("obj", "dflt") == "dflt"
    assert dcache.get_many(["obj"]) == {}
    assert dcache.get_or_set("obj", lambda: "recomputed") == "recomputed"
    assert dcache.get("obj") == "recomputed"
    assert dcache.statekit.stats()["undecodable"] >= 3


def test_entry_of_another_codec_is_a_miss(dcache: StatekitCache, redis_url: str) -> None:
    """A deploy that changes the codec (msgpack before, signed pickle now) or
    SECRET_KEY without a fallback: cache.get() answers the default, cache_page
    renders the page again instead of a 500."""
    pytest.importorskip("msgpack")
    from statekit.cache import Cache

    before = Cache(redis_url, prefix=dcache.statekit.prefix, namespace="django", serializer="msgpack")
    before.set(dcache.make_and_validate_key("k"), {"old": "codec"})
    assert dcache.get("k", "dflt") == "dflt"
    assert dcache.get_or_set("k", {"new": 1}) == {"new": 1}
    assert dcache.get("k") == {"new": 1}
    client = Client()
    assert client.get("/statekit-cache/page/").content == b"rendered 1"
    with redis.Redis.from_url(redis_url) as r:
        for raw_key in r.keys("*views.decorators.cache.cache_page*"):
            r.set(raw_key, b"\x01" + before._codec.dumps("old deploy"))
    page = client.get("/statekit-cache/page/")
    assert page.status_code == 200 and page.content == b"rendered 2"
    assert client.get("/statekit-cache/page/").content == b"rendered 2"


def test_cache_page(dcache: StatekitCache) -> None:
    client = Client()
    first = client.get("/statekit-cache/page/")
    second = client.get("/statekit-cache/page/")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"rendered 1"
    assert CALLS == ["view"]
    dcache.clear()
    assert client.get("/statekit-cache/page/").content == b"rendered 2"


def test_template_fragment_cache(dcache: StatekitCache) -> None:
    tpl = Template("{% load cache %}{% cache 60 sidebar user %}n={{ n }}{% endcache %}")
    assert tpl.render(Context({"n": 1, "user": "ann"})) == "n=1"
    assert tpl.render(Context({"n": 2, "user": "ann"})) == "n=1"
    assert tpl.render(Context({"n": 3, "user": "bob"})) == "n=3"
    from django.core.cache.utils import make_template_fragment_key

    dcache.delete(make_template_fragment_key("sidebar", ["ann"]))
    assert tpl.render(Context({"n": 4, "user": "ann"})) == "n=4"


def test_memory_location_for_tests(dcache: StatekitCache) -> None:
    mem = caches["memory"]
    mem.set("k", 1)
    assert mem.get("k") == 1 and dcache.get("k") is None
    assert mem.incr("k") == 2


async def _async_roundtrip(c: StatekitCache) -> Any:
    await c.aset("ak", "av")
    return await c.aget("ak")


def test_async_api(dcache: StatekitCache) -> None:
    import asyncio

    assert asyncio.run(_async_roundtrip(dcache)) == "av"


class Unpicklable:
    def __getstate__(self) -> Any:
        import pickle

        raise pickle.PickleError("no")


def test_unencodable_value_raises_pickle_error(dcache: StatekitCache) -> None:
    """Django's contract (and its own test suite): set/add of a value that cannot be
    pickled raises pickle.PickleError; statekit's SerializationError is kept too."""
    import pickle

    from statekit.errors import SerializationError

    for call in (lambda: dcache.set("u", Unpicklable()), lambda: dcache.add("u", Unpicklable()),
                 lambda: dcache.set_many({"u": Unpicklable()}),
                 lambda: dcache.get_or_set("u", Unpicklable)):
        with pytest.raises(pickle.PickleError) as caught:
            call()
        assert isinstance(caught.value, SerializationError)
    assert dcache.get("u") is None
    json_cache = caches["short"]  # the JSON codec: the same contract
    with pytest.raises(pickle.PickleError):
        json_cache.set("u", object())


def test_incr_of_a_non_integer_raises_type_error(dcache: StatekitCache) -> None:
    """As Django's LocMem, file and database caches do (None + 1)."""
    dcache.set("null", None)
    with pytest.raises(TypeError):
        dcache.incr("null")
    with pytest.raises(TypeError):
        dcache.decr("null")
    assert dcache.get("null") is None and dcache.has_key("null")


def test_async_methods_are_native() -> None:
    """Every async method Django's BaseCache defines is StatekitCache's own (no
    sync_to_async thread hop), except adecr_version, which Django builds on aincr_version."""
    import inspect

    from django.core.cache.backends.base import BaseCache

    names = [n for n, f in vars(BaseCache).items() if inspect.iscoroutinefunction(f)]
    inherited = sorted(n for n in names if n not in vars(StatekitCache))
    assert inherited == ["adecr_version"]  # aincr_version(key, -delta)


async def _parity(c: StatekitCache) -> list[tuple[str, Any, Any]]:
    """Each async method of BaseCache beside its sync twin, on fresh keys each."""
    out: list[tuple[str, Any, Any]] = []

    async def both(name: str, sync_args: tuple[Any, ...], async_args: tuple[Any, ...],
                   **kw: Any) -> None:
        sync_result = getattr(c, name)(*sync_args, **kw)
        out.append((name, sync_result, await getattr(c, "a" + name)(*async_args, **kw)))

    await both("set", ("s:set", 1), ("a:set", 1))
    await both("add", ("s:set", 2), ("a:set", 2))
    await both("add", ("s:add", 2), ("a:add", 2))
    await both("get", ("s:set",), ("a:set",))
    await both("get", ("s:missing", "dflt"), ("a:missing", "dflt"))
    await both("set", ("s:zero", 1), ("a:zero", 1), timeout=0)
    await both("has_key", ("s:zero",), ("a:zero",))
    await both("touch", ("s:set", 30), ("a:set", 30))
    await both("touch", ("s:nope", 30), ("a:nope", 30))
    await both("set_many", ({"s:m1": 1, "s:m2": [2]},), ({"s:m1": 1, "s:m2": [2]},))
    await both("get_many", (["s:m1", "s:m2", "s:m3"],), (["s:m1", "s:m2", "s:m3"],))
    await both("has_key", ("s:m1",), ("s:m1",))
    await both("incr", ("s:set",), ("a:set",))
    await both("decr", ("s:set", 5), ("a:set", 5))
    await both("get_or_set", ("s:gos", "v"), ("a:gos", "v"))
    await both("get_or_set", ("s:gos2", lambda: "computed"), ("a:gos2", lambda: "computed"))
    await both("incr_version", ("s:add",), ("a:add",))
    await both("decr_version", ("s:add",), ("a:add",), version=2)
    await both("delete", ("s:add",), ("a:add",))
    await both("delete", ("s:add",), ("a:add",))
    await both("delete_many", (["s:m1", "s:gos"],), (["s:m2", "a:gos"],))  # 2 each (the count)
    await both("clear", (), ())
    await both("get", ("s:set",), ("a:set",))
    await both("close", (), ())
    c.set("s:str", "text")
    for key in ("s:absent", "s:str"):  # ValueError (missing), TypeError (not an integer)
        errors: list[type[Exception]] = []
        for sync in (True, False):
            try:
                c.incr(key) if sync else await c.aincr(key)
            except Exception as e:  # noqa: BLE001 - compared below
                errors.append(type(e))
        out.append((f"incr {key}", errors[0], errors[-1]))
    return out


def test_async_methods_give_what_the_sync_ones_give(dcache: StatekitCache) -> None:
    import asyncio

    rows = asyncio.run(_parity(dcache))
    assert len(rows) == 26
    for name, sync_result, async_result in rows:
        assert sync_result == async_result, name


def test_sync_and_async_share_the_values(dcache: StatekitCache) -> None:
    import asyncio

    async def body() -> tuple[Any, Any]:
        dcache.set("shared", {"from": "sync"})
        seen = await dcache.aget("shared")
        await dcache.aset("shared2", {"from": "async"})
        return seen, dcache.get("shared2")

    assert asyncio.run(body()) == ({"from": "sync"}, {"from": "async"})


def test_a_loop_per_call_does_not_pile_up_connections(dcache: StatekitCache, redis_url: str) -> None:
    """Async views under WSGI run through async_to_sync, one event loop per call:
    the connections a closed loop left are closed when the next loop comes, so 30
    calls leave one loop's connections open, not 30."""
    from asgiref.sync import async_to_sync

    async def view() -> Any:
        await dcache.aset("per-loop", 1)
        return await dcache.aget("per-loop")

    admin = redis.Redis.from_url(redis_url)
    try:
        before = len(admin.client_list())
        for _ in range(30):
            assert async_to_sync(view)() == 1
        left = len(admin.client_list()) - before
    finally:
        admin.close()
    print(f"connections left after 30 async_to_sync calls: {left}")
    assert left <= 2
