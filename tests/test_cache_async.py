"""AsyncCache on every server line and memory://: the API, interop with the sync
Cache (one namespace, one stored format), faults, and 200 concurrent gets on one loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from statekit.cache import AsyncCache, Cache
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable, ConfigError, LockError
from statekit.testing.loop import LoopLag

pytestmark = pytest.mark.redis
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(params=["redis", "memory"])
def url(request: pytest.FixtureRequest, redis_line_url: str) -> str:
    """Each server line, and memory:// (run once per line too: it costs milliseconds)."""
    return redis_line_url if request.param == "redis" else "memory://async-test"


async def _closing(cache: AsyncCache, body: Callable[[AsyncCache], Awaitable[T]]) -> T:
    try:
        return await body(cache)
    finally:
        await cache.aclose()


def test_api(url: str) -> None:
    async def body(c: AsyncCache) -> None:
        assert await c.get("missing", "d") == "d"
        assert await c.set("a", {"x": [1, 2]}) is True
        assert await c.get("a") == {"x": [1, 2]}
        assert await c.add("a", 2) is False
        assert await c.add("b", 2, ttl=30) is True
        assert await c.get_many(["a", "b", "nope"]) == {"a": {"x": [1, 2]}, "b": 2}
        assert await c.set_many({"c": "C", "d": None}, ttl=60) is True
        assert await c.has("d") and not await c.has("e")
        ttl = await c.ttl("c")
        assert ttl is not None and 0 < ttl <= 60
        assert await c.touch("c", 5) is True and await c.touch("nope") is False
        ttl = await c.ttl("c")
        assert ttl is not None and ttl <= 5
        assert await c.incr("n") == 1 and await c.incr("n", 10) == 11 and await c.decr("n", 2) == 9
        with pytest.raises(KeyError):
            await c.incr("absent", create=False)
        with pytest.raises(ValueError):
            await c.incr("a")
        assert await c.delete("a") is True and await c.delete("a") is False
        assert await c.delete_many(["b", "c", "zz"]) == 2
        assert await c.get_or_set("gs", 5) == 5 and await c.get_or_set("gs", 6) == 5
        other = c.namespace("other")
        await other.set("b", "other-b")
        assert await c.clear() is True
        assert await c.get_many(["d", "n", "gs"]) == {}
        assert await other.get("b") == "other-b"
        stats = c.stats()
        assert stats["hits"] > 0 and stats["misses"] > 0 and stats["errors"] == 0

    run(_closing(AsyncCache(url, namespace="api"), body))


def test_single_flight_cached_and_lock(url: str) -> None:
    calls: list[int] = []

    async def body(c: AsyncCache) -> None:
        @c.cached(ttl=60)
        async def slow(x: int) -> int:
            calls.append(x)
            await asyncio.sleep(0.05)
            return x * 2

        assert await asyncio.gather(*(slow(21) for _ in range(30))) == [42] * 30
        assert calls == [21]  # one compute for 30 concurrent callers (the lock)
        assert c.stats()["lock_waits"] >= 1
        assert await slow.refresh(21) == 42 and calls == [21, 21]
        assert await slow.invalidate(21) is True
        with pytest.raises(TypeError):
            c.cached()(lambda: 1)  # type: ignore[arg-type]
        lock = c.lock("job", timeout=5)
        async with lock:
            assert not await c.lock("job").acquire(blocking=False)
            await lock.extend(10)
        with pytest.raises(LockError):
            await lock.release()
        sync = Cache(c.url, namespace=c.namespace_name)
        try:
            async with c.lock("shared"):
                assert not sync.lock("shared").acquire(blocking=False)  # the one lock for both
        finally:
            sync.close()

    run(_closing(AsyncCache(url, namespace="sf"), body))


def test_xfetch_and_stale(url: str) -> None:
    async def body(c: AsyncCache) -> None:
        async def one() -> str:
            await asyncio.sleep(0.01)
            return "one"

        await c.get_or_set("x", one, ttl=60)
        eager = AsyncCache(c.url, namespace="xf", xfetch_beta=1e9)
        try:
            assert await eager.get_or_set("x", lambda: "two", ttl=60) == "two"
            assert eager.stats()["early_refreshes"] == 1
        finally:
            await eager.aclose()

    run(_closing(AsyncCache(url, namespace="xf"), body))


