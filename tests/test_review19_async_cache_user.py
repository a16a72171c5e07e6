"""Review (issue 19) of ``AsyncCache`` and ``cached`` as a cashews / aiocache user
tries them on a real event loop against a real Redis: each test is a defect found that
way, reproduced before its fix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import statekit.cache as cache_module
from statekit.cache import AsyncCache, Cache

pytestmark = pytest.mark.redis
T = TypeVar("T")
EARLY = 1e9


async def _closing(cache: AsyncCache, body: Callable[[AsyncCache], Awaitable[T]]) -> T:
    try:
        return await asyncio.wait_for(body(cache), 30)  # a guard against a hang, not a timing
    finally:
        await cache.aclose()


def _always_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """XFetch always draws an early refresh (with ``xfetch_beta=EARLY``): its random
    draw made tiny, -log(u) is huge."""
    monkeypatch.setattr(cache_module, "_random", lambda: 1e-300)


def test_a_failed_early_refresh_serves_the_fresh_value(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """XFetch picks a caller to recompute a value before it expires; when that compute
    raises, the caller gets the value it read, which is still fresh (cashews' early
    refresh never fails its caller either), and the error is logged. It raised: a
    random caller's request failed for a value the cache held and served to the
    others. The value stays, and a later refresh that works stores its result."""
    _always_early(monkeypatch)
    outcomes: list[Any] = ["v1", RuntimeError("the database is down"), "v2"]

    async def compute() -> str:
        await asyncio.sleep(0.01)  # a compute time: XFetch weighs the draw by it
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    async def body(c: AsyncCache) -> None:
        assert await c.get_or_set("report", compute, ttl=60) == "v1"
        with caplog.at_level(logging.WARNING, logger="statekit.cache"):
            assert await c.get_or_set("report", compute, ttl=60) == "v1"
        assert c.stats()["early_refreshes"] == 1
        assert "the database is down" in caplog.text and "report" in caplog.text
        assert await c.get("report") == "v1"
        assert await c.get_or_set("report", compute, ttl=60) == "v2"  # the next refresh stores
        assert await c.get("report") == "v2" and outcomes == []

    asyncio.run(_closing(AsyncCache(redis_url, namespace="early-error", xfetch_beta=EARLY), body))


def test_a_failed_early_refresh_of_a_cached_function_and_the_sync_cache(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through ``cached`` on an ``async def``, and on the sync ``Cache`` (one
    plan for both). A compute failing on a miss still raises (nothing to serve), and
    a failure other than an ``Exception`` (a cancellation) is not swallowed."""
    _always_early(monkeypatch)
    failing = {"on": False}

    async def body(c: AsyncCache) -> None:
        @c.cached(ttl=60)
        async def price(item: str) -> str:
            await asyncio.sleep(0.01)
            if failing["on"]:
                raise ConnectionError("pricing service down")
            return f"{item}: 4 EUR"  # (a str: an int is stored raw, with no early refresh)

        failing["on"] = True
        with pytest.raises(ConnectionError):
            await price("book")  # a miss: nothing to serve
        failing["on"] = False
        assert await price("book") == "book: 4 EUR"
        failing["on"] = True
        assert await price("book") == "book: 4 EUR"

        started = asyncio.Event()

        async def endless() -> str:
            started.set()
            await asyncio.sleep(3600)
            return "never"

        assert await c.get_or_set("title", lambda: asyncio.sleep(0.01, "seen"), ttl=60) == "seen"
        task = asyncio.ensure_future(c.get_or_set("title", endless, ttl=60))  # refreshes early
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(_closing(AsyncCache(redis_url, namespace="early-cached", xfetch_beta=EARLY), body))

    sync = Cache(redis_url, namespace="early-sync", xfetch_beta=EARLY)
    try:
        calls: list[int] = []

        def flaky() -> str:
            calls.append(1)
            if len(calls) > 1:
                raise OSError("down")
            return "kept"

        assert sync.get_or_set("k", flaky, ttl=60) == "kept"
        assert sync.get_or_set("k", flaky, ttl=60) == "kept" and len(calls) == 2
    finally:
        sync.close()


