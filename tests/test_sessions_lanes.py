"""The session near cache's key lanes (a tracking transport's shared connections),
tried on real servers where they could break: a small pool, a lane's connection
dropped by a failed command, a lane held longer than the socket timeout, a lane
used while the store closes.

Each test names what it guards; see :mod:`statekit.redis.transport` ("Concurrency")
and docs/starlette.md ("Near cache, on by default")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
import test_redis_gevent  # tests/ is on sys.path: its paused-child runner
from test_broadcast_async import until

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import run_threads, wait_for
from statekit.redis.transport import TRACKED_LANES, lane_index
from statekit.sessions import AsyncSessionStore, Session, SessionStore
from statekit.sessions.redis import RedisEngine

pytestmark = pytest.mark.redis

KEYS = ["lanes-secret"]
T = TypeVar("T")


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


@contextlib.contextmanager
def _held(store: SessionStore, session: Session) -> Iterator[None]:
    """Another thread holds the shared connection of *session*'s lane meanwhile (a
    command stuck on it)."""
    lock = _engine(store).transport._lane_lock(lane_index(session.key, TRACKED_LANES))
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        yield
    finally:
        done.set()
        holder.join()


def _answered(call: Callable[[], T]) -> T | None:
    """*call*'s result, ``None`` for ``BackendUnavailable``."""
    try:
        return call()
    except BackendUnavailable:
        return None


def _save_timing_out(store: SessionStore, session: Session, url: str) -> None:
    """A save of *session* (loaded, changed) while Redis pauses writes: it times out,
    ``BackendUnavailable`` (redis-py closes its lane's connection)."""
    mine = store.load(session.sid)
    assert mine is not None
    mine["n"] = -1
    admin = redis.Redis.from_url(url)
    admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
    try:
        with pytest.raises(BackendUnavailable, match="outcome is unknown"):
            store.save(mine)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


async def _awarm(store: AsyncSessionStore, session: Session) -> None:
    """Load until the asyncio store keeps a copy (the listener connects on first use)."""
    engine: Any = store.engine
    for _ in range(500):
        await store.load(session.sid)
        if engine.listener.connected.is_set() and session.key in engine.near.data:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no near copy")


def _async_store(url: str) -> AsyncSessionStore:
    """An asyncio store with the near cache, its own key prefix."""
    return AsyncSessionStore(url, secret_keys=KEYS, key_prefix="lanes" + uuid.uuid4().hex[:6], near_cache=100)


async def _lane_of(store: AsyncSessionStore, session: Session) -> tuple[Any, Any]:
    """The asyncio store's transport on this loop and *session*'s lane of it."""
    transport: Any = await store.engine._transport()  # type: ignore[attr-defined]
    return transport, transport._lanes[lane_index(session.key, len(transport._lanes))]


@pytest.fixture
def stores(redis_line_url: str) -> Iterator[tuple[SessionStore, SessionStore]]:
    """Two processes' stores (their own listeners and lanes), commands timing out
    after 0.5 s."""
    url = redis_line_url + "?socket_timeout=0.5"
    pair = tuple(SessionStore(url, secret_keys=KEYS, near_cache=100) for _ in range(2))
    yield pair  # type: ignore[misc]
    for s in pair:
        s.close()


@pytest.mark.parametrize("size", [2, 4])
def test_a_small_pool_serves_every_lane_and_leaves_room_for_pipelines(redis_line_url: str, size: int) -> None:
    """``max_connections=4`` (or 2): the shared connections must not take the whole
    pool (sessions on the other lanes could never get one, nor the pipelines of a
    listing), whatever the number of threads."""
    store = SessionStore(redis_line_url + f"?max_connections={size}", secret_keys=KEYS, near_cache=100)
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
    other = _on_lane(a, lane_index(s.key, TRACKED_LANES), {"n": 0})
    _save_timing_out(a, other, redis_line_url)  # its connection is closed
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
    with _held(a, s):
        with pytest.raises(BackendUnavailable, match="busy"):
            a.load(s.sid, min_version=10**6)  # past the copy: a command on that lane
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