def test_interop_with_the_sync_cache(url: str) -> None:
    sync = Cache(url, namespace="shared")

    async def body(c: AsyncCache) -> None:
        sync.set("from-sync", {"v": 1})
        assert await c.get("from-sync") == {"v": 1}
        await c.set("from-async", [1, "two"])
        assert sync.get("from-async") == [1, "two"]
        sync.incr("count", 2)
        assert await c.incr("count") == 3 and sync.get("count") == 3
        assert sync.get_or_set("computed", lambda: "sync-value") == "sync-value"
        assert await c.get_or_set("computed", lambda: "async-value") == "sync-value"

        @c.cached(ttl=60, key="fn")
        async def af() -> str:
            return "async"

        def sf() -> str:
            return "sync"

        assert await af() == "async"
        assert sync.cached(ttl=60, key="fn")(sf)() == "async"  # one key scheme
        await c.clear()  # a clear from either side is seen by both
        assert sync.get("from-sync") is None
        sync.set("again", 1)
        sync.clear()
        assert await c.get("again") is None

    try:
        run(_closing(AsyncCache(url, namespace="shared"), body))
    finally:
        sync.close()


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Await *check* until true (an invalidation reaching a listener), bounded."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_near_caches_drop_each_others_writes(redis_line_url: str) -> None:
    sync = Cache(redis_line_url, namespace="near", near_cache=100)

    async def body(c: AsyncCache) -> None:
        assert await c.near_ready() and sync.near_ready()
        await c.set("k", "v1")
        async def both_near() -> bool:  # the set's own invalidation may drop the first copies
            assert await c.get("k") == "v1" and sync.get("k") == "v1"
            return bool(c.stats()["near_hits"] and sync.stats()["near_hits"])

        assert await _eventually(both_near)  # both served a near copy
        sync.set("k", "v2")  # the async side's copy is dropped by the invalidation

        async def seen(cache: Cache | AsyncCache, value: Any) -> bool:
            got = await cache.get("k") if isinstance(cache, AsyncCache) else cache.get("k")
            return bool(got == value)

        assert await _eventually(lambda: seen(c, "v2"))
        await c.set("k", "v3")  # and the other way round
        assert await _eventually(lambda: seen(sync, "v3"))
        await c.clear()
        assert await _eventually(lambda: seen(sync, None))

    try:
        run(_closing(AsyncCache(redis_line_url, namespace="near", near_cache=100), body))
    finally:
        sync.close()


def test_undecodable_entries_are_a_miss(url: str) -> None:
    async def body(c: AsyncCache) -> None:
        other = Cache(url, namespace="dec", serializer="signed-pickle", secret_keys=["k1"])
        try:
            other.set("p", {"x": 1})
        finally:
            other.close()
        assert await c.get("p", "default") == "default"
        assert await c.get_many(["p"]) == {}
        assert await c.get_or_set("p", lambda: "fresh") == "fresh"  # healed
        assert await c.get("p") == "fresh"
        assert c.stats()["undecodable"] >= 1

    run(_closing(AsyncCache(url, namespace="dec"), body))


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        AsyncCache("redis://h/0", on_error="never")  # type: ignore[arg-type]

    async def body() -> None:
        import redis.asyncio

        client = redis.asyncio.Redis(decode_responses=True)
        try:
            with pytest.raises(ConfigError):
                await AsyncCache(client=client).get("k")
        finally:
            await client.aclose()

    run(body())


def test_paused_redis_breaker_and_no_double_incr(private_redis: RedisServer) -> None:
    """Redis SIGSTOPped: calls fail with BackendUnavailable within the timeout, the
    breaker opens, and an incr whose reply was lost is not sent again."""
    url = private_redis.url

    async def body(c: AsyncCache) -> dict[str, Any]:
        assert await c.incr("n") == 1
        private_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await c.incr("n")
            first = time.monotonic() - started
            for _ in range(3):
                with pytest.raises(BackendUnavailable):
                    await c.get("k")
            assert c.stats()["breaker_state"] == 2  # open
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="breaker"):
                await c.get("k")
            open_call = time.monotonic() - started
        finally:
            private_redis.resume()
        await asyncio.sleep(0.3)  # breaker_reset: the trial call closes it
        value = await c.get("n")
        return {"first_failure_s": round(first, 3), "open_breaker_call_s": round(open_call, 6), "n": value}

    result = run(_closing(AsyncCache(url, namespace="faults", timeout=0.3, failure_threshold=3,
                                     breaker_reset=0.2), body))
    print("paused Redis:", result)
    assert result["n"] == 1 or result["n"] == 2  # applied at most once (the reply was lost)
    sync = Cache(url, namespace="faults")
    try:
        assert sync.get("n") in (1, 2)
    finally:
        sync.close()