def test_a_key_template_naming_a_parameter_is_refused_at_decoration(redis_url: str) -> None:
    """cashews' ``key="user:{user_id}"`` is a template; ``cached(key=...)`` takes a
    prefix (the arguments' hash is added), so that string was kept as it is: every
    user's entry under ``user:{user_id}:<hash>``, and the cashews habit of
    invalidating with ``delete("user:42")`` deleted nothing, in silence. A prefix
    whose braces name a parameter is now a ValueError at decoration that says what
    to write instead (``key=`` as a function); braces naming no parameter (a Redis
    hash tag) are a prefix as before. Sync and async: one CachedFunction."""

    async def body(c: AsyncCache) -> None:
        template = r"key='user:\{user_id\}'\) is a prefix.*not a template: \{user_id\} names a parameter"
        with pytest.raises(ValueError, match=template):
            @c.cached(ttl=60, key="user:{user_id}")
            async def user(user_id: int) -> dict[str, int]:
                return {"id": user_id}

        with pytest.raises(ValueError, match=r"key=lambda user_id: f'user:\{user_id\}'"):
            c.cached(key="user:{user_id}")(_profile_by_id)
        with pytest.raises(ValueError, match=r"\{user\.id\}, \{other\} name parameters of _profile"):
            c.cached(key="u:{user.id}:{other}")(_profile)

        @c.cached(ttl=60, key=lambda user_id: f"user:{user_id}")
        async def by_id(user_id: int) -> dict[str, int]:
            return {"id": user_id}

        assert await by_id(42) == {"id": 42}
        assert await c.get("user:42") == {"id": 42}
        assert await c.delete("user:42") is True  # the cashews habit works with a key function

        @c.cached(ttl=60, key="{tenant-a}:report")  # no parameter of that name: a prefix
        async def report(day: str) -> str:
            return day

        assert await report("mon") == "mon" and report.key_for("mon").startswith("{tenant-a}:report:")

    asyncio.run(_closing(AsyncCache(redis_url, namespace="key-template"), body))
    sync = Cache(redis_url, namespace="key-template")
    try:
        with pytest.raises(ValueError, match="prefix"):
            sync.cached(key="item:{item_id}:{lang}")(lambda item_id, lang="en": (item_id, lang))
    finally:
        sync.close()


async def _profile(user: Any, other: int = 0) -> Any:
    return user


async def _profile_by_id(user_id: int) -> int:
    return user_id


def test_a_static_method_is_cached_by_the_async_cache_as_by_the_sync_one(redis_url: str) -> None:
    """``@cache.cached()`` above ``@staticmethod`` works for ``Cache``; for
    ``AsyncCache`` it raised TypeError saying the ``async def`` was not one ('wraps
    async functions; A.total is not'). It caches as the sync one does: called on the
    class or on an instance, no instance in the key. And ``Cache.cached`` took a
    static ``async def`` (it would cache the coroutine object): refused, as a bare
    one is."""
    calls: list[int] = []

    async def body(c: AsyncCache) -> None:
        class Prices:
            @c.cached(ttl=60)
            @staticmethod
            async def total(n: int) -> str:
                calls.append(n)
                return f"{n * 3} EUR"

        assert await Prices.total(2) == "6 EUR"
        assert await Prices().total(2) == "6 EUR" and await Prices().total(n=2) == "6 EUR"
        assert calls == [2]
        assert await Prices.total.invalidate(2) is True
        with pytest.raises(TypeError, match="async functions; .*plain is not"):
            class Wrong:
                @c.cached(ttl=60)
                @staticmethod
                def plain(n: int) -> int:
                    return n

    asyncio.run(_closing(AsyncCache(redis_url, namespace="static"), body))
    sync = Cache(redis_url, namespace="static")
    try:
        with pytest.raises(TypeError, match="cannot wrap the async function"):
            sync.cached(ttl=60)(staticmethod(_profile))
    finally:
        sync.close()


def test_get_or_set_given_a_coroutine_object_is_a_type_error_on_a_hit_too(redis_url: str) -> None:
    """``await cache.get_or_set("k", fetch())`` (the coroutine, not the function):
    on a hit it returned the stored value and left ``fetch()`` never awaited (a
    RuntimeWarning at garbage collection); on a miss it raised SerializationError
    ('cannot serialize a value of type coroutine'): a mistake that passes while the
    key is cached and fails in production on the first miss. A TypeError on every
    call now, saying what to pass, and the coroutine is closed (nothing warns)."""

    async def fetch() -> int:
        return 5

    async def body(c: AsyncCache) -> None:
        assert await c.get_or_set("k", fetch, ttl=60) == 5
        for key in ("k", "missing"):  # a hit, a miss
            coro = fetch()
            with pytest.raises(TypeError, match=r"not an awaitable \(coroutine\): pass fetch, not fetch\(\)"):
                await c.get_or_set(key, coro, ttl=60)
            assert coro.cr_frame is None  # closed: never run, no 'never awaited' warning
        future = asyncio.get_running_loop().create_future()
        with pytest.raises(TypeError, match="Future"):
            await c.get_or_set("missing", future)
        assert await c.get("missing", "absent") == "absent"
        assert await c.get_or_set("missing", lambda: fetch(), ttl=60) == 5  # a function returning one

    asyncio.run(_closing(AsyncCache(redis_url, namespace="coroutine-default"), body))


