"""The session near cache (``SessionStore(near_cache=N)``) on real Redis servers.

Two stores stand for two processes: each has its own invalidation listener, its own
tracked socket and its own copies, exactly as two gunicorn workers would (one test
uses a real second process). What must hold: loads are served without a Redis call
while nothing changed; a change elsewhere drops the copy; a browser always reads its
own writes (the version token), also under concurrent writers; a dropped listener
flushes the copies and tracking resumes after it reconnects.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from test_cache_stale_review import free_inside_a_locked_section

from statekit.errors import ConfigError
from statekit.pytest_plugin import run_threads, wait_for
from statekit.sessions import Session, SessionStore, _near_size, parse_version_token
from statekit.sessions.redis import RedisEngine

pytestmark = pytest.mark.redis


def _engine(store: SessionStore) -> RedisEngine:
    assert isinstance(store.engine, RedisEngine)
    return store.engine


def _copies(store: SessionStore) -> dict[str, object]:
    """The store's near-cache entries (key -> copy)."""
    near = _engine(store).near
    assert near is not None
    return dict(near.data)


def _hgetalls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


@pytest.fixture
def pair(redis_line_url: str) -> Iterator[tuple[SessionStore, SessionStore]]:
    stores = tuple(SessionStore(redis_line_url, secret_keys=["near-secret"], near_cache=100)
                   for _ in range(2))
    yield stores  # type: ignore[misc]
    for s in stores:
        _engine(s).listener.stop()


def _warm(store: SessionStore, session: Session) -> None:
    """Load until the copy is kept (the listener connects on first use)."""
    wait_for(lambda: store.load(session.sid) is not None and session.key in _copies(store),
             timeout=10, what="a near-cache copy")


def _warm_new(store: SessionStore, data: dict[str, object]) -> Session:
    """A session created with *data* whose copy *store* keeps."""
    session = store.create(data)
    _warm(store, session)
    return session


def test_unchanged_sessions_load_without_redis(pair: tuple[SessionStore, SessionStore],
                                               redis_line_url: str) -> None:
    a, _ = pair
    s = _warm_new(a, {"cart": ["apple"], "n": 1})
    before, hits = _hgetalls(redis_line_url), _engine(a).near_hits
    for _ in range(50):
        loaded = a.load(s.sid)
        assert loaded is not None and loaded["cart"] == ["apple"] and loaded["n"] == 1
        loaded["cart"].append("pear")  # a request's changes never leak into the copy
    assert _hgetalls(redis_line_url) == before
    assert _engine(a).near_hits == hits + 50
    assert a.counters.get("near_hits") == hits + 50  # in statekit.metrics too


def test_a_save_keeps_its_result_locally(pair: tuple[SessionStore, SessionStore],
                                         redis_line_url: str) -> None:
    a, _ = pair
    s = _warm_new(a, {"n": 1})
    loaded = a.load(s.sid)
    assert loaded is not None
    loaded["n"] = 2
    assert a.save(loaded)
    before = _hgetalls(redis_line_url)
    again = a.load(s.sid, min_version=loaded.version)
    assert again is not None and again["n"] == 2 and again.version == loaded.version
    assert _hgetalls(redis_line_url) == before


def test_a_change_elsewhere_drops_the_copy(pair: tuple[SessionStore, SessionStore]) -> None:
    a, b = pair
    s = _warm_new(a, {"n": 1})
    # a's own save re-tracks the key, so b's later change still reaches a
    mine = a.load(s.sid)
    assert mine is not None
    mine["mine"] = True
    assert a.save(mine)
    assert s.key in _copies(a)
    theirs = b.load(s.sid)
    assert theirs is not None
    theirs["n"] = 99
    assert b.save(theirs)
    wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")
    seen = a.load(s.sid)
    assert seen is not None and seen["n"] == 99 and seen["mine"] is True


