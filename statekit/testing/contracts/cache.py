"""The cache contract suite, shipped: every cache backend passes it.

A backend's test module subclasses :class:`CacheContract` and provides the
``make`` fixture (a callable returning a new :class:`~statekit.cache.Cache` on the
backend under test, with ``Cache``'s keyword arguments passed on)::

    from statekit.cache import Cache
    from statekit.testing.contracts.cache import CacheContract

    class TestSQLiteCache(CacheContract):
        @pytest.fixture
        def make(self, tmp_path):
            return lambda **kw: Cache(f"sqlite://{tmp_path}/cache.db", **kw)

statekit runs it on ``redis://`` for every server line, on Sentinel, Cluster and
``memory://``. It covers get/set/add/replace/delete, the bulk calls, incr, touch, persist, ttl,
locks, clear, stampede protection, codecs, an undecodable entry read as a miss and
the typed errors. Needs pytest.
"""

from __future__ import annotations

import datetime as dt
import decimal
import inspect
import math
import time
import uuid
from typing import Any

import pytest

from ...cache import Cache
from ...cache.protocol import CacheBackend
from ...errors import BackendUnavailable, ConfigError, InvalidKey, LockError, SerializationError

__all__ = ["CacheContract", "missing_methods", "required_methods"]


def required_methods() -> list[str]:
    """The :class:`~statekit.cache.protocol.CacheBackend` methods a backend must
    implement (those whose base version raises ``NotImplementedError``)."""
    return [name for name, fn in vars(CacheBackend).items()
            if inspect.isfunction(_func(fn)) and "NotImplementedError" in inspect.getsource(_func(fn))]


def missing_methods(backend: type[CacheBackend]) -> list[str]:
    """The required methods *backend* does not implement."""
    return [name for name in required_methods()
            if _func(getattr(backend, name)) is _func(getattr(CacheBackend, name))]


def _func(method: Any) -> Any:
    return getattr(method, "__func__", method)  # a classmethod's (or a bound method's) function