def test_miss_policy_degrades(private_redis: RedisServer) -> None:
    async def body(c: AsyncCache) -> None:
        await c.set("k", 1)
        private_redis.pause()
        try:
            assert await c.get("k", "dflt") == "dflt"
            assert await c.set("k", 2) is False
            assert await c.get_or_set("g", lambda: "computed") == "computed"
        finally:
            private_redis.resume()
        assert c.stats()["dropped_writes"] >= 1

    run(_closing(AsyncCache(private_redis.url, namespace="miss", timeout=0.3, on_error="miss"), body))


async def _lag_under(get: Callable[[int], Awaitable[Any]], connections: Callable[[], int]) -> dict[str, Any]:
    """5 rounds of 200 concurrent ``get(i)`` with a 1 ms heartbeat task beside them:
    the new connections at the peak and how late the heartbeat woke (ms)."""
    before = await asyncio.to_thread(connections)
    peak, elapsed = 0, 0.0
    async with LoopLag(0.001) as lag:
        for _ in range(5):
            t0 = time.perf_counter()
            results = await asyncio.gather(*(get(i) for i in range(200)))
            elapsed += time.perf_counter() - t0
            assert results == list(range(200))
            peak = max(peak, await asyncio.to_thread(connections))  # CLIENT LIST off the loop
    return {"new_connections_peak": peak - before, "seconds": round(elapsed, 3), **lag.summary()}


def test_200_concurrent_gets_bounded_connections_and_loop_lag(redis_line_url: str) -> None:
    """200 concurrent gets on one loop: connections bounded by the transport's limit
    (counted with CLIENT LIST), the loop never blocked: a heartbeat task's lag is
    measured and reported beside raw redis-py asyncio's on the same work (not
    asserted: timing belongs in bench/)."""
    import redis
    import redis.asyncio

    admin = redis.Redis.from_url(redis_line_url)
    admin.client_setname("admin")

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") != "admin")

    async def body(c: AsyncCache) -> dict[str, Any]:
        await c.set_many({f"k{i}": i for i in range(200)})
        ours = await _lag_under(lambda i: c.get(f"k{i}"), connections)
        ours["limit"] = c._backend.transport.current().limit
        # the same bound for raw redis-py (its default pool raises "Too many connections"
        # past max_connections instead of waiting)
        pool = redis.asyncio.BlockingConnectionPool.from_url(redis_line_url, max_connections=ours["limit"])
        raw = redis.asyncio.Redis(connection_pool=pool)
        try:
            await raw.mset({f"raw{i}": i for i in range(200)})

            async def raw_get(i: int) -> int:
                return int(await raw.get(f"raw{i}"))

            return {"AsyncCache": ours, "redis-py asyncio": await _lag_under(raw_get, connections)}
        finally:
            await raw.aclose()
            await pool.aclose()

    try:
        result = run(_closing(AsyncCache(redis_line_url, namespace="conc"), body))
    finally:
        admin.close()
    print("200 concurrent gets:", result)
    ours = result["AsyncCache"]
    assert 1 <= ours["new_connections_peak"] <= ours["limit"]
    assert ours["heartbeats"] > 0


def test_cancelled_get_leaves_the_cache_usable(url: str) -> None:
    async def body(c: AsyncCache) -> None:
        await c.set("k", "v")
        task = asyncio.ensure_future(c.get("k"))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert await c.get("k") == "v"

    run(_closing(AsyncCache(url, namespace="cancel"), body))