def test_revocation_and_logout_elsewhere_end_the_copy(pair: tuple[SessionStore, SessionStore]) -> None:
    a, b = pair
    s1 = a.create({"n": 1}, user_id="u1")
    s2 = a.create({"n": 2})
    _warm(a, s1)
    _warm(a, s2)
    assert b.revoke_user("u1") == 1
    wait_for(lambda: s1.key not in _copies(a), timeout=5, what="the invalidation")
    assert a.load(s1.sid) is None
    other = b.load(s2.sid)
    assert other is not None
    b.destroy(other)
    wait_for(lambda: s2.key not in _copies(a), timeout=5, what="the invalidation")
    assert a.load(s2.sid) is None


def test_rotation_elsewhere_leaves_a_tombstone(pair: tuple[SessionStore, SessionStore]) -> None:
    a, b = pair
    s = _warm_new(a, {"n": 1})
    moved = b.load(s.sid)
    assert moved is not None
    old_sid = moved.sid
    b.rotate(moved)
    wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")
    assert a.load(old_sid) is None  # a tombstone: no copy serves the old id the new state
    assert a.load(moved.sid) == {"n": 1}


def test_concurrent_writers_never_lose_an_update(pair: tuple[SessionStore, SessionStore]) -> None:
    """4 threads, each a browser incrementing its own key 150 times through either
    store at random, carrying its version token: every key ends at exactly 150 and
    every read saw the browser's previous write, while the copies served reads."""
    a, b = pair
    s = a.create({"owner": "me"})
    stale: list[tuple[int, int, int]] = []
    n = 150
    tokens = [0] * 4

    def browser(i: int) -> None:
        rnd = random.Random(i)
        token = 0
        for j in range(n):
            store = (a, b)[rnd.randrange(2)]
            session = store.load(s.sid, min_version=token)
            assert session is not None
            current = session.get(f"k{i}", 0)
            if current != j:
                stale.append((i, j, current))
            session[f"k{i}"] = current + 1
            assert store.save(session)
            token = session.version
        tokens[i] = token

    run_threads(browser, 4)
    assert stale == []
    # read as a browser would after the last write, with its token: a read without
    # one may be served by a copy whose invalidation is still on its way
    final = a.load(s.sid, min_version=max(tokens))
    expected = {f"k{i}": n for i in range(4)}
    assert final is not None and {k: final[k] for k in final if k.startswith("k")} == expected

    def untokened() -> dict[str, Any]:
        got = a.load(s.sid)
        return {k: got[k] for k in got if k.startswith("k")} if got is not None else {}

    wait_for(lambda: untokened() == expected, what="the copies caught up (invalidations arrived)")
    assert _engine(a).near_hits + _engine(b).near_hits > 0


def test_a_token_newer_than_the_copy_goes_to_redis(pair: tuple[SessionStore, SessionStore],
                                                   redis_line_url: str) -> None:
    a, _ = pair
    s = _warm_new(a, {"n": 1})
    copy = a.load(s.sid)
    assert copy is not None
    before = _hgetalls(redis_line_url)
    assert a.load(s.sid, min_version=copy.version) is not None  # same version: local
    assert _hgetalls(redis_line_url) == before
    assert a.load(s.sid, min_version=copy.version + 1) is not None  # newer: Redis
    assert _hgetalls(redis_line_url) == before + 1


def test_incr_moves_the_version(pair: tuple[SessionStore, SessionStore]) -> None:
    a, b = pair
    s = a.create({"n": 1})
    loaded = a.load(s.sid)
    assert loaded is not None
    version = loaded.version
    assert loaded.incr("hits") == 1
    assert loaded.version == version + 1
    assert a.version_token(loaded, str(version)) == str(version + 1)
    seen = b.load(s.sid, min_version=loaded.version)
    assert seen is not None and seen["hits"] == 1