def test_a_fork_while_a_lane_is_held_serves_the_child(stores: tuple[SessionStore, SessionStore]) -> None:
    """``fork()`` while another thread holds a shared connection (mid-command): the
    child neither waits for that lock (no thread releases it there) nor uses the
    parent's socket; its loads and saves of that lane's sessions run on its own
    connection, and the parent's lane is intact after."""
    a, _ = stores
    s = a.create({"n": 1})
    _warm(a, s)
    with _held(a, s):
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one load and one save of s, then report
            code = 1
            try:
                mine = a.load(s.sid, min_version=10**6)
                assert mine is not None
                mine["n"] = 2
                assert a.save(mine)
                os.write(wr, b"ok")
                code = 0
            finally:
                os._exit(code)
        os.close(wr)
        with os.fdopen(rd, "rb") as f:
            said = f.read()
        _, status = os.waitpid(pid, 0)
    assert (os.waitstatus_to_exitcode(status), said) == (0, b"ok")
    seen = a.load(s.sid, min_version=10**6)  # the parent's lane, after the child's save
    assert seen is not None and seen["n"] == 2


def test_a_save_cut_by_a_timeout_is_never_sent_again(stores: tuple[SessionStore, SessionStore],
                                                     redis_line_url: str) -> None:
    """A save on a lane times out (writes paused): ``BackendUnavailable``, and the
    script is not sent again, on that lane or another (the server ran it at most
    once: one ``EVALSHA`` at most, the version moved by one at most); the next
    save of that lane runs on a new connection."""
    a, _ = stores
    s = a.create({"n": 1})
    admin = redis.Redis.from_url(redis_line_url)

    def evalshas() -> int:
        return int(admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalshas()
    _save_timing_out(a, s, redis_line_url)
    stored = a.load(s.sid, min_version=10**6)
    assert stored is not None and stored.version in (s.version, s.version + 1)
    assert evalshas() - before <= 1
    stored["n"] = 3
    assert a.save(stored)
    assert a.load(s.sid, min_version=10**6)["n"] == 3  # type: ignore[index]


def test_a_cancelled_async_save_leaves_its_lane_in_step(redis_line_url: str) -> None:
    """A request cancelled between its save's send and reply (writes paused; a client
    gone, a timeout middleware): the lane's connection is dropped, so the reply that
    comes later is never read as the next command's. The next loads of sessions of
    that lane (queued behind it, and after) get their own hashes. The save is
    cancelled while it waits (writes paused for 10 s, its timeout 10 s, until the
    UNPAUSE): with the default 1 s of both, a loaded machine that took longer to
    cancel it would see it time out instead."""
    store = _async_store(f"{redis_line_url}?socket_timeout=10")
    admin = redis.Redis.from_url(redis_line_url)

    async def main() -> list[object]:
        s = await store.create({"who": "s"})
        transport = await store.engine._transport()  # type: ignore[attr-defined]
        count = len(transport._lanes)
        other = await store.create({"who": "other"})
        while lane_index(other.key, count) != lane_index(s.key, count):
            other = await store.create({"who": "other"})
        mine = await store.load(s.sid)
        assert mine is not None
        mine["who"] = "s2"
        admin.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
        try:
            save = asyncio.ensure_future(store.save(mine))
            await asyncio.sleep(0.2)  # sent, waiting for its reply
            queued = asyncio.ensure_future(store.load(other.sid, min_version=10**6))  # behind it on the lane
            await asyncio.sleep(0)
            save.cancel()
            out: list[object] = []
            try:
                await save
            except asyncio.CancelledError:
                out.append("cancelled")
            loaded = await queued
            out.append(loaded["who"] if loaded else None)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        again = await store.load(other.sid, min_version=10**6)
        out.append(again["who"] if again else None)
        after = await store.load(s.sid, min_version=10**6)
        out.append(after["who"] in ("s", "s2") if after else None)
        await store.aclose()
        return out

    assert asyncio.run(main()) == ["cancelled", "other", "other", True]


GEVENT_CHILD = r"""
from gevent import monkey
monkey.patch_all()

import json, sys
import gevent

from statekit.errors import BackendUnavailable
from statekit.redis.transport import lane_index
from statekit.sessions import SessionStore

store = SessionStore(sys.argv[1], secret_keys=["k" * 32], key_prefix="lanes-gevent", near_cache=100)
count = len(store.engine.transport._shared)
sids = []
while len(sids) < 8:  # 8 sessions of one lane
    s = store.create({"a": 1})
    if lane_index(s.key, count) == 0:
        sids.append(s.sid)
        store.load(s.sid)

def load(sid):
    try:
        store.load(sid, min_version=10**6)
        return "returned"
    except BackendUnavailable as e:
        return "busy" if "busy" in str(e) else "timeout" if "imeout" in str(e) else str(e)

print("ready", flush=True)
sys.stdin.readline()  # the server is paused now
print(json.dumps({"outcomes": [g.get() for g in [gevent.spawn(load, sid) for sid in sids]]}), flush=True)
"""


def test_greenlets_on_one_lane_of_a_paused_redis_fail_within_their_timeouts(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """gevent (``threading.Lock`` patched), Redis paused (SIGSTOP): 8 greenlets load
    sessions of one lane. The first times out on its socket; the others give up
    waiting for the lane after the socket timeout (``busy``) instead of each taking
    the lane in turn for its own reconnect attempts (up to 86 s for the last of
    them). (tests/test_redis_gevent.py: the hub keeps running meanwhile.)"""
    monkeypatch.setattr(test_redis_gevent, "CHILD", GEVENT_CHILD)  # its child protocol, this child
    report = test_redis_gevent.run_paused(server, "session-lanes")
    outcomes = report["outcomes"]
    assert set(outcomes) <= {"busy", "timeout"}, report
    assert "busy" in outcomes, report


def test_a_lane_still_connecting_holds_up_only_its_own_keys(redis_line_url: str) -> None:
    """The first command of a lane connects it; a connect that hangs (a paused or
    unreachable server: redis-py's retries take seconds) must not hold up the first
    commands of the other lanes: they connect their own meanwhile."""
    store = SessionStore(redis_line_url, secret_keys=KEYS, near_cache=100)
    try:
        s = store.create({"n": 1})
        t = _engine(store).transport
        pool = t.client.connection_pool
        stuck, go = threading.Event(), threading.Event()
        get_connection = pool.get_connection

        def hanging(*args: object, **kwargs: object) -> object:
            if threading.current_thread().name == "first":  # this lane's connect hangs
                stuck.set()
                go.wait(10)
            return get_connection(*args, **kwargs)

        t.close()  # no lane connected yet
        i = lane_index(s.key, TRACKED_LANES)
        other = _on_lane(store, (i + 1) % TRACKED_LANES, {"n": 2})
        t.close()
        order: list[str] = []
        pool.get_connection = hanging  # type: ignore[method-assign]
        def load(what: str, session: Session) -> None:  # from Redis: a command on its lane
            order.append(f"{what} {store.load(session.sid, min_version=10**6) is not None}")

        first = threading.Thread(target=load, args=("first", s), name="first")
        first.start()
        try:
            assert stuck.wait(10)
            load("other", other)  # another lane, meanwhile
        finally:
            go.set()
            first.join()
            pool.get_connection = get_connection  # type: ignore[method-assign]
        assert order == ["other True", "first True"]
    finally:
        store.close()


def test_the_keyless_commands_of_threads_spread_over_the_lanes() -> None:
    """A command with no key (the ``PING`` barrier after a rotation or a logout,
    ``SCRIPT LOAD``) takes "this thread's" lane. Thread ids are aligned addresses
    (multiples of 8 and more): ``ident % 8`` sent every thread's to lane 0, where
    they queued behind (and held up) the commands of that lane's sessions."""
    lanes: set[int] = set()
    together = threading.Barrier(8)  # all alive at once: an ended thread's id is reused

    def run(i: int) -> None:
        together.wait(10)
        lanes.add(lane_index(None, TRACKED_LANES))

    run_threads(run, 8)
    assert len(lanes) > 1


def test_copies_stay_coherent_while_saves_time_out(stores: tuple[SessionStore, SessionStore],
                                                   redis_line_url: str) -> None:
    """Bounded stress: 4 threads of process A load and save 16 sessions (every lane)
    while writes are paused now and then (A's saves time out, redis-py closes those
    lanes' connections), and process B changes them. After each change of B and its
    ``PING`` (the invalidation is on A's host then), A never serves an older version
    of that session: every tracked connection A lost, A found lost itself. (Its one
    failure, 15 served after 16 in a clean-clone make test, was ``pending()`` reading
    the listener's ``_handling`` before polling its socket: see
    test_listener_races.py, the invalidation taken off the socket during the check.)"""
    a, b = stores
    sessions = [_on_lane(a, i % TRACKED_LANES, {"n": 0}) for i in range(16)]
    for s in sessions:
        _warm(a, s)
    admin = redis.Redis.from_url(redis_line_url)
    stop = threading.Event()
    timeouts = [0]

    def process_a(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            s = rng.choice(sessions)
            try:
                mine = a.load(s.sid)
                if mine is None:
                    continue
                mine[f"a{i}"] = rng.random()
                a.save(mine)
            except BackendUnavailable:  # a save timed out, or waited for its lane too long
                timeouts[0] += 1

    threads = [threading.Thread(target=process_a, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    stale: list[tuple[int, int]] = []
    try:
        rng = random.Random(99)
        for round_ in range(60):
            if round_ % 15 == 5:
                admin.execute_command("CLIENT", "PAUSE", 700, "WRITE")  # A's saves meanwhile time out
            s = rng.choice(sessions)
            for _ in range(20):
                theirs = b.load(s.sid, min_version=10**6)
                assert theirs is not None
                theirs["n"] += 1
                try:
                    if b.save(theirs):
                        break
                except BackendUnavailable:  # paused
                    continue
            admin.ping()  # the invalidations of B's save are on A's host now
            seen = wait_for(lambda s=s: _answered(lambda: a.load(s.sid)), timeout=10, what="a load")
            if seen.version < theirs.version:
                stale.append((seen.version, theirs.version))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert timeouts[0] > 0  # the pauses cut some of A's saves
    assert stale == []


def test_a_save_that_times_out_reconnects_its_own_lane_only(stores: tuple[SessionStore, SessionStore],
                                                            redis_line_url: str) -> None:
    """One save times out (writes paused): its lane's connection is replaced, the
    other lanes keep theirs (each reconnect flushes every near copy again and costs a
    handshake: a slow command should not make all 8 reconnect). A wrong-node reply
    (a failover) still sends every lane to the new master (tests of Sentinel)."""
    a, _ = stores
    sessions = [_on_lane(a, i, {"n": i}) for i in range(TRACKED_LANES)]
    for s in sessions:
        _warm(a, s)
    _save_timing_out(a, sessions[0], redis_line_url)
    admin = redis.Redis.from_url(redis_line_url)
    before = admin.info("stats")["total_connections_received"]
    for s in sessions:  # one command on each lane
        assert a.load(s.sid, min_version=10**6) is not None
    assert admin.info("stats")["total_connections_received"] - before == 1


def test_lanes_set_up_for_a_lost_listener_do_not_flush_again(stores: tuple[SessionStore, SessionStore],
                                                             redis_line_url: str) -> None:
    """The listener reconnects (its connection killed): the near caches were flushed
    then, and each lane reconnects at its next command to report to the new listener
    connection. Those reconnects must not flush again: what the old connections
    tracked was gone with the old listener, and the copies kept since were tracked by
    lanes of the new one (8 lanes: 8 more flushes of every copy after each
    listener reconnect)."""
    a, _ = stores
    s0, s1 = _on_lane(a, 0, {"n": 0}), _on_lane(a, 1, {"n": 1})
    _warm(a, s0)
    _warm(a, s1)
    listener = _engine(a).listener
    assert listener is not None
    generation = listener.generation
    with redis.Redis.from_url(redis_line_url) as admin:
        admin.client_kill_filter(_id=listener.client_id)
    wait_for(lambda: listener.generation > generation and listener.connected.is_set(), timeout=10,
             what="the listener's reconnect")
    _warm(a, s0)  # lane 0 reports to the new listener connection: a copy again
    assert a.load(s1.sid, min_version=10**6) is not None  # lane 1's first command since
    near = _engine(a).near
    assert near is not None and s0.key in near.data


def test_async_lanes_set_up_for_a_lost_listener_do_not_flush_again(redis_line_url: str) -> None:
    """The same on the asyncio store: after the listener reconnected, the first
    command of another lane (set up for the old listener connection: replaced) keeps
    the copy a load kept since."""
    store = _async_store(redis_line_url)
    engine: Any = store.engine

    async def main() -> bool:
        s0 = await store.create({"n": 0})
        count = len((await engine._transport())._lanes)
        s1 = await store.create({"n": 1})
        while lane_index(s1.key, count) == lane_index(s0.key, count):
            s1 = await store.create({"n": 1})
        await _awarm(store, s0)
        await _awarm(store, s1)
        generation = engine.listener.generation
        with redis.Redis.from_url(redis_line_url) as admin:
            admin.client_kill_filter(_id=engine.listener.client_id)
        for _ in range(1000):
            if engine.listener.generation > generation and engine.listener.connected.is_set():
                break
            await asyncio.sleep(0.01)
        await _awarm(store, s0)
        assert await store.load(s1.sid, min_version=10**6) is not None  # the other lane's first since
        kept = s0.key in engine.near.data
        await store.aclose()
        return kept

    assert asyncio.run(main())


def test_an_async_lane_killed_by_the_server_flushes_when_found(redis_line_url: str) -> None:
    """The asyncio store: the server closes the connection a copy was tracked on
    (``CLIENT KILL``); the next command on that lane finds it closed and the copies
    go, so a change made elsewhere meanwhile is read, not the copy."""
    store = _async_store(redis_line_url)
    other_process = SessionStore(redis_line_url, secret_keys=KEYS, key_prefix=store.key_prefix)
    engine: Any = store.engine

    async def main() -> tuple[int, int]:
        s = await store.create({"n": 1})
        await _awarm(store, s)
        transport = await engine._transport()
        lanes = transport._lanes
        i = lane_index(s.key, len(lanes))
        other = await store.create({"n": 0})
        while lane_index(other.key, len(lanes)) != i:
            other = await store.create({"n": 0})
        conn = lanes[i].conn
        with redis.Redis.from_url(redis_line_url) as admin:
            admin.client_kill_filter(_id=await _client_id(conn))
        changed = other_process.load(s.sid)
        assert changed is not None
        changed["n"] = 2
        assert other_process.save(changed)  # no invalidation comes: the connection tracking s is gone
        before = (await store.load(s.sid))["n"]  # type: ignore[index]  # the copy, until the loss is found
        assert await store.load(other.sid, min_version=10**6) is not None  # finds it closed
        after = (await store.load(s.sid))["n"]  # type: ignore[index]
        await store.aclose()
        return before, after

    async def _client_id(conn: Any) -> int:
        await conn.send_command("CLIENT", "ID")
        return int(await conn.read_response())

    try:
        assert asyncio.run(main()) == (1, 2)
    finally:
        other_process.close()


def test_an_async_command_behind_aclose_gives_its_connection_back(redis_line_url: str) -> None:
    """A request still running while the store closes (a shutdown with requests in
    flight): its command, queued on a lane behind ``aclose()``, runs on a new
    connection once the lane is emptied; that connection goes back to the pool
    (closed: tracking on) instead of staying in the closed transport's lane."""
    store = _async_store(redis_line_url)

    async def main() -> tuple[bool, int]:
        s = await store.create({"n": 1})
        transport, lane = await _lane_of(store, s)
        release = asyncio.Event()

        async def hold() -> None:
            async with lane.lock:
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(transport.aclose())  # waits for the lane, first
        await asyncio.sleep(0)
        late = asyncio.ensure_future(transport.command(b"HGETALL", s.key))  # then this one
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, closing, late)
        for _ in range(100):  # the connection given back
            if not transport._pool._in_use_connections:
                break
            await asyncio.sleep(0.01)
        return lane.conn is None, len(transport._pool._in_use_connections)

    assert asyncio.run(main()) == (True, 0)


def test_an_async_command_cancelled_while_its_lane_is_checked_gives_the_connection_back(
        redis_line_url: str) -> None:
    """A task cancelled while its lane's idle connection is checked (``can_read``,
    an await: redis-py before 8 reads the socket there) must not lose that
    connection: it is closed and given back to the pool, not left in use for good
    (each such cancel took one connection of the pool out of service)."""
    store = _async_store(redis_line_url)

    async def main() -> tuple[int, bool]:
        s = await store.create({"n": 1})
        transport, lane = await _lane_of(store, s)
        conn = lane.conn
        checking = asyncio.Event()

        async def slow_check(*args: Any, **kwargs: Any) -> bool:
            checking.set()
            await asyncio.sleep(10)
            return False

        conn.can_read = conn.can_read_destructive = slow_check
        conn._statekit_last -= 1  # idle for a while: checked before use
        # a write (never sent here: cancelled at the check): a read skips the check
        task = asyncio.ensure_future(transport.command(b"PEXPIRE", s.key, 86_400_000))
        await until(checking.is_set, "the idle connection's check")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        del conn.can_read, conn.can_read_destructive  # (the pool may lend it again)

        def lost() -> int:  # connections in use that no lane keeps
            kept = sum(lane.conn is not None for lane in transport._lanes)
            return len(transport._pool._in_use_connections) - kept

        for _ in range(100):
            if not lost():
                break
            await asyncio.sleep(0.01)
        in_use = lost()
        again = await store.load(s.sid, min_version=10**6) is not None
        await store.aclose()
        return in_use, again

    assert asyncio.run(main()) == (0, True)


PRELOADED_CHILD = r"""
import json, sys

from statekit.redis.transport import lane_index
from statekit.sessions import SessionStore

# made before gevent patches threading, as a preloaded app (gunicorn --preload -k
# gevent) makes it in the master; used by greenlets once the worker patched
store = SessionStore(sys.argv[1], secret_keys=["k" * 32], key_prefix="lanes-preload", near_cache=100)

from gevent import monkey
monkey.patch_all()
import gevent
import gevent.event

from statekit.errors import BackendUnavailable

transport = store.engine.transport
count = len(transport._shared)
sids = {}
while len(sids) < count:
    s = store.create({"a": 1})
    sids.setdefault(lane_index(s.key, count), s.sid)
held = {}
holding = gevent.event.Event()

def hold():  # a blocking command on this greenlet's lane (keyless: its own lane)
    held["lane"] = lane_index(None, count)
    holding.set()
    transport.command(b"BLPOP", b"lanes-preload-nothing", b"0.3")

def load():  # a session of that lane, meanwhile
    holding.wait()
    try:
        return "returned" if store.load(sids[held["lane"]], min_version=10**6) is not None else "none"
    except BackendUnavailable as e:
        return "busy" if "busy" in str(e) else str(e)

holder, loader = gevent.spawn(hold), gevent.spawn(load)
print(json.dumps({"load": loader.get(), "hold": holder.get()}), flush=True)
"""


def test_a_store_made_before_gevent_patches_waits_for_its_lanes_cooperatively(redis_line_url: str) -> None:
    """A store made before ``monkey.patch_all()`` (a preloaded app under gunicorn's
    gevent worker) and used by greenlets after: a greenlet waiting for a lane another
    one holds (a command in flight) must yield to the hub, so the holder gets its
    reply and the waiter its turn. With the lane locks made with the store (real
    locks) the waiter blocked the whole worker until it gave up (``busy``)."""
    url = f"{redis_line_url}?socket_timeout=0.5"
    out = subprocess.run([sys.executable, "-c", PRELOADED_CHILD, url], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"load": "returned", "hold": None}