@pytest.mark.cluster
def test_cluster_keys_spread_and_interop(redis_cluster_url: str) -> None:
    """On Cluster: the same per-key names as the sync cache (spread over the slots),
    bulk calls across nodes, and a clear on either side seen by the other."""
    sync = Cache(redis_cluster_url, namespace="acl")

    async def body(c: AsyncCache) -> None:
        items = {f"k{i}": i for i in range(300)}
        assert await c.set_many(items)
        assert sync.get_many(list(items)) == items
        sync.set("from-sync", "s")
        assert await c.get("from-sync") == "s"
        assert await c.get_many([*items, "from-sync"]) == {**items, "from-sync": "s"}
        assert await c.incr("n") == 1 and sync.incr("n") == 2
        from redis.cluster import RedisCluster

        sync._be().transport.client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
        assert await c.delete_many(list(items)[:100]) == 100  # NOSCRIPT in the pipeline: sent again alone
        assert len(sync.get_many(list(items))) == 200
        await c.clear()
        assert sync.get("from-sync") is None
        sync.set("again", 1)
        assert await c.get("again") == 1
        sync.clear()

        async def cleared() -> bool:  # once the counter's invalidation reaches the listener
            return await c.get("again") is None

        assert await _eventually(cleared)

    try:
        run(_closing(AsyncCache(redis_cluster_url, namespace="acl"), body))
    finally:
        sync.close()


@pytest.mark.sentinel
def test_sentinel(sentinel_url: str) -> None:
    async def body(c: AsyncCache) -> None:
        await c.set("k", {"v": 1})
        assert await c.get("k") == {"v": 1}
        assert await c.incr("n") == 1

    run(_closing(AsyncCache(sentinel_url, namespace="asent"), body))


async def _computing(c: AsyncCache, key: str) -> asyncio.Future[Any]:
    """A task in ``get_or_set(key)`` whose compute never ends, once it computes
    (holding the single-flight lock)."""
    started = asyncio.Event()

    async def never() -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    task = asyncio.ensure_future(c.get_or_set(key, never, ttl=60))
    await started.wait()
    return task


def test_cancelled_compute_releases_the_single_flight_lock(url: str) -> None:
    """A task cancelled while it computes under the lock releases it (the plan's
    finally runs), so the next caller computes at once instead of waiting lock_wait."""

    async def body(c: AsyncCache) -> None:
        task = await _computing(c, "slow")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.get_or_set("slow", lambda: "next", ttl=60) == "next"
        assert c.stats()["lock_waits"] == 0

    run(_closing(AsyncCache(url, namespace="cancel-lock", lock_wait=30), body))


def test_near_cache_with_a_ready_client(redis_line_url: str) -> None:
    import redis.asyncio

    async def body() -> None:
        client = redis.asyncio.Redis.from_url(redis_line_url)
        c = AsyncCache(client=client, namespace="near-client", near_cache=True)
        sync = Cache(redis_line_url, namespace="near-client")
        try:
            assert await c.near_ready()
            await c.set("k", 1)

            async def near_hit() -> bool:
                assert await c.get("k") in (1, 2)
                return bool(c.stats()["near_hits"])

            assert await _eventually(near_hit)
            sync.set("k", 2)

            async def dropped() -> bool:
                return bool(await c.get("k") == 2)

            assert await _eventually(dropped)
        finally:
            sync.close()
            await c.aclose()
            await client.aclose()

    run(body())


def test_double_cancel_releases_the_single_flight_lock(url: str) -> None:
    """The task computing under the single-flight lock is cancelled, then cancelled
    again while its ``finally`` releases the lock (before the release was sent): the
    CancelledError propagates, the release still happens (in the background), and a
    task waiting for the lock (lock_wait 30 s, lock_ttl 60 s) is not left waiting: it
    computes. A second waiter cancelled twice while it polls propagates too and holds
    nothing."""

    async def body(c: AsyncCache) -> None:
        releasing = asyncio.Event()
        holder = await _computing(c, "slow")
        transport = c._backend.transport.current()
        script = transport.script

        async def slow_unlock(source: Any, keys: Any, args: Any) -> Any:
            if args and args[0] == b"unlock" and not releasing.is_set():
                releasing.set()  # the holder's release: not sent before the second cancel
                await asyncio.sleep(0.2)
            return await script(source, keys, args)

        transport.script = slow_unlock
        waiter = asyncio.ensure_future(c.get_or_set("slow", lambda: "waiter", ttl=60))
        quitter = asyncio.ensure_future(c.get_or_set("slow", lambda: "quitter", ttl=60))
        for _ in range(1000):  # until both poll the lock (a loaded machine may take a while)
            if c.stats()["lock_waits"] == 2:
                break
            await asyncio.sleep(0.01)
        assert c.stats()["lock_waits"] == 2
        holder.cancel()
        await releasing.wait()
        holder.cancel()
        quitter.cancel()
        await asyncio.sleep(0)
        quitter.cancel()
        for task in (holder, quitter):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await asyncio.wait_for(waiter, 10) == "waiter"  # a guard against a hang, not a timing
        assert await c.get("slow") == "waiter"

    run(_closing(AsyncCache(url, namespace="double-cancel", lock_wait=30, lock_ttl=60), body))