def test_a_dropped_listener_flushes_and_tracking_resumes(pair: tuple[SessionStore, SessionStore],
                                                         redis_line_url: str) -> None:
    a, b = pair
    s = _warm_new(a, {"n": 1})
    listener = _engine(a).listener
    generation = listener.generation
    redis.Redis.from_url(redis_line_url).client_kill_filter(_id=str(listener.client_id))
    wait_for(lambda: listener.generation > generation and listener.connected.is_set(), timeout=10,
             what="the listener to reconnect")
    assert s.key not in _copies(a)
    _warm(a, s)  # through a socket set up for the new listener connection
    _change_reaches(a, b, s)


CHILD = textwrap.dedent('''
    import sys
    from statekit.sessions import SessionStore
    store = SessionStore(sys.argv[1], secret_keys=["near-secret"], near_cache=100)
    for line in sys.stdin:
        session = store.load(line.strip())
        session["n"] = session["n"] + 1
        store.save(session)
        print(session.version, flush=True)
''')


def test_another_process_changes_reach_the_copy(pair: tuple[SessionStore, SessionStore],
                                                redis_line_url: str) -> None:
    a, _ = pair
    s = a.create({"n": 0})
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_line_url], stdin=subprocess.PIPE,  # noqa: S603
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        for i in range(1, 21):
            _warm(a, s)
            child.stdin.write(s.sid + "\n")
            child.stdin.flush()
            version = int(child.stdout.readline())
            wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")
            seen = a.load(s.sid)
            assert seen is not None and seen["n"] == i and seen.version == version
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def test_the_near_cache_refuses_an_in_process_redis() -> None:
    from statekit.redis import memory_client

    with pytest.raises(ConfigError, match="near cache needs a standalone or Sentinel Redis"):
        SessionStore(client=memory_client("near"), secret_keys=["k"], near_cache=True)


def _a_change_elsewhere_reaches(a: SessionStore, b: SessionStore) -> None:
    """*a* (near cache on) keeps a copy; *b* changes the session; *a* drops its copy
    and loads the change."""
    try:
        _change_reaches(a, b, _warm_new(a, {"n": 1}))
    finally:
        a.close()


def _change_reaches(a: SessionStore, b: SessionStore, s: Any) -> None:
    """*b* sets ``n`` to 2 in the session *s* that *a* holds a near copy of: *a*
    drops its copy and loads the change."""
    other = b.load(s.sid)
    assert other is not None
    other["n"] = 2
    assert b.save(other)
    wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")
    seen = a.load(s.sid)
    assert seen is not None and seen["n"] == 2


def test_the_near_cache_on_a_resp3_client(redis_line_url: str) -> None:
    """Any standalone redis-py client: here one speaking RESP3 (maps for hashes)."""
    client = redis.Redis.from_url(redis_line_url, protocol=3)
    _a_change_elsewhere_reaches(SessionStore(client=client, secret_keys=["near-secret"], near_cache=100),
                                SessionStore(redis_line_url, secret_keys=["near-secret"]))


@pytest.mark.sentinel
def test_the_near_cache_on_sentinel(redis_sentinel: Any) -> None:
    _a_change_elsewhere_reaches(SessionStore(redis_sentinel.url, secret_keys=["near-secret"], near_cache=100),
                                SessionStore(redis_sentinel.url, secret_keys=["near-secret"]))


@pytest.mark.parametrize("value,size", [
    (True, 10_000), (False, 0), (0, 0), (None, 0), ("on", 10_000), ("OFF", 0), ("", 0), ("500", 500),
    (64, 64),
])
def test_near_cache_setting_forms(value: object, size: int) -> None:
    assert _near_size(value) == size


@pytest.mark.parametrize("value", ["lots", -1, 2.5, "-3"])
def test_bad_near_cache_settings_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError, match="near_cache"):
        _near_size(value)


@pytest.mark.parametrize("token,version", [
    (None, 0), ("", 0), ("17", 17), ("x1", 0), ("-5", 0), ("9" * 13, 0), (" 3", 0),
])
def test_version_tokens_are_parsed_strictly(token: str | None, version: int) -> None:
    assert parse_version_token(token) == version