def test_get_many_and_delete_many_given_one_str_are_a_type_error(redis_url: str) -> None:
    """``get_many("user")`` / ``delete_many("user")`` (one key where the keys go, as
    cashews' ``get_many(*keys)`` / ``delete_many(*keys)`` are called): a str is an
    iterable of its characters, so get_many read the keys 'u', 's', 'e', 'r' and
    returned another key's value, and delete_many deleted key 'u' and left 'user'.
    A TypeError now (sync and async, one plan), nothing read or deleted."""

    async def body(c: AsyncCache) -> None:
        await c.set_many({"user": "ann", "u": "another key"})
        one = r"get_many\(\) takes an iterable of keys, not one str.*: pass \['user'\]"
        with pytest.raises(TypeError, match=one):
            await c.get_many("user")
        with pytest.raises(TypeError, match=r"delete_many\(\) takes an iterable of keys, not one str"):
            await c.delete_many("user")
        with pytest.raises(TypeError, match="not one bytes"):
            await c.get_many(b"user")  # type: ignore[arg-type]
        assert await c.get_many(["user", "u"]) == {"user": "ann", "u": "another key"}  # both kept
        assert await c.get_many(k for k in ("user",)) == {"user": "ann"}  # any other iterable
        assert await c.delete_many(("user",)) == 1

    asyncio.run(_closing(AsyncCache(redis_url, namespace="str-keys"), body))
    sync = Cache(redis_url, namespace="str-keys")
    try:
        sync.set("u", 1)
        with pytest.raises(TypeError, match="get_many"):
            sync.get_many("u1")
        with pytest.raises(TypeError, match="delete_many"):
            sync.delete_many("u1")
        assert sync.get("u") == 1
    finally:
        sync.close()


def test_a_cached_method_on_an_instance_is_a_fastapi_dependency_and_endpoint(redis_url: str) -> None:
    """``Depends(service.products)`` and ``app.get(...)(service.products)`` for a cached
    ``async def`` method: FastAPI reads a callable's signature and whether it is a
    coroutine function. The bound method (``BoundCachedFunction``) showed
    ``(*args, **kwargs)`` and a plain ``__call__``: FastAPI asked for query
    parameters 'args' and 'kwargs' (422) and would have run it in a thread, getting
    a coroutine back. It now has the method's signature without ``self`` and an
    ``async`` ``__call__`` (a plain bound ``async def`` method, as cashews' wrapper
    gives), and caches: the second request computes nothing."""
    import inspect

    import httpx
    from fastapi import Depends, FastAPI

    c = AsyncCache(redis_url, namespace="bound-method")
    calls: list[str] = []

    class Products:
        shop = "main"

        @c.cached(ttl=60, key=lambda self, category="all": f"products:{self.shop}:{category}")
        async def products(self, category: str = "all") -> list[str]:
            calls.append(category)
            return [self.shop, category]

    service = Products()
    assert str(inspect.signature(service.products)) == "(category: 'str' = 'all') -> 'list[str]'"
    assert inspect.iscoroutinefunction(type(service.products).__call__)
    app = FastAPI()

    @app.get("/dep")
    async def dep(items: list[str] = Depends(service.products)) -> list[str]:  # noqa: B008
        return items

    app.get("/direct")(service.products)

    async def requests(c: AsyncCache) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(2):
                got = await client.get("/dep", params={"category": "books"})
                assert got.json() == ["main", "books"], got.text
                got = await client.get("/direct", params={"category": "toys"})
                assert got.json() == ["main", "toys"], got.text

    asyncio.run(_closing(c, requests))
    assert calls == ["books", "toys"]


def test_cached_without_parentheses_is_a_type_error_at_decoration(redis_url: str) -> None:
    """``@cache.cached`` (no parentheses, as ``functools.cache`` is written) gave the
    function to ``cached()`` as its ttl and returned the inner decorator, in silence:
    the first call then failed with ``AttributeError: 'int' object has no attribute
    '__qualname__'`` (AsyncCache), ``ValueError: ttl=<function ...>`` or ``decorate()
    missing 1 required positional argument`` (Cache), far from the mistake. A
    TypeError at decoration (import) now, saying to add the parentheses."""
    c = AsyncCache(redis_url, namespace="bare")
    sync = Cache(redis_url, namespace="bare")
    try:
        bare = r"AsyncCache.cached\(\) was given the function .*answer as its ttl: write @cache.cached\(\)"
        with pytest.raises(TypeError, match=bare):
            @c.cached  # type: ignore[arg-type]
            async def answer(x: int) -> int:
                return x

        with pytest.raises(TypeError, match=r"with the parentheses"):
            @sync.cached  # type: ignore[arg-type]
            def report() -> str:
                return "r"

        @c.cached()  # with them: as before
        async def fine(x: int) -> int:
            return x

        assert asyncio.run(_closing(c, lambda _: fine(3))) == 3
    finally:
        sync.close()