def test_cluster_batch_giving_up_is_backend_unavailable() -> None:
    """A Cluster bulk call whose pipeline redis-py gives up on (``ClusterError``,
    "TTL exhausted." after redirects) raises ``BackendUnavailable``, as a lost
    connection does, and sends nothing again."""
    import redis

    from statekit.cache.aio import _batch

    sent: list[Any] = []

    class Pipe:
        def execute_command(self, *args: Any) -> None:
            sent.append(args)

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            raise redis.exceptions.ClusterError("TTL exhausted.")

    class Client:
        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    class Transport:
        client = Client()
        limit = 4

    with pytest.raises(BackendUnavailable, match="TTL exhausted"):
        run(_batch(Transport(), [(b"MGET", b"a"), (b"MGET", b"b")]))
    assert sent == [("MGET", b"a"), ("MGET", b"b")]  # queued once, never again


def test_concurrent_gets_go_out_together_each_with_its_own_value(url: str) -> None:
    """100 gets at once on one loop (present, missing, undecodable and repeated keys):
    each caller gets its own key's value or default, in a handful of round trips
    (one ``MGET`` for the gets asked while another was in flight), not 100."""
    import redis

    async def body(c: AsyncCache) -> tuple[list[Any], int]:
        await c.set_many({f"k{i}": {"i": i} for i in range(0, 100, 2)})
        await c.get("warm")
        before = await asyncio.to_thread(_mgets, url)
        keys = [f"k{i}" for i in range(100)] + ["k4", "k4"]
        got = await asyncio.gather(*(c.get(k, "none") for k in keys))
        return got, await asyncio.to_thread(_mgets, url) - before

    def _mgets(url: str) -> int:
        if url.startswith("memory://"):
            return 0
        with redis.Redis.from_url(url) as r:
            return int(r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))

    got, mgets = run(_closing(AsyncCache(url, namespace="batch"), body))
    assert got == [{"i": i} if i % 2 == 0 else "none" for i in range(100)] + [{"i": 4}, {"i": 4}]
    if not url.startswith("memory://"):
        assert 1 <= mgets <= 3  # the first get alone, then the other 101 in one MGET


def test_a_batched_get_failing_reaches_every_waiter_and_cancelled_ones_are_skipped(
        private_redis: RedisServer) -> None:
    """Redis paused under a batch: every waiting caller gets BackendUnavailable (or
    its default with on_error="miss"); a caller cancelled meanwhile takes nothing, and
    the cache serves the next gets once Redis is back."""

    async def body(c: AsyncCache, miss: AsyncCache) -> tuple[list[Any], list[Any], Any]:
        await c.set("k", 1)
        private_redis.pause()
        try:
            tasks = [asyncio.ensure_future(c.get(f"k{i}")) for i in range(20)]
            misses = [asyncio.ensure_future(miss.get(f"k{i}", "dflt")) for i in range(5)]
            await asyncio.sleep(0.01)
            tasks[3].cancel()
            raised = await asyncio.gather(*tasks, return_exceptions=True)
            missed = await asyncio.gather(*misses)
        finally:
            private_redis.resume()
        await asyncio.sleep(0.3)  # the breaker's reset
        return ([type(e).__name__ for e in raised], missed,
                await asyncio.gather(*(c.get("k") for _ in range(10))))

    async def both() -> tuple[list[Any], list[Any], Any]:
        c = AsyncCache(private_redis.url, namespace="bfail", timeout=0.3, breaker_reset=0.2,
                       failure_threshold=100)
        miss = AsyncCache(private_redis.url, namespace="bfail", timeout=0.3, on_error="miss")
        try:
            return await body(c, miss)
        finally:
            await c.aclose()
            await miss.aclose()

    raised, missed, after = run(both())
    assert raised[3] == "CancelledError"
    assert [name for i, name in enumerate(raised) if i != 3] == ["BackendUnavailable"] * 19
    assert missed == ["dflt"] * 5
    assert after == [1] * 10