def test_while_the_listener_is_down_one_connection_serves(pair: tuple[SessionStore, SessionStore],
                                                          redis_line_url: str) -> None:
    """No reconnect per call while the listener is away: the untracked connection
    serves (and nothing is kept), and a tracked one replaces it once the listener is
    back."""
    a, _ = pair
    s = _warm_new(a, {"n": 1})
    engine = _engine(a)
    listener = engine.listener
    assert listener is not None
    listener.connected.clear()  # as between a drop and the reconnect
    engine.transport._drop()  # this thread's connection went away meanwhile
    with redis.Redis.from_url(redis_line_url) as r:
        before = r.info("stats")["total_connections_received"]
        for _ in range(5):
            assert a.load(s.sid, min_version=10**6) is not None  # a newer token: from Redis
        assert r.info("stats")["total_connections_received"] - before == 1
        assert not engine.transport.tracked(s.key)
        listener.connected.set()
        assert a.load(s.sid, min_version=10**6) is not None
        assert r.info("stats")["total_connections_received"] - before == 2
    assert engine.transport.tracked(s.key)


def test_threads_of_one_process_keep_their_copies(pair: tuple[SessionStore, SessionStore]) -> None:
    """4 threads, each saving its own session through one store (a gthread worker):
    every save keeps its result as the process's copy, and the next load of that
    session is served from it. Two guards used to defeat this: a race check shared by
    all keys (any thread's save refused the others' copies) and one lock around the
    whole round trip on the tracked socket (now pipelined)."""
    a, _ = pair
    sessions = [a.create({"n": 0}) for _ in range(4)]
    _warm(a, sessions[0])
    engine = _engine(a)
    hits0 = engine.near_hits

    def run(i: int) -> None:
        s = sessions[i]
        for _ in range(100):
            s = a.load(s.sid, min_version=s.version)  # type: ignore[assignment]
            s["n"] += 1
            a.save(s)

    run_threads(run, 4)
    loads = 4 * 100
    assert [a.load(s.sid)["n"] for s in sessions] == [100] * 4  # type: ignore[index]
    assert engine.near_hits - hits0 >= 0.9 * loads  # ~100 %; 5 % before the fixes


def test_one_session_served_by_every_thread_in_turn_keeps_its_copy(pair: tuple[SessionStore, SessionStore],
                                                                    ) -> None:
    """A user's requests land on any thread of a gthread worker: 4 threads take turns
    on one session (load, change, save; the next thread loads). Every load after the
    first is a near hit, and no invalidation reaches the listener: the process's own
    saves run on the connection its loads tracked the key on (``NOLOOP``). With a
    connection per thread, each save on one thread invalidated the copy the
    previous thread's connection tracked: ~every load went to Redis."""
    a, _ = pair
    s = _warm_new(a, {"n": 0})
    engine = _engine(a)
    assert engine.listener is not None
    hits0, messages0 = engine.near_hits, engine.listener.messages
    turn = threading.Condition()
    state = {"next": 0, "version": s.version}
    rounds = 50

    def run(i: int) -> None:
        for r in range(rounds):
            with turn:
                assert turn.wait_for(lambda r=r: state["next"] == 4 * r + i, timeout=10)  # type: ignore[misc]
            session = a.load(s.sid, min_version=state["version"])
            assert session is not None
            session["n"] += 1
            a.save(session)
            wait_for(lambda: not engine.listener.pending(), timeout=5, what="the listener")  # type: ignore[union-attr]
            with turn:
                state["version"] = session.version
                state["next"] += 1
                turn.notify_all()

    run_threads(run, 4)
    loads = 4 * rounds
    assert a.load(s.sid)["n"] == loads  # type: ignore[index]
    assert engine.listener.messages - messages0 == 0
    assert engine.near_hits - hits0 >= loads


