"""Review 16: an asyncio Redis Cluster client under a URL's ``max_connections``.

redis-py's asyncio ``RedisCluster`` has no waiting pool: a node whose
``max_connections`` connections are all in use fails the next command or pipeline at
once with ``MaxConnectionsError`` ("Too many connections"). The clients
:func:`statekit.redis.aio.create_async_client` makes for a URL with
``max_connections=N`` let N commands or pipelines in flight at a time (each takes at
most one connection of a node), shared by every store on the client; past it a
caller waits its turn, up to the socket timeout, then fails unsent naming
``max_connections`` (as a standalone URL's pool does).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from statekit.cache import AsyncCache
from statekit.errors import BackendUnavailable
from statekit.redis.aio import get_async_client
from statekit.sessions import AsyncSessionStore

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

KEYS = ["review16-cluster-pool-secret-key-0123456789"]


def _url(base: str, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{base}&{query}" if "?" in base else f"{base}?{query}"


def _most_per_node(client: Any) -> dict[str, int]:
    """Each node's connections the client ever opened (redis-py's asyncio
    ``ClusterNode`` keeps every connection it made in ``_connections``, never more than
    its ``max_connections``: past it, ``MaxConnectionsError``)."""
    return {node.name: len(node._connections) for node in client.get_nodes()}


@pytest.mark.parametrize("sessions", [False, True], ids=["cache", "cache-and-sessions"])
@pytest.mark.parametrize("n", [1, 2])
def test_fifty_concurrent_calls_within_max_connections(redis_cluster_url: str, n: int,
                                                       sessions: bool) -> None:
    """50 tasks on one loop, each a set, a get, and a bulk set and get across slots (a
    pipeline on each node) through one ``AsyncCache``, and with *sessions* a session
    created, loaded and saved with a user (the user's index in another slot) by an
    ``AsyncSessionStore`` of the same URL (the cache's shared client): every call
    succeeds (each case failed with ``MaxConnectionsError`` before), and no node ever
    has more than N connections (redis-py's count of each node's connections)."""
    url = _url(redis_cluster_url, max_connections=n, socket_timeout=10)
    prefix = f"review16-cpool-{n}-{sessions}"

    async def main() -> dict[str, int]:
        cache = AsyncCache(url, namespace=prefix, on_error="raise")
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix=prefix)

        async def one(i: int) -> None:
            assert await cache.set(f"k{i}", {"i": i})
            assert await cache.get(f"k{i}") == {"i": i}
            many = {f"m{i}:{j}": j for j in range(6)}  # six keys: several slots and nodes
            assert await cache.set_many(many)
            assert await cache.get_many(list(many)) == many
            if sessions:
                session = await store.create({"n": i}, user_id=f"user{i % 5}")
                loaded = await store.load(session.sid)
                assert loaded is not None and loaded["n"] == i
                loaded["n"] = i + 1
                assert await store.save(loaded)

        try:
            await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(50)]), 120)
            return _most_per_node(get_async_client(url))
        finally:
            await cache.aclose()
            await store.aclose()

    most = asyncio.run(main())
    assert most and all(count <= n for count in most.values()), most


class _Holder:
    """A task holding one turn of *client*'s gate (``statekit_gate``: its
    ``max_connections`` calls in flight) until :meth:`release`; *then* is called right
    after it gave the turn back, in the same loop pass."""

    def __init__(self, client: Any, then: Any = None) -> None:
        self.held = asyncio.Event()
        self._go = asyncio.Event()
        self._then = then
        self.task = asyncio.ensure_future(self._hold(client.statekit_gate))

    async def _hold(self, gate: Any) -> None:
        token = await gate.enter()
        try:
            self.held.set()
            await self._go.wait()
        finally:
            gate.leave(token)
        if self._then is not None:
            self._then()

    async def started(self) -> _Holder:
        await asyncio.wait_for(self.held.wait(), 10)
        return self

    async def release(self) -> None:
        self._go.set()
        await asyncio.wait_for(self.task, 10)


_BUSY = (r"all 1 connections of the pool \(max_connections\) were in use and none came free "
         r"within 1 s \(nothing was sent\)")


def test_past_the_wait_a_call_fails_unsent_naming_max_connections(redis_cluster_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every turn taken (here: the one of ``max_connections=1``, held by the test): a
    cache get, a set, a bulk set (a pipeline) and a session save wait up to the
    socket timeout, then raise ``BackendUnavailable`` naming ``max_connections``, once
    (not waited again by the transport's retries); nothing was written. Given back,
    the next calls work. The waits for a turn are counted, not timed: a bound of
    2.5 s on the one wait of 1 s failed under load now and then."""
    from statekit.redis.aio import _ClusterGate

    url = _url(redis_cluster_url, max_connections=1, socket_timeout=1, retries=2)
    waits: list[None] = []
    enter = _ClusterGate.enter

    def counted(gate: _ClusterGate) -> Any:
        waits.append(None)
        return enter(gate)

    async def main() -> None:
        cache = AsyncCache(url, namespace="review16-cpool-wait", on_error="raise")
        store = AsyncSessionStore(url, secret_keys=KEYS, key_prefix="review16-cpool-wait")
        try:
            assert await cache.set("k", 1)
            session = await store.create({"n": 1})
            holder = await _Holder(get_async_client(url)).started()
            try:
                for call in (lambda: cache.get("k"), lambda: cache.set("k", 2),
                             lambda: cache.set_many({"k": 3, "other": 3}),
                             lambda: store.save(session, force=True)):
                    waits.clear()
                    started = time.monotonic()
                    with monkeypatch.context() as m:
                        m.setattr(_ClusterGate, "enter", counted)
                        with pytest.raises(BackendUnavailable, match=_BUSY):
                            await asyncio.wait_for(call(), 30)
                    assert len(waits) == 1  # one wait for a turn (retried: three)
                    assert time.monotonic() - started >= 0.9  # the socket timeout's (30 s: no hang)
            finally:
                await holder.release()
            assert await cache.get_many(["k", "other"]) == {"k": 1}  # neither write went out
            loaded = await store.load(session.sid)
            assert loaded is not None and loaded["n"] == 1
        finally:
            await cache.aclose()
            await store.aclose()

    asyncio.run(main())


def test_a_caller_cancelled_while_waiting_takes_no_turn(redis_cluster_url: str) -> None:
    """Commands of the client waiting for the one turn (``max_connections=1``) are
    cancelled: one while it waits, one as the turn is handed to it (cancelled in the
    same loop pass as the holder gives it back, before it runs). Neither keeps a turn
    nor gives back one it did not take: the command after them is served, and
    afterwards the turn can be held (none lost) and, held, leaves no other (none
    made): a cache call then waits and fails."""
    url = _url(redis_cluster_url, max_connections=1, socket_timeout=1)

    async def main() -> None:
        cache = AsyncCache(url, namespace="review16-cpool-cancel", on_error="raise")
        try:
            assert await cache.set("k", 1)
            client = get_async_client(url)
            await client.set("review16-cpool-cancel-raw", b"v")
            waiting: list[asyncio.Future[Any]] = []
            holder = await _Holder(client, then=lambda: waiting[1].cancel()).started()
            waiting += [asyncio.ensure_future(client.get("review16-cpool-cancel-raw")) for _ in range(3)]
            for _ in range(5):  # each in the gate's queue (nothing else to wait for)
                await asyncio.sleep(0)
            assert not any(w.done() for w in waiting)
            waiting[0].cancel()  # while waiting
            await holder.release()  # the turn handed to waiting[1], cancelled then
            results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
            assert isinstance(results[0], asyncio.CancelledError)
            assert isinstance(results[1], asyncio.CancelledError)
            assert results[2] == b"v"
            held = await _Holder(client).started()  # the turn is there (none lost) ...
            try:
                with pytest.raises(BackendUnavailable, match=_BUSY):  # ... and the only one
                    await asyncio.wait_for(cache.get("k"), 30)
            finally:
                await held.release()
            assert await cache.get("k") == 1
        finally:
            await cache.aclose()

    asyncio.run(main())


def test_the_generation_listener_connects_under_max_connections(redis_cluster_url: str) -> None:
    """A Cluster cache's generation listener (which keeps the namespace's generation
    current, so a get is one round trip) connects on a URL with ``max_connections``:
    its unpooled connection was given the pool's ``max_connections`` and failed to
    be made (``TypeError``), every time, so every get read the generation counter too
    (two round trips; ``AsyncCache.get`` on such a URL ~2x slower)."""
    from statekit.cache import Cache

    cache = Cache(_url(redis_cluster_url, max_connections=8), namespace="review16-cpool-gen")
    try:
        assert cache.set("k", 1)
        assert cache.get("k") == 1
        listener = cache._listener
        assert listener is not None
        assert listener.connected.wait(10), "the generation listener did not connect within 10 s"
    finally:
        cache.close()
