"""The session near cache's key lanes (a tracking transport's shared connections),
tried on real servers where they could break: a small pool, a lane's connection
dropped by a failed command, a lane held longer than the socket timeout, a lane
used while the store closes.

Each test names what it guards; see :mod:`statekit.redis.transport` ("Concurrency")
and docs/starlette.md ("Near cache, on by default")."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import run_threads, wait_for
from statekit.redis.transport import TRACKED_LANES, lane_index
from statekit.sessions import AsyncSessionStore, Session, SessionStore
from statekit.sessions.redis import RedisEngine

pytestmark = pytest.mark.redis

KEYS = ["lanes-secret"]


def _engine(store: SessionStore) -> RedisEngine:
    assert isinstance(store.engine, RedisEngine)
    return store.engine


def _warm(store: SessionStore, session: Session) -> None:
    """Load until the copy is kept (the listener connects on first use)."""
    near = _engine(store).near
    assert near is not None
    wait_for(lambda: store.load(session.sid) is not None and session.key in near.data,
             timeout=10, what="a near-cache copy")


def _on_lane(store: SessionStore, lane: int, data: dict[str, object], user_id: str | None = None) -> Session:
    """A new session whose key picks lane *lane* of :data:`TRACKED_LANES` (the others
    made on the way are destroyed)."""
    while True:
        s = store.create(data, user_id=user_id)
        if lane_index(s.key, TRACKED_LANES) == lane:
            return s
        store.destroy(s)


@pytest.fixture
def stores(redis_line_url: str) -> Iterator[tuple[SessionStore, SessionStore]]:
    """Two processes' stores (their own listeners and lanes), commands timing out
    after 0.5 s."""
    url = redis_line_url + "?socket_timeout=0.5"
    pair = tuple(SessionStore(url, secret_keys=KEYS, near_cache=100) for _ in range(2))
    yield pair  # type: ignore[misc]
    for s in pair:
        s.close()


def test_a_small_pool_serves_every_lane_and_leaves_room_for_pipelines(redis_line_url: str) -> None:
    """``max_connections=4``: the shared connections must not take the whole pool
    (sessions on the other lanes could never get one, nor the pipelines of a
    listing), whatever the number of threads."""
    store = SessionStore(redis_line_url + "?max_connections=4", secret_keys=KEYS, near_cache=100)
    try:
        sessions = [_on_lane(store, i % TRACKED_LANES, {"n": i}, "u") for i in range(4 * TRACKED_LANES)]

        def run(i: int) -> None:
            for s in sessions[i::4]:
                loaded = store.load(s.sid)
                assert loaded is not None
                loaded["seen"] = True
                assert store.save(loaded)

        run_threads(run, 4)
        assert len(store.list_user_sessions("u")) == len(sessions)  # a pipeline, beside the lanes
        assert all(store.load(s.sid)["seen"] for s in sessions)  # type: ignore[index]
    finally:
        store.close()


def test_a_small_pool_serves_the_async_lanes_and_pipelines(redis_line_url: str) -> None:
    """The same with the asyncio store: concurrent requests on every lane, a listing
    and a revocation, on a pool of 4."""
    prefix = "lanes" + uuid.uuid4().hex[:6]
    store = AsyncSessionStore(redis_line_url + "?max_connections=4", secret_keys=KEYS, key_prefix=prefix,
                              near_cache=100)

    async def main() -> tuple[int, int, int]:
        sessions = [await store.create({"n": 0}, user_id="u") for _ in range(4 * TRACKED_LANES)]

        async def request(s: Session) -> None:
            loaded = await store.load(s.sid)
            assert loaded is not None
            loaded["n"] += 1
            await store.save(loaded)

        for _ in range(3):
            await asyncio.gather(*(request(s) for s in sessions))
        listed = len(await store.list_user_sessions("u"))
        counts = sum([(await store.load(s.sid))["n"] for s in sessions])  # type: ignore[index]
        revoked = await store.revoke_user("u")
        await store.aclose()
        return listed, counts, revoked

    listed, counts, revoked = asyncio.run(main())
    assert (listed, counts, revoked) == (32, 3 * 32, 32)


def test_a_lane_dropped_by_a_failed_command_flushes_at_once(stores: tuple[SessionStore, SessionStore],
                                                            redis_line_url: str) -> None:
    """A save times out (Redis pauses writes, as a failover does): redis-py closes
    that shared connection, and Redis forgets every key it tracked there. The copies
    must go then, not at the lane's next command: a session of that lane changed
    elsewhere meanwhile is read from Redis, not served from the copy."""
    a, b = stores
    s = a.create({"n": 1})
    _warm(a, s)
    lane = lane_index(s.key, TRACKED_LANES)
    other = _on_lane(a, lane, {"n": 0})
    mine = a.load(other.sid)
    assert mine is not None
    mine["n"] = 1
    admin = redis.Redis.from_url(redis_line_url)
    admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
    try:
        with pytest.raises(BackendUnavailable):
            a.save(mine)  # timed out: its connection is closed
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    theirs = b.load(s.sid)
    assert theirs is not None
    theirs["n"] = 2
    assert b.save(theirs)  # no invalidation reaches a: the connection tracking s is gone
    seen = a.load(s.sid)
    assert seen is not None and seen["n"] == 2


def test_a_lane_busy_past_the_socket_timeout_fails_its_other_keys(stores: tuple[SessionStore, SessionStore],
                                                                  ) -> None:
    """A command holds its shared connection for longer than the socket timeout (a
    paused Redis: its reconnects take redis-py's retries, seconds each). The other
    sessions of that lane get ``BackendUnavailable`` (nothing sent) once they waited
    the socket timeout for it, instead of each waiting for all the commands queued
    before them (8 threads on one lane of a paused Redis: up to 79 s each)."""
    a, _ = stores
    s = a.create({"n": 1})
    _warm(a, s)
    lane = _engine(a).transport._shared[lane_index(s.key, TRACKED_LANES)]  # type: ignore[index]
    assert lane is not None and lane.lock is not None
    held, done = threading.Event(), threading.Event()

    def hold() -> None:  # stands for a command stuck on that connection
        with lane.lock:  # type: ignore[union-attr]
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(BackendUnavailable, match="busy"):
            a.load(s.sid, min_version=10**6)  # past the copy: a command on that lane
    finally:
        done.set()
        holder.join()
    assert a.load(s.sid, min_version=10**6) is not None  # the lane serves again


def test_an_async_lane_busy_past_the_socket_timeout_fails_its_other_keys(redis_line_url: str) -> None:
    """The same on the asyncio store: a task holds a lane's connection (its lock) for
    longer than the socket timeout; a load on that lane raises ``BackendUnavailable``
    once it waited that long, and the lane serves again afterwards."""
    prefix = "lanes" + uuid.uuid4().hex[:6]
    store = AsyncSessionStore(redis_line_url + "?socket_timeout=0.5", secret_keys=KEYS, key_prefix=prefix,
                              near_cache=100)

    async def main() -> tuple[str, bool]:
        s = await store.create({"n": 1})
        transport = await store.engine._transport()  # type: ignore[attr-defined]
        lanes = transport._lanes
        lane = lanes[lane_index(s.key, len(lanes))]
        release = asyncio.Event()

        async def hold() -> None:  # stands for a command stuck on that connection
            async with lane.lock:
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(5, release.set)  # (a bound for a failing test)
        try:
            await store.load(s.sid, min_version=10**6)
            first = "answered"
        except BackendUnavailable as e:
            first = "busy" if "busy" in str(e) else str(e)
        release.set()
        await holder
        again = await store.load(s.sid, min_version=10**6) is not None
        await store.aclose()
        return first, again

    assert asyncio.run(main()) == ("busy", True)