def test_a_tracked_connection_lost_takes_the_copies_it_tracked(pair: tuple[SessionStore, SessionStore],
                                                               ) -> None:
    """The server closes the connection a copy was tracked on (``CLIENT KILL``, an
    idle timeout): Redis sends no invalidation for that key any more. When the
    process finds the connection closed (its next command on it), every near copy
    goes: a change made elsewhere meanwhile is read, not the copy."""
    from statekit.redis.transport import TRACKED_LANES, lane_index

    a, b = pair
    s = _warm_new(a, {"n": 1})
    engine = _engine(a)
    i = lane_index(s.key, TRACKED_LANES)
    other = a.create({"n": 0})  # a session whose commands share s's connection
    while lane_index(other.key, TRACKED_LANES) != i:
        other = a.create({"n": 0})
    lane = engine.transport._shared[i]  # type: ignore[index]
    assert lane is not None and engine.transport.tracked(s.key)
    with redis.Redis(connection_pool=lane.pool) as r:
        lane.conn.send_command("CLIENT", "ID")
        r.client_kill_filter(_id=lane.conn.read_response())
        changed = b.load(s.sid)
        assert changed is not None
        changed["n"] = 2
        b.save(changed)  # no invalidation comes: the connection tracking s is gone
    assert a.load(s.sid)["n"] == 1  # type: ignore[index]  # the copy, until the loss is found
    again = a.load(other.sid, min_version=10**6)  # a command on that connection finds it closed
    assert again is not None
    assert a.load(s.sid)["n"] == 2  # type: ignore[index]


def test_refused_tracking_serves_untracked_without_reconnecting(pair: tuple[SessionStore, SessionStore],
                                                                 redis_line_url: str) -> None:
    """``CLIENT TRACKING`` answered with an error (an ACL, a proxy, a listener id that
    just went away): the socket serves untracked, keeps nothing, and is not reopened
    on every call (it was: one new connection per load)."""
    a, _ = pair
    s = _warm_new(a, {"n": 1})
    engine = _engine(a)
    assert engine.listener is not None
    engine.listener.client_id = 999_999_999  # REDIRECT to a client that does not exist
    engine.transport._drop()  # the next call connects and sets tracking up again
    with redis.Redis.from_url(redis_line_url) as r:
        before = r.info("stats")["total_connections_received"]
        for _ in range(50):
            assert a.load(s.sid, min_version=10**6) is not None  # past any copy: from Redis
        assert r.info("stats")["total_connections_received"] - before == 1
    assert not engine.transport.tracked(s.key)


def test_a_failed_save_drops_the_copy_a_concurrent_load_kept(pair: tuple[SessionStore, SessionStore]) -> None:
    """A save whose reply is lost (timed out after Redis applied it) must still drop
    the copy that a load of this process read just before the save landed: no
    invalidation will ever come for it (NOLOOP), so it would stay stale."""
    from statekit.errors import BackendUnavailable
    from statekit.sessions.redis import _fields

    a, _ = pair
    s = _warm_new(a, {"n": 1})
    engine = _engine(a)
    near, transport = engine.near, engine.transport
    assert near is not None
    real = transport.script

    def save_with_a_load_beside_it(script: Any, keys: Any, args: Any) -> Any:
        seq = near.seq  # another thread's load begins after the save's first evict ...
        old = transport.command(b"HGETALL", keys[0])  # ... and reads before the save lands
        real(script, keys, args)  # Redis applies the save
        near.store(keys[0], _fields(old), None, seq)  # the load keeps what it read
        raise BackendUnavailable("simulated: the save's reply timed out")

    transport.script = save_with_a_load_beside_it  # type: ignore[method-assign]
    loaded = a.load(s.sid)
    assert loaded is not None
    loaded["n"] = 2
    with pytest.raises(BackendUnavailable):
        a.save(loaded)
    transport.script = real  # type: ignore[method-assign]
    assert s.key not in _copies(a)
    again = a.load(s.sid)
    assert again is not None and again["n"] == 2