class CacheContract:
    """The cache contract. A subclass provides the ``make`` fixture: a callable that
    returns a new :class:`~statekit.cache.Cache` on the backend under test (the same
    store every time), passing its keyword arguments on to ``Cache``; the store is
    empty when the test starts. A backend that can be unreachable also overrides
    ``make_unreachable`` (the outage tests are skipped without it)."""

    @pytest.fixture
    def make_unreachable(self) -> Any:
        """Like ``make``, but the backend cannot be reached (a closed port, say).
        Override it; the default skips the outage tests."""
        pytest.skip("this suite gives no unreachable backend (override make_unreachable)")

    def test_outage_raises_backend_unavailable(self, make_unreachable: Any) -> None:
        """With ``on_error="raise"`` every call is a BackendUnavailable, in bounded
        time (the backend's timeouts), never another exception or a hang."""
        c: Cache = make_unreachable(failure_threshold=100)
        calls: list[Any] = [lambda: c.get("k"), lambda: c.set("k", 1), lambda: c.get_many(["a", "b"]),
                            lambda: c.set_many({"a": 1}), lambda: c.incr("n"), lambda: c.delete("k"),
                            lambda: c.add("k", 1), lambda: c.replace("k", 1), lambda: c.persist("k"),
                            lambda: c.ttl("k"), lambda: c.clear(),
                            lambda: c.get_or_set("g", lambda: 1), lambda: c.lock("l").acquire(blocking=False)]
        for call in calls:
            with pytest.raises(BackendUnavailable):
                call()
        assert c.stats()["errors"] >= len(calls) - 1

    def test_outage_with_miss_policy_degrades_and_opens_the_breaker(self, make_unreachable: Any) -> None:
        """With ``on_error="miss"`` reads return the default, writes are dropped
        (``False``), counters still raise, get_or_set computes without storing; past
        ``failure_threshold`` failures the breaker opens (calls fail without I/O)."""
        c: Cache = make_unreachable(on_error="miss", failure_threshold=2, breaker_reset=600)
        assert c.get("k", "dflt") == "dflt"
        assert c.set("k", 1) is False
        assert c.get_many(["a"]) == {}
        assert c.delete("k") is False
        assert c.get_or_set("g", lambda: "computed") == "computed"
        with pytest.raises(BackendUnavailable):
            c.incr("n")
        stats = c.stats()
        assert stats["breaker_state"] == 2 and stats["breaker_opened"] == 1
        assert stats["dropped_writes"] >= 1

    @pytest.fixture
    def cache(self, make: Any) -> Cache:
        c: Cache = make()
        return c

    def test_backend_implements_every_required_method(self, cache: Cache) -> None:
        backend = type(cache._be())
        assert not missing_methods(backend), f"{backend.__name__} lacks {missing_methods(backend)}"

    def test_undecodable_entry_is_a_miss_and_heals(self, cache: Cache) -> None:
        """Bytes this cache cannot decode (another codec or key wrote them, or they
        were truncated) are a miss on every read path, counted, and get_or_set
        replaces them."""
        raw = cache._be()
        raw.set("bad", b"\x01{not json", None)
        raw.set("cut", b"\x02\x00", None)
        assert cache.get("bad", "dflt") == "dflt"
        assert cache.get_many(["bad", "cut"]) == {}
        assert cache.ttl("cut") is None
        assert cache.stats()["undecodable"] >= 3
        assert cache.get_or_set("bad", lambda: "healed", ttl=60) == "healed"
        assert cache.get("bad") == "healed"

    def test_unencodable_value_raises_before_any_write(self, cache: Cache) -> None:
        with pytest.raises(SerializationError):
            cache.set("k", object())
        with pytest.raises(SerializationError):
            cache.set_many({"a": 1, "k": object()})
        assert cache.get_many(["k", "a"]) == {}

    def test_big_bulk_calls(self, cache: Cache) -> None:
        """More keys than one backend call carries (the Redis backend chunks them):
        every key is written, read and deleted."""
        items = {f"b{i}": i for i in range(1234)}
        assert cache.set_many(items, ttl=60) is True
        assert cache.get_many([*items, "absent"]) == items
        assert cache.delete_many([*items, "absent"]) == len(items)
        assert cache.get_many(list(items)) == {}

    def test_clear_then_reuse_many_times(self, cache: Cache) -> None:
        for round_ in range(3):
            cache.set_many({f"k{i}": round_ for i in range(20)}, ttl=None)
            assert cache.get_many(["k0", "k19"]) == {"k0": round_, "k19": round_}
            assert cache.clear() is True
            assert cache.get_many([f"k{i}" for i in range(20)]) == {}

    def test_roundtrip_types(self, cache: Cache) -> None:
        values: list[Any] = [
            "text é", b"\x00bytes", 0, -7, 2**40, 1.5, True, False, [1, "a"], {"a": {"b": [1]}},
            (1, 2), {1, 2}, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            decimal.Decimal("1.10"), uuid.UUID(int=5), {"\x00": 1}, {1: "int key"},
        ]
        for i, v in enumerate(values):
            assert cache.set(f"k{i}", v) is True
        for i, v in enumerate(values):
            got = cache.get(f"k{i}")
            assert got == v and type(got) is type(v)

    def test_get_missing_returns_default(self, cache: Cache) -> None:
        assert cache.get("nope") is None
        marker = object()
        assert cache.get("nope", marker) is marker
        cache.set("none", None)
        assert cache.get("none", marker) is None

    def test_ttl_and_expiry(self, cache: Cache) -> None:
        cache.set("short", 1, ttl=0.05)
        cache.set("forever", 1, ttl=None)
        cache.set("default", 1)
        left = cache.ttl("default")
        assert left is not None and 0 < left <= 300
        assert cache.ttl("forever") == math.inf
        assert cache.ttl("missing") is None
        cache.set("td", 1, ttl=dt.timedelta(seconds=30))
        td_left = cache.ttl("td")
        assert td_left is not None and 0 < td_left <= 30
        time.sleep(0.12)
        assert cache.get("short") is None
        assert not cache.has("short")

    @pytest.mark.parametrize("bad", [0, -1, "10", float("inf"), True])
    def test_bad_ttl(self, cache: Cache, bad: Any) -> None:
        with pytest.raises(ValueError):
            cache.set("k", 1, ttl=bad)

    def test_add_is_atomic_first_writer_wins(self, cache: Cache) -> None:
        assert cache.add("a", 1) is True
        assert cache.add("a", 2) is False
        assert cache.get("a") == 1
        cache.add("e", 1, ttl=0.05)
        time.sleep(0.12)
        assert cache.add("e", 2) is True
        assert cache.get("e") == 2

    def test_delete(self, cache: Cache) -> None:
        cache.set("d", 1)
        assert cache.delete("d") is True
        assert cache.delete("d") is False
        assert cache.get("d") is None

    def test_many(self, cache: Cache) -> None:
        items = {f"m{i}": {"i": i} for i in range(50)}
        assert cache.set_many(items, ttl=60) is True
        got = cache.get_many([*items, "absent"])
        assert got == items
        assert cache.get_many([]) == {}
        assert cache.delete_many(["m0", "m1", "absent"]) == 2
        assert cache.delete_many([]) == 0
        assert "m0" not in cache.get_many(["m0", "m2"])

    def test_incr_decr(self, cache: Cache) -> None:
        assert cache.incr("n") == 1
        assert cache.incr("n", 10) == 11
        assert cache.decr("n", 2) == 9
        assert cache.get("n") == 9
        cache.set("i", 41)
        assert cache.incr("i") == 42
        with pytest.raises(KeyError):
            cache.incr("missing", create=False)
        assert not cache.has("missing")
        cache.set("s", "text")
        with pytest.raises(ValueError):
            cache.incr("s")
        cache.incr("t", ttl=60)
        t_left = cache.ttl("t")
        assert t_left is not None and 0 < t_left <= 60

    def test_touch(self, cache: Cache) -> None:
        cache.set("t", 1, ttl=5)
        assert cache.touch("t", ttl=100) is True
        left = cache.ttl("t")
        assert left is not None and 5 < left <= 100
        assert cache.touch("t", ttl=None) is True
        assert cache.ttl("t") == math.inf
        assert cache.touch("missing") is False

    def test_replace_stores_only_over_a_value_get_finds(self, cache: Cache,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """replace() (django-redis' ``set(xx=True)``) stores only where get() finds a
        value, with the new value's ttl, and answers whether it stored: a missing or
        expired key, one of a cleared generation, or a get_or_set value past its ttl
        (kept only to be served stale) is not there."""
        import statekit.cache

        assert cache.replace("r", 1) is False and cache.get("r") is None and not cache.has("r")
        cache.set("r", 1, ttl=5)
        assert cache.replace("r", 2, ttl=100) is True and cache.get("r") == 2
        left = cache.ttl("r")
        assert left is not None and 5 < left <= 100
        assert cache.replace("r", {"x": 3}, ttl=None) is True and cache.ttl("r") == math.inf
        assert cache.get("r") == {"x": 3}
        cache.set("gone", 1, ttl=0.05)
        time.sleep(0.12)
        assert cache.replace("gone", 2) is False and cache.get("gone") is None
        cache.set("c", 1)
        cache.clear()
        assert cache.replace("c", 2) is False and cache.get("c") is None
        assert cache.get_or_set("g", lambda: "v", ttl=60, stale_ttl=30) == "v"
        assert cache.replace("g", "w", ttl=60) is True and cache.get("g") == "w"
        assert cache.get_or_set("s", lambda: "v", ttl=60, stale_ttl=30) == "v"
        later = time.time() + 61
        monkeypatch.setattr(statekit.cache, "_time", lambda: later)
        assert cache.get("s") is None and cache.replace("s", "x") is False
        monkeypatch.undo()
        assert cache.get("s") == "v"  # not written: the stale copy is still the one stored

    def test_replace_and_get_agree_to_the_last_bit_of_the_expiry(self, cache: Cache,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """At the instant a get_or_set value's lifetime ends, get() misses and
        replace() does not store; one step (a float's last bit) before, both see it."""
        import statekit.cache
        from statekit.cache.protocol import ENVELOPE

        assert cache.get_or_set("e", lambda: "v", ttl=60, stale_ttl=30) == "v"
        data = cache._be().get("e")
        assert data is not None and data[0] == 2
        end = ENVELOPE.unpack_from(data, 1)[0]
        monkeypatch.setattr(statekit.cache, "_time", lambda: end)
        assert cache.get("e") is None and cache.replace("e", "at the end") is False
        before = math.nextafter(end, -math.inf)
        monkeypatch.setattr(statekit.cache, "_time", lambda: before)
        assert cache.get("e") == "v" and cache.replace("e", "just before") is True
        assert cache.get("e") == "just before"

    def test_persist_answers_whether_it_removed_an_expiry(self, cache: Cache) -> None:
        """persist() as Redis' PERSIST: ``True`` only if the key had an expiry (now
        removed); ``False`` for a missing key or one that had none."""
        assert cache.persist("p") is False
        cache.set("p", 1, ttl=60)
        assert cache.persist("p") is True and cache.ttl("p") == math.inf and cache.get("p") == 1
        assert cache.persist("p") is False and cache.get("p") == 1
        cache.set("forever", 1, ttl=None)
        assert cache.persist("forever") is False and cache.ttl("forever") == math.inf
        cache.set("c", 1, ttl=60)
        cache.clear()
        assert cache.persist("c") is False

    def test_persist_makes_a_get_or_set_value_permanent(self, cache: Cache,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """persist() of a value get_or_set stored means what it means for any key
        (django-redis: the key never expires): it is never due again, neither stale nor
        recomputed, however late it is read; a second persist has nothing to remove. A
        value past its ttl, kept only to be served stale, is not there for persist as
        for get(): left as it is (``False``)."""
        import statekit.cache

        calls: list[int] = []

        def compute() -> str:
            calls.append(1)
            return "v"

        assert cache.get_or_set("g", compute, ttl=60, stale_ttl=30) == "v"
        assert cache.get_or_set("s", lambda: "old", ttl=60, stale_ttl=30) == "old"
        assert cache.persist("g") is True and cache.ttl("g") == math.inf
        assert cache.persist("g") is False  # nothing left to remove
        later = time.time() + 86400
        monkeypatch.setattr(statekit.cache, "_time", lambda: later)
        assert cache.get("g") == "v" and cache.has("g") and cache.ttl("g") == math.inf
        assert cache.get_many(["g"]) == {"g": "v"}
        assert cache.get_or_set("g", compute, ttl=60) == "v" and calls == [1]
        assert cache.get("s") is None and cache.persist("s") is False  # past its ttl: not there
        monkeypatch.undo()
        assert cache.get("s") == "old" and cache.ttl("s") is not None
        stored = cache._be().get_with_ttl("s")
        assert stored.ttl_ms is not None  # still expires: persist left it alone

    def test_touch_moves_a_get_or_set_values_deadline(self, cache: Cache,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """touch() of a value get_or_set stored gives it a new lifetime, as for any key
        (django-redis' ``expire``): ``touch(key, t)`` makes it due *t* seconds from now
        (ttl() says so; it is kept to be served stale as long after that as before),
        ``touch(key, None)`` makes it permanent as persist() does. A value past its ttl,
        kept only to be served stale, is not there for touch as for get(): ``False``,
        left as it is."""
        import statekit.cache

        calls: list[int] = []

        def compute() -> str:
            calls.append(1)
            return "v"

        assert cache.get_or_set("g", compute, ttl=60, stale_ttl=30) == "v"
        assert cache.touch("g", ttl=600) is True
        left = cache.ttl("g")
        assert left is not None and 540 < left <= 600
        kept = cache._be().get_with_ttl("g").ttl_ms
        # its stale window kept (30 s, and the time between its encoding and its SET)
        assert kept is not None and 600_000 < kept <= 640_000
        later = time.time() + 300
        monkeypatch.setattr(statekit.cache, "_time", lambda: later)
        assert cache.get("g") == "v" and cache.get_or_set("g", compute, ttl=60) == "v" and calls == [1]
        assert cache.touch("g", ttl=None) is True and cache.ttl("g") == math.inf
        assert cache._be().get_with_ttl("g").ttl_ms is None
        monkeypatch.setattr(statekit.cache, "_time", lambda: later + 86400)
        assert cache.get("g") == "v" and cache.has("g") and cache.ttl("g") == math.inf
        assert cache.get_or_set("g", compute, ttl=60) == "v" and calls == [1]
        assert cache.persist("g") is False  # touch(None) left nothing to remove
        assert cache.touch("g", ttl=60) is True  # a permanent one can be given a lifetime again
        left = cache.ttl("g")
        assert left is not None and 0 < left <= 60
        monkeypatch.undo()
        assert cache.get_or_set("s", lambda: "old", ttl=60, stale_ttl=30) == "old"
        late = time.time() + 61
        monkeypatch.setattr(statekit.cache, "_time", lambda: late)
        assert cache.touch("s", ttl=600) is False and cache.touch("s", ttl=None) is False
        assert cache.get("s") is None  # past its ttl: not there, not revived
        monkeypatch.undo()
        assert cache.get("s") == "old"
        left = cache.ttl("s")
        assert left is not None and left <= 60  # its deadline untouched
        stored = cache._be().get_with_ttl("s").ttl_ms
        assert stored is not None and stored <= 90_000  # and its TTL

    def test_touch_gives_a_permanent_get_or_set_value_a_stale_window(self, make: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """A get_or_set value made permanent (persist(), touch(key, None)), then given a
        lifetime again by ``touch(key, t)``, is kept past its new deadline to be served
        stale, as every get_or_set value: for the cache's ``stale_ttl`` (the window it
        was stored with is not kept once it is permanent)."""
        import statekit.cache

        cache: Cache = make(stale_ttl=7)
        for key, permanent in (("p", cache.persist), ("n", lambda k: cache.touch(k, ttl=None))):
            assert cache.get_or_set(key, lambda: "v", ttl=60, stale_ttl=30) == "v"
            assert permanent(key) is True and cache._be().get_with_ttl(key).ttl_ms is None
            assert cache.touch(key, ttl=600) is True
            left = cache.ttl(key)
            assert left is not None and 590 < left <= 600
            kept = cache._be().get_with_ttl(key).ttl_ms
            assert kept is not None and 600_000 < kept <= 607_000, kept  # the cache's 7 s window
        later = time.time() + 601
        monkeypatch.setattr(statekit.cache, "_time", lambda: later)
        assert cache.get("p") is None  # due: not there for get()
        other = make()
        assert other._try_lock("p")
        try:  # another caller recomputes it: served stale meanwhile
            assert cache.get_or_set("p", lambda: "new", ttl=60) == "v" and cache.stats()["stale"] == 1
        finally:
            other._unlock("p")

    def test_has(self, cache: Cache) -> None:
        assert not cache.has("h")
        cache.set("h", 0)
        assert cache.has("h")

    def test_get_or_set(self, cache: Cache) -> None:
        calls: list[int] = []

        def compute() -> int:
            calls.append(1)
            return 7

        assert cache.get_or_set("g", compute, ttl=60) == 7
        assert cache.get_or_set("g", compute, ttl=60) == 7
        assert calls == [1]
        assert cache.get("g") == 7
        assert cache.get_or_set("plain", "value") == "value"
        assert cache.get_or_set("plain", "other") == "value"
        assert cache.stats()["recomputes"] >= 1
        assert cache.get_or_set("count", 0) == 0  # the get_or_set-then-incr idiom
        assert cache.incr("count") == 1
        assert cache.get_or_set("computed-count", lambda: 10, ttl=60) == 10
        assert cache.incr("computed-count") == 11

    def test_clear_is_namespace_only(self, cache: Cache, make: Any) -> None:
        other_ns = cache.namespace("other")
        other_prefix = make(prefix="otherapp")
        cache.set("a", 1)
        cache.incr("n")
        other_ns.set("a", 2)
        other_prefix.set("a", 3)
        assert cache.clear() is True
        assert cache.get("a") is None
        assert cache.get_many(["a", "n"]) == {}
        assert other_ns.get("a") == 2
        assert other_prefix.get("a") == 3
        cache.set("a", 4)
        assert cache.get("a") == 4
        assert cache.incr("n") == 1
        other_ns.clear()
        assert other_ns.get("a") is None
        assert cache.get("a") == 4

    def test_cached_decorator(self, cache: Cache) -> None:
        calls: list[tuple[int, int]] = []

        @cache.cached(ttl=60)
        def add(x: int, y: int = 1) -> int:
            calls.append((x, y))
            return x + y

        assert add(1) == 2
        assert add(x=1) == 2
        assert add(1, y=1) == 2
        assert calls == [(1, 1)]
        assert add(2, 3) == 5
        assert len(calls) == 2
        assert add.invalidate(1) is True
        assert add(1) == 2
        assert len(calls) == 3
        assert add.uncached(1) == 2
        assert len(calls) == 4
        assert add.refresh(2, 3) == 5
        assert len(calls) == 5
        assert add.key_for(1) == add.key_for(x=1, y=1)
        assert add.__name__ == "add"

        @cache.cached(key=lambda obj: f"obj:{id(obj)}")
        def by_identity(obj: object) -> str:
            return "ok"

        assert by_identity(object()) == "ok"

        @cache.cached()
        def takes_object(obj: object) -> str:
            return "x"

        with pytest.raises(InvalidKey):
            takes_object(object())

        async def coro() -> int:
            return 1

        with pytest.raises(TypeError, match="async"):
            cache.cached()(coro)

    def test_cached_key_ignores_keyword_and_dict_order(self, cache: Cache) -> None:
        """Equal arguments share one entry: keyword order, dict insertion order and
        set iteration order do not change the key."""
        calls: list[Any] = []

        @cache.cached(ttl=60)
        def f(*args: Any, **kwargs: Any) -> int:
            calls.append((args, kwargs))
            return len(calls)

        assert f(a=1, b=2) == 1
        assert f(b=2, a=1) == 1
        assert f({"x": 1, "y": 2}) == 2
        assert f({"y": 2, "x": 1}) == 2
        assert f({1: "a", 2: "b"}) == 3
        assert f({2: "b", 1: "a"}) == 3
        assert f({"p", "q"}) == 4 and f({"q", "p"}) == 4  # iteration order may differ
        assert f([1, 2]) == 5 and f([2, 1]) == 6  # lists keep their order
        assert f(1) == 7 and f("1") == 8 and f(True) == 9 and f(1.0) == 10
        assert len(calls) == 10
        with pytest.raises(ValueError, match="ttl"):
            cache.cached(ttl=0)(f.uncached)  # at decoration, not at the first call

    def test_cached_method(self, cache: Cache) -> None:
        """On a method the instance is the first argument, like any other; a
        ``key=`` function receives it too."""
        calls: list[int] = []

        class Report:
            def __init__(self, region: str) -> None:
                self.region = region

            @cache.cached(ttl=60, key=lambda self, n: f"report:{self.region}:{n}")
            def total(self, n: int) -> str:
                calls.append(n)
                return f"{self.region}-{n}"

            @cache.cached(ttl=60)
            def plain(self, n: int) -> int:
                return n

            @cache.cached(ttl=60)
            @staticmethod
            def static(n: int) -> int:
                return n + 1

        eu, us = Report("eu"), Report("us")
        assert eu.total(1) == "eu-1"
        assert eu.total(1) == "eu-1"
        assert us.total(1) == "us-1"
        assert calls == [1, 1]
        assert cache.get("report:eu:1") == "eu-1"
        assert eu.total.key_for(1) == "report:eu:1"
        assert eu.total.invalidate(1) is True
        assert eu.total.refresh(1) == "eu-1" and calls == [1, 1, 1]
        assert eu.total.uncached(2) == "eu-2"
        assert Report.total(eu, 1) == "eu-1" and calls == [1, 1, 1, 2]
        with pytest.raises(InvalidKey, match="key="):
            eu.plain(1)  # the instance cannot be encoded: key= is needed
        assert Report.static(1) == 2
        assert eu.static(1) == 2  # a static method gets no instance

    def test_lock_shared_by_threads(self, cache: Cache) -> None:
        """One Lock object used by several threads (a module-level lock): each thread
        holds its own token, so a thread whose lease expired cannot release the lock
        another thread took since."""
        import threading

        shared = cache.lock("shared", timeout=0.1)
        assert shared.acquire()
        taken, done = threading.Event(), threading.Event()

        def other_thread() -> None:
            assert shared.acquire(timeout=10)  # waits for the first lease to expire
            shared.extend(30)  # this lease outlives the checks below, however slow the machine
            taken.set()
            done.wait(10)
            shared.release()

        t = threading.Thread(target=other_thread)
        t.start()
        try:
            assert taken.wait(10)
            with pytest.raises(LockError):
                shared.release()  # this thread's lease expired; the lock is the other's
            assert not cache.lock("shared").acquire(blocking=False)  # still held
            assert not shared.locked()
        finally:
            done.set()
            t.join(10)
        assert cache.lock("shared").acquire(blocking=False)

    @pytest.mark.parametrize("bad", [0, -1, None, float("inf"), "5"])
    def test_lock_bad_timeout(self, cache: Cache, bad: Any) -> None:
        """A lock timeout is a positive number of seconds: anything else is a
        ValueError up front, not a Redis error (or a lock that is free at once)."""
        with pytest.raises(ValueError, match="timeout"):
            cache.lock("bad", timeout=bad)
        lock = cache.lock("ok", timeout=5)
        assert lock.acquire(blocking=False)
        with pytest.raises(ValueError, match="timeout"):
            lock.extend(0 if bad is None else bad)
        assert not cache.lock("ok").acquire(blocking=False)  # a refused extend keeps the lock
        lock.release()

    def test_lock_tiny_timeout_is_at_least_a_millisecond(self, cache: Cache) -> None:
        lock = cache.lock("tiny", timeout=0.0001)
        assert lock.acquire(blocking=False)
        assert cache.lock("tiny", timeout=5).acquire(timeout=10)

    def test_has_and_ttl_follow_get_for_get_or_set_values(self, cache: Cache,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """A get_or_set value lives on past its ttl only to be served stale while it is
        recomputed: ttl() leaves that window out, and past the ttl has() and ttl() miss
        as get() does."""
        import statekit.cache

        assert cache.get_or_set("g", lambda: "v", ttl=60, stale_ttl=30) == "v"
        left = cache.ttl("g")
        assert left is not None and 50 < left <= 60  # not ~90
        assert cache.has("g")
        cache.set("plain", "p", ttl=60)
        plain = cache.ttl("plain")
        assert plain is not None and 50 < plain <= 60
        later = time.time() + 61
        monkeypatch.setattr(statekit.cache, "_time", lambda: later)
        assert cache.get("g") is None and not cache.has("g") and cache.ttl("g") is None
        assert cache.get("plain") == "p" and cache.has("plain")  # Redis's TTL alone decides
        assert cache.get_or_set("g", lambda: "new", ttl=60) == "new"  # the stale copy is recomputed

    def test_incr_out_of_64_bits(self, cache: Cache) -> None:
        """Redis counters are signed 64-bit: every backend refuses a delta or a
        result outside that range, also on a missing key, and changes nothing."""
        for delta in (2**63, -(2**63) - 1, 2**64):
            with pytest.raises(ValueError):
                cache.incr("fresh", delta)
            assert not cache.has("fresh")
        assert cache.incr("fresh", 2**63 - 1) == 2**63 - 1
        with pytest.raises(ValueError):
            cache.incr("fresh")
        assert cache.get("fresh") == 2**63 - 1
        assert cache.decr("low", 2**63) == -(2**63)

    def test_lock(self, cache: Cache) -> None:
        lock = cache.lock("job", timeout=5)
        other = cache.lock("job", timeout=5)
        assert lock.acquire(blocking=False)
        assert not other.acquire(blocking=False)
        assert not other.acquire(timeout=0.05)
        lock.extend(10)
        lock.release()
        with pytest.raises(LockError):
            lock.release()
        with other:
            assert other.locked()
            assert not cache.lock("job").acquire(blocking=False)
        assert cache.lock("job").acquire(blocking=False)
        expiring = cache.lock("short", timeout=0.05)
        assert expiring.acquire()
        time.sleep(0.12)
        thief = cache.lock("short")
        assert thief.acquire(blocking=False)
        with pytest.raises(LockError):
            expiring.release()  # it expired and is someone else's now
        thief.release()

    def test_locks_survive_clear(self, cache: Cache) -> None:
        lock = cache.lock("keep")
        assert lock.acquire(blocking=False)
        cache.clear()
        assert not cache.lock("keep").acquire(blocking=False)
        lock.release()

    @pytest.mark.parametrize("bad", ["", "x" * 1025, 5, b"bytes", None])
    def test_invalid_keys(self, cache: Cache, bad: Any) -> None:
        with pytest.raises(InvalidKey):
            cache.get(bad)
        with pytest.raises(InvalidKey):
            cache.set(bad, 1)
        with pytest.raises(InvalidKey):
            cache.get_many(["ok", bad])

    def test_odd_keys(self, cache: Cache) -> None:
        keys = ["{tag}", "a:b:c", "ünï cødé", "gen", "lock:x", "1:2", "with space", "x" * 1024]
        for i, k in enumerate(keys):
            cache.set(k, i)
        assert cache.get_many(keys) == {k: i for i, k in enumerate(keys)}

    def test_stale_while_revalidate(self, cache: Cache, make: Any) -> None:
        cache.get_or_set("swr", lambda: "old", ttl=0.05, stale_ttl=30)
        time.sleep(0.12)
        assert cache.get("swr") is None  # a plain get does not serve stale values
        # Another process is recomputing: it holds the single-flight lock.
        other = make()
        assert other._try_lock("swr")
        try:
            assert cache.get_or_set("swr", lambda: "new", ttl=60) == "old"
            assert cache.stats()["stale"] == 1
        finally:
            other._unlock("swr")
        assert cache.get_or_set("swr", lambda: "new", ttl=60) == "new"
        assert cache.get("swr") == "new"

    def test_xfetch_refreshes_early(self, make: Any) -> None:
        eager = make(xfetch_beta=1e9)
        def slow_one() -> str:
            time.sleep(0.01)  # a compute time for XFetch to weigh
            return "one"

        eager.get_or_set("x", slow_one, ttl=60)
        assert eager.get_or_set("x", lambda: "two", ttl=60) == "two"
        assert eager.stats()["early_refreshes"] == 1
        never = make(xfetch_beta=0)
        never.get_or_set("y", slow_one, ttl=60)
        assert never.get_or_set("y", lambda: "two", ttl=60) == "one"

    def test_waiter_gets_the_value_computed_under_the_lock(self, cache: Cache, make: Any) -> None:
        other = make()
        assert other._try_lock("w")
        other.set("w-done", 0)
        import threading

        def finish() -> None:
            time.sleep(0.1)
            other._compute_and_store("w", lambda: "from-other", 60.0, 0.0)
            other._unlock("w")

        t = threading.Thread(target=finish)
        t.start()
        try:
            assert cache.get_or_set("w", lambda: "mine", ttl=60) == "from-other"
        finally:
            t.join()
        assert cache.stats()["lock_waits"] == 1

    def test_a_compute_longer_than_lock_ttl_still_runs_once(self, make: Any) -> None:
        """The holder's lock is extended while it computes (every lock_ttl / 3), so a
        second caller keeps waiting instead of taking the expired lock and computing
        again; once the holder is done, its lock is released, not left to expire."""
        import threading

        first, second = make(lock_ttl=0.3, lock_wait=5.0), make(lock_ttl=0.3, lock_wait=5.0)
        computes: list[str] = []
        started = threading.Event()

        def slow() -> str:
            started.set()
            time.sleep(1.0)  # more than three lock_ttls
            computes.append("slow")
            return "slow"

        t = threading.Thread(target=lambda: first.get_or_set("long", slow, ttl=60))
        t.start()
        try:
            assert started.wait(5)
            def again() -> str:
                computes.append("again")
                return "again"

            assert second.get_or_set("long", again, ttl=60) == "slow"
        finally:
            t.join(10)
        assert computes == ["slow"]
        assert first._try_lock("long")  # the single-flight lock is free at once
        first._unlock("long")

    def test_late_lock_holder_does_not_recompute(self, cache: Cache, make: Any) -> None:
        # This caller saw a miss; before it takes the lock another process computes,
        # stores and releases. Holding the lock now, it must use that value.
        other = make()
        calls: list[int] = []
        take_lock = cache._try_lock

        def racing_try_lock(key: str) -> bool | None:
            other.get_or_set(key, lambda: "from-other", ttl=60)
            return take_lock(key)

        cache._try_lock = racing_try_lock  # type: ignore[method-assign]
        def mine() -> str:
            calls.append(1)
            return "mine"

        assert cache.get_or_set("late", mine, ttl=60) == "from-other"
        assert calls == []

    def test_codecs(self, make: Any) -> None:
        mp = make(serializer="msgpack")
        mp.set("v", {"a": (1, 2), "b": b"x"})
        assert mp.get("v") == {"a": (1, 2), "b": b"x"}
        sp = make(serializer="signed-pickle", secret_keys=["k1"])
        sp.set("v", complex(1, 2))
        assert sp.get("v") == complex(1, 2)
        sp.set("n", 3)
        assert sp.incr("n") == 4
        forged = make(serializer="signed-pickle", secret_keys=["other"])
        assert forged.get("v", "dflt") == "dflt"  # refused, not unpickled: a miss
        assert forged.stats()["undecodable"] == 1
        with pytest.raises(ConfigError):
            make(serializer="pickle")

    def test_counters(self, cache: Cache) -> None:
        cache.get("nope")
        cache.set("k", 1)
        cache.get("k")
        stats = cache.stats()
        assert stats["hits"] == 1 and stats["misses"] == 1
        assert stats["breaker_state"] == 0

    def test_add_has_one_winner_among_threads(self, cache: Cache) -> None:
        """Of threads adding one key at the same moment exactly one stores it, and
        its value is the one kept: add() is one atomic step (a get, then a set, lets
        several callers in, each believing it holds the key)."""
        import threading

        from ...pytest_plugin import run_threads

        for round_ in range(3):
            key, start, won = f"race{round_}", threading.Barrier(8), list[int]()

            def add(i: int, key: str = key, start: threading.Barrier = start, won: list[int] = won) -> None:
                start.wait(30)
                if cache.add(key, i, ttl=60):
                    won.append(i)

            run_threads(add, 8)
            assert len(won) == 1, f"add() stored {key!r} for {len(won)} callers: {won}"
            assert cache.get(key) == won[0]

    def test_incr_loses_no_update_under_threads(self, cache: Cache) -> None:
        """Concurrent increments all count: incr() reads and writes in one step."""
        from ...pytest_plugin import run_threads

        cache.set("hits", 0, ttl=60)
        run_threads(lambda _: [cache.incr("hits") for _ in range(20)], 4)
        assert cache.get("hits") == 80

    def test_incr_keeps_the_keys_ttl(self, cache: Cache) -> None:
        """incr() of an existing key changes its value only: a counter set with a TTL
        keeps it (a rate-limit window that never ends otherwise), ``ttl=`` is for a
        missing key, and a key without expiry gets none."""
        cache.set("window", 5, ttl=60)
        assert cache.incr("window") == 6
        assert cache.incr("window", ttl=600) == 7
        left = cache.ttl("window")
        assert left is not None and 0 < left <= 60
        cache.set("forever", 1, ttl=None)
        assert cache.incr("forever", ttl=60) == 2
        assert cache.ttl("forever") == math.inf
