"""AsyncSessionStore (statekit.sessions.aio) on every server line and on memory://:
the API, interop with the sync SessionStore both ways (one stored format: the same
keys and scripts), concurrent sync and async saves of different keys (0 lost),
revoke_user / list_user_sessions, a sync third-party engine run in threads, the
carry-over, and an outage (Redis paused: BackendUnavailable, nothing lost)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable, ConfigError, SessionError
from statekit.redis import memory_client
from statekit.sessions import AsyncSessionStore, Session, SessionStore
from statekit.sessions.carryover import CarryOver
from statekit.sessions.redis import RedisEngine

KEYS = ["async-sessions-test-key"]


class Cases:
    """Run on each backend by the subclasses below (they give the ``url`` fixture)."""

    @pytest.fixture
    def stores(self, url: str) -> Iterator[tuple[SessionStore, AsyncSessionStore]]:
        prefix = "as" + uuid.uuid4().hex[:8]
        sync = SessionStore(url, secret_keys=KEYS, key_prefix=prefix, alias_window=30)
        yield sync, AsyncSessionStore(url, secret_keys=KEYS, key_prefix=prefix, alias_window=30)
        sync.close()

    def test_the_api(self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        _, store = stores

        async def main() -> dict[str, Any]:
            async with store:
                s = store.new()
                s["cart"] = ["apple"]
                assert await store.save(s) and s.send_cookie
                opened = await store.open(store.sign(s.sid))
                assert not opened.new and opened == {"cart": ["apple"]}
                opened["size"] = "L"
                del opened["cart"]
                assert await store.save(opened)
                assert await store.incr(opened, "n", 3) == 3
                old_sid = opened.sid
                await store.rotate(opened)
                rotated = await store.load(opened.sid)
                created = await store.create({"x": 1})
                await store.destroy(created)
                destroyed = await store.load(created.sid)
                fresh = await store.open("garbage.cookie")
                await store.destroy_id(opened.sid)
                return {"rotated": dict(rotated.items()) if rotated else None,
                        "old": await store.load(old_sid), "destroyed": destroyed, "fresh_new": fresh.new,
                        "gone": await store.load(opened.sid)}

        out = asyncio.run(main())
        assert out == {"rotated": {"size": "L", "n": 3}, "old": None, "destroyed": None, "fresh_new": True,
                       "gone": None}

    def test_a_sync_write_is_read_by_the_async_store_and_back(
            self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        sync, store = stores
        s = sync.create({"from": "sync"})

        async def main() -> tuple[dict[str, Any], int]:
            async with store:
                a = await store.open(sync.sign(s.sid))  # the sync store's cookie, too
                a["from-async"] = True
                assert await store.save(a)
                return dict(a.items()), a.version

        seen, version = asyncio.run(main())
        assert seen == {"from": "sync", "from-async": True}
        back = sync.load(s.sid)
        assert back is not None and dict(back.items()) == seen and back.version == version
        back["again"] = "sync"
        assert sync.save(back)

        async def reread() -> dict[str, Any] | None:
            async with store:
                loaded = await store.load(s.sid)
                return dict(loaded.items()) if loaded else None

        assert asyncio.run(reread()) == {"from": "sync", "from-async": True, "again": "sync"}

    def test_concurrent_sync_and_async_saves_of_different_keys_lose_nothing(
            self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        """25 threads of the sync store and 25 tasks of the async store each load the
        session, wait until all 50 have loaded, then save their own key at once."""
        sync, store = stores
        s = sync.create({"shared": "kept"})
        n = 25
        loaded = threading.Barrier(n + 1)

        def sync_request(i: int) -> None:
            mine = sync.load(s.sid)
            assert mine is not None
            loaded.wait(timeout=30)
            mine[f"sync{i}"] = i
            assert sync.save(mine)

        async def main() -> None:
            async with store:
                threads = [threading.Thread(target=sync_request, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                mine = [await store.load(s.sid) for _ in range(n)]
                await asyncio.to_thread(loaded.wait, 30)
                for i, m in enumerate(mine):
                    assert m is not None
                    m[f"async{i}"] = i
                results = await asyncio.gather(*(store.save(m) for m in mine if m is not None))
                for t in threads:
                    await asyncio.to_thread(t.join, 30)
                assert all(results)

        asyncio.run(main())
        final = sync.load(s.sid)
        assert final is not None
        wanted = [f"sync{i}" for i in range(n)] + [f"async{i}" for i in range(n)]
        lost = [k for k in wanted if k not in final]
        assert lost == [] and final["shared"] == "kept"

    def test_list_and_revoke_a_users_sessions_from_both_sides(
            self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        sync, store = stores
        from_sync = sync.create({"n": 1}, user_id="u1")

        async def main() -> tuple[int, int, int, str]:
            async with store:
                mine = [await store.create({"n": i}, user_id="u1") for i in range(3)]
                listed = await store.list_user_sessions("u1")
                revoked = await store.revoke_user("u1", except_session=mine[0])
                left = await store.list_user_sessions("u1")
                return len(listed), revoked, len(left), left[0].handle

        listed, revoked, left, kept = asyncio.run(main())
        assert (listed, revoked, left) == (4, 3, 1)
        assert sync.load(from_sync.sid) is None
        assert [i.handle for i in sync.list_user_sessions("u1")] == [kept]

    def test_an_in_flight_save_follows_a_rotation_made_by_the_other_side(
            self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        """An async request loaded the session, a sync one logs in (rotates): the async
        save writes through the alias into the rotated session."""
        sync, store = stores
        s = sync.create({"a": 1})
        login = sync.load(s.sid)
        assert login is not None

        async def main() -> tuple[bool, bool]:
            async with store:
                in_flight = await store.load(s.sid)
                assert in_flight is not None
                sync.rotate(login)
                in_flight["b"] = 2
                return await store.save(in_flight), in_flight.through_alias

        assert asyncio.run(main()) == (True, True)
        rotated = sync.load(login.sid)
        assert rotated is not None and dict(rotated.items()) == {"a": 1, "b": 2}
        assert sync.load(s.sid) is None  # the old id loads nothing

    def test_session_shortcuts_say_to_await_the_store(
            self, stores: tuple[SessionStore, AsyncSessionStore]) -> None:
        _, store = stores
        with pytest.raises(TypeError, match="await store.rotate"):
            store.new().rotate()


@pytest.mark.redis
class TestRedisLines(Cases):
    @pytest.fixture
    def url(self, redis_line_url: str) -> str:
        return redis_line_url


@pytest.mark.redis
@pytest.mark.cluster
class TestCluster(Cases):
    """Redis Cluster: the session scripts in the handle's slot, the user index in the
    user's (a second call), through redis-py's asyncio RedisCluster."""

    @pytest.fixture
    def url(self, redis_cluster_url: str) -> str:
        return redis_cluster_url


class TestMemory(Cases):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://async-{uuid.uuid4().hex[:8]}"


def test_a_sync_third_party_engine_runs_in_worker_threads() -> None:
    name = f"threaded-{uuid.uuid4().hex[:8]}"
    engine = RedisEngine(memory_client(name), "tp")
    seen: set[int] = set()
    load = engine.load

    def spy(handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        seen.add(threading.get_ident())
        return load(handle, min_version)

    engine.load = spy  # type: ignore[method-assign]
    store = AsyncSessionStore(engine=engine, secret_keys=KEYS)
    assert store.threaded

    async def main() -> tuple[dict[str, Any] | None, int]:
        s = await store.create({"k": "v"})
        loaded = await store.load(s.sid)
        await store.aclose()
        return (dict(loaded.items()) if loaded else None), threading.get_ident()

    data, loop_thread = asyncio.run(main())
    assert data == {"k": "v"} and seen and loop_thread not in seen


def test_the_async_store_has_no_near_cache() -> None:
    with pytest.raises(ConfigError, match="near cache"):
        AsyncSessionStore("memory://x", secret_keys=KEYS, near_cache=100)


class OldStore:
    """A previous session store: one cookie, read in a worker thread by the async store."""

    name = "old"

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {"old-cookie": {"user": "dora"}}
        self.threads: set[int] = set()

    def read(self, cookie: str) -> Mapping[str, Any] | None:
        self.threads.add(threading.get_ident())
        return self.data.get(cookie)

    def forget(self, cookie: str) -> None:
        self.data.pop(cookie, None)


def test_the_carry_over_works_on_the_async_store() -> None:
    url = f"memory://carry-{uuid.uuid4().hex[:8]}"
    store = AsyncSessionStore(url, secret_keys=KEYS)
    old = OldStore()
    store.carry_over = CarryOver(old)

    async def main() -> tuple[Session, Session, int]:
        async with store:
            carried = await store.open("old-cookie")
            again = await store.open("old-cookie")  # within the window: the same session
            return carried, again, threading.get_ident()

    carried, again, loop_thread = asyncio.run(main())
    assert dict(carried.items()) == {"user": "dora"} and carried.send_cookie and not carried.new
    assert again.sid == carried.sid and old.data == {} and loop_thread not in old.threads
    sync = SessionStore(url, secret_keys=KEYS)
    loaded = sync.load(carried.sid)
    assert loaded is not None and loaded["user"] == "dora"
    sync.close()


@pytest.mark.redis
def test_redis_paused_raises_backend_unavailable_and_loses_nothing(server: RedisServer) -> None:
    # 2 s: the create, the load and the load after the resume are answered on a loaded
    # machine (0.3 s could fire on a healthy server); paused, each call fails after 2 s
    url = server.url + "?socket_timeout=2&socket_connect_timeout=2&retries=0"
    prefix = "outage" + uuid.uuid4().hex[:6]
    store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix=prefix)

    async def main() -> dict[str, Any]:
        s = await store.create({"kept": 1})
        mine = await store.load(s.sid)
        assert mine is not None
        mine["late"] = 2
        out: dict[str, Any] = {}
        server.pause()
        try:
            for what, call in (("open", store.open(store.sign(s.sid))), ("save", store.save(mine)),
                               ("incr", store.incr(s, "n"))):
                try:
                    await call
                    out[what] = "answered"
                except BackendUnavailable:
                    out[what] = "unavailable"
        finally:
            server.resume()
        after = await store.load(s.sid)
        out["after"] = dict(after.items()) if after else None
        await store.aclose()
        return out

    out = asyncio.run(main())
    assert (out["open"], out["save"], out["incr"]) == ("unavailable",) * 3
    # nothing lost: the stored session survives; the sends whose outcome was unknown
    # (paused, not down) ran whole once Redis resumed, or not at all
    assert out["after"] is not None and out["after"]["kept"] == 1
    assert set(out["after"]) <= {"kept", "late", "n"}


def test_an_increment_of_a_non_integer_is_a_session_error() -> None:
    store = AsyncSessionStore(f"memory://incr-{uuid.uuid4().hex[:8]}", secret_keys=KEYS)

    async def main() -> None:
        async with store:
            s = await store.create({"text": "abc"})
            await store.incr(s, "text")

    with pytest.raises(SessionError, match="text"):
        asyncio.run(main())


@pytest.mark.redis
def test_the_near_cache_serves_loads_and_drops_a_change_made_elsewhere(redis_url: str) -> None:
    """near_cache on the async store: the sync engine's copies and listener; a save
    by another process (a sync store without a near cache) reaches the copy through
    Redis's invalidation, and the version token orders a browser's own reads."""
    prefix = "near" + uuid.uuid4().hex[:6]
    store = AsyncSessionStore(redis_url, secret_keys=KEYS, key_prefix=prefix, near_cache=100)
    other = SessionStore(redis_url, secret_keys=KEYS, key_prefix=prefix)
    assert store.near_cache

    async def main() -> dict[str, Any]:
        s = await store.create({"a": 1})
        cookie = store.sign(s.sid)
        first = await store.open(cookie)
        for _ in range(500):  # until the listener is up and a load has kept a copy
            await asyncio.sleep(0.01)
            await store.open(cookie)
            if s.key in store.engine.near.data:
                break
        hits = store.counters.get("near_hits")
        again = await store.open(cookie)
        out: dict[str, Any] = {"first": first["a"], "again": again["a"],
                               "hit": store.counters.get("near_hits") > hits}
        elsewhere = other.load(s.sid)
        assert elsewhere is not None
        elsewhere["a"] = 2
        other.save(elsewhere)
        seen = None
        for _ in range(500):  # until the invalidation has arrived (well under a second)
            seen = (await store.open(cookie))["a"]
            if seen == 2:
                break
            await asyncio.sleep(0.01)
        out["after_change"] = seen
        mine = await store.open(cookie)
        mine["b"] = 3
        await store.save(mine)
        out["token"] = store.version_token(mine, None)
        out["version"] = mine.version
        out["own_write"] = dict((await store.open(cookie, version_token=out["token"])).items())
        await store.aclose()
        return out

    try:
        out = asyncio.run(main())
    finally:
        other.close()
    assert (out["first"], out["again"], out["hit"], out["after_change"]) == (1, 1, True, 2)
    assert out["token"] == str(out["version"]) and out["own_write"] == {"a": 2, "b": 3}


@pytest.mark.redis
def test_concurrent_requests_keep_the_near_copies_of_their_sessions(redis_line_url: str) -> None:
    """8 sessions saved concurrently on one loop, in a shuffled order each round (a
    busy ASGI worker: any request may take any connection). Every load after the
    first is a near hit and no invalidation reaches the listener: a session's
    commands run on the connection its key's lane keeps, so ``NOLOOP`` covers the
    process's own saves. From a pool, a save on one connection invalidated the copy
    a load had tracked on another: ~every load went to Redis (HGETALL per request)."""
    prefix = "near" + uuid.uuid4().hex[:6]
    store = AsyncSessionStore(redis_line_url, secret_keys=KEYS, key_prefix=prefix, near_cache=100)
    rounds, rng = 30, random.Random(7)

    async def main() -> tuple[int, int, int, list[int]]:
        sessions = [await store.create({"n": 0}) for _ in range(8)]
        engine = store.engine
        for _ in range(500):  # until the listener is up
            await asyncio.sleep(0.01)
            await store.load(sessions[0].sid)
            if engine.listener.connected.is_set() and sessions[0].key in engine.near.data:
                break
        versions = {s.sid: s.version for s in sessions}
        messages0, hits0 = engine.listener.messages, store.counters.get("near_hits")

        async def request(sid: str) -> None:
            s = await store.load(sid, min_version=versions[sid])
            assert s is not None
            s["n"] += 1
            await store.save(s)
            versions[sid] = s.version

        for _ in range(rounds):
            order = [s.sid for s in sessions]
            rng.shuffle(order)
            await asyncio.gather(*(request(sid) for sid in order))
            for _ in range(100):  # the listener applied what arrived (nothing, expected)
                if not engine.listener.pending():
                    break
                await asyncio.sleep(0.01)
        counts = [(await store.load(s.sid))["n"] for s in sessions]  # type: ignore[index]
        out = (engine.listener.messages - messages0, store.counters.get("near_hits") - hits0,
               len(getattr(engine._lanes.current(), "_lanes", None) or ()), counts)
        await store.aclose()
        return out

    messages, hits, lanes, counts = asyncio.run(main())
    assert counts == [rounds] * 8
    assert messages == 0
    assert hits >= 8 * rounds
    assert lanes > 1