def _stored(url: str, key: str) -> dict[str, bytes]:
    with redis.Redis.from_url(url) as r:
        return {k.decode(): v for k, v in r.hgetall(key).items()}


def test_the_copy_a_save_keeps_is_the_stored_hash(pair: tuple[SessionStore, SessionStore],
                                                  redis_line_url: str) -> None:
    """A save that goes on from this process's copy is not sent the hash back (the
    copy with its fields applied is the hash): that copy equals what Redis holds,
    fields set and deleted, the user, the idle timeout and the version alike, and
    the key stays tracked (a change elsewhere still drops it)."""
    a, b = pair
    s = _warm_new(a, {"n": 1, "gone": "x", "cart": ["apple"]})
    for step in range(3):
        before = _hgetalls(redis_line_url)
        loaded = a.load(s.sid)
        assert loaded is not None
        loaded["n"] = step
        loaded.pop("gone", None)
        loaded.user_id = f"u{step}"
        loaded.idle_timeout = 3600.0 + step
        assert a.save(loaded)
        assert _hgetalls(redis_line_url) == before  # a load from the copy, a save not sent the hash
        copy = _copies(a)[s.key]
        assert copy[0] == _stored(redis_line_url, s.key) and _version_of(copy[0]) == loaded.version  # type: ignore[index]
    theirs = b.load(s.sid)
    assert theirs is not None
    theirs["n"] = 99
    assert b.save(theirs)
    wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")


def test_a_copy_behind_the_stored_hash_gets_the_hash_back(pair: tuple[SessionStore, SessionStore],
                                                          redis_line_url: str) -> None:
    """A save from a copy that another change has passed (its invalidation not yet
    applied here: simulated by putting an older copy back) keeps the hash Redis sends
    back, never that copy with this save's fields applied."""
    a, b = pair
    s = _warm_new(a, {"n": 1})
    near = _engine(a).near
    assert near is not None
    old = dict(_copies(a)[s.key][0])  # type: ignore[index]
    theirs = b.load(s.sid)
    assert theirs is not None
    theirs["theirs"] = True
    assert b.save(theirs)
    wait_for(lambda: s.key not in _copies(a), timeout=5, what="the invalidation")
    listener = _engine(a).listener
    assert listener is not None  # done applying it (pending() is True until then: a load goes to Redis)
    wait_for(lambda: not listener.pending(), timeout=5, what="the listener")
    with near.lock:
        near._put(s.key, old, 60)  # the older copy, as if the invalidation were still on its way
    mine = a.load(s.sid)
    assert mine is not None and "theirs" not in mine
    mine["n"] = 2
    before = _hgetalls(redis_line_url)
    assert a.save(mine)
    assert _hgetalls(redis_line_url) == before + 1  # the script sent the hash back
    copy = _copies(a)[s.key][0]  # type: ignore[index]
    assert copy == _stored(redis_line_url, s.key) and copy["d:theirs"] == b"true"


def _version_of(raw: dict[str, bytes]) -> int:
    return int(raw["m:v"])


def test_a_dropped_stores_finalizer_inside_a_near_cache_lock_does_not_deadlock(redis_line_url: str) -> None:
    """As test_cache_stale_review's case for a cache: a garbage collection frees a
    session store while the freeing thread is inside a locked section of its near
    cache (the listener's thread inside ``evict``); neither its finalizer (it called
    ``stop()``) nor its connections' (they flush the copies they tracked) may wait for
    that lock. The listener thread ends on its own, its copies off."""
    store = SessionStore(redis_line_url, secret_keys=["near-secret"], near_cache=100)
    _warm_new(store, {"n": 1})
    engine = _engine(store)
    near, listener = engine.near, engine.listener
    assert near is not None and listener is not None

    @contextlib.contextmanager
    def locked_section() -> Iterator[None]:
        near._enter()  # inside a locked section, as evict() is
        try:
            yield
        finally:
            near._leave()

    held = [store, engine]
    del store, engine
    free_inside_a_locked_section(held, locked_section, near, listener)
