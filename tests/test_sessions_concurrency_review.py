"""Adversarial review of server-side sessions' concurrency (helper S, twelfth session):
interleavings of two requests of one session driven step by step on real Redis
(each request is a :class:`~statekit.sessions.Session` loaded before the other's
change, then used after it: no threads, no sleeps), sync and async.

What the module docstring of :mod:`statekit.sessions` claims and these tests hold
it to: a revoked session never comes back (``revoke_user`` deletes every session
indexed before it ends, and a session is indexed under the user stored in it).
"""

from __future__ import annotations

import asyncio

import pytest

from statekit.sessions import SessionStore
from statekit.sessions.aio import AsyncSessionStore

pytestmark = pytest.mark.redis


def _rotation_after_a_user_switch(store: SessionStore, first: str | None) -> None:
    """Request A loaded the session as user *first*; request B switched it to user v
    (no rotation); then A rotates it. The script moves the stored hash (user v) to the
    new id, so the new id must be in v's index: it was indexed under A's *first* (or
    nowhere), and revoke_user('v') left the rotated session alive."""
    sid = store.create({"n": 1}, user_id=first).sid
    a = store.load(sid)
    b = store.load(sid)
    assert a is not None and b is not None
    b.user_id = "v"
    assert store.save(b)
    store.rotate(a)
    assert a.sid != sid and store.load(a.sid) is not None
    store.revoke_user("v")
    assert store.load(a.sid) is None, "a session of v survived revoke_user('v')"
    assert store.list_user_sessions("u") == []


@pytest.mark.parametrize("first", ["u", None])
def test_a_rotation_by_a_request_that_loaded_another_user_is_still_revoked(redis_url: str,
                                                                          first: str | None) -> None:
    store = SessionStore(redis_url, secret_keys=["k"])
    try:
        _rotation_after_a_user_switch(store, first)
    finally:
        store.close()


def _save_after_a_user_switch(store: SessionStore) -> str:
    """Request A loaded the session as user u; request B switched it to user v and
    saved; then A saves a change of its own (the user left as it loaded it). The
    session is v's: u's index must not name it for u (A's write added it back there).
    Returns the session's id."""
    sid = store.create({"n": 1}, user_id="u").sid
    a = store.load(sid)
    b = store.load(sid)
    assert a is not None and b is not None
    b.user_id = "v"
    assert store.save(b)
    a["cart"] = ["apple"]
    assert store.save(a)
    stored = store.load(sid)
    assert stored is not None and stored.user_id == "v" and stored["cart"] == ["apple"]
    return sid


def _no_longer_listed_for_u(store: SessionStore, sid: str) -> None:
    assert store.list_user_sessions("u") == [], "u's list shows v's session"
    assert store.revoke_user("u") == 0
    assert store.load(sid) is not None, "revoke_user('u') deleted v's session"
    assert [i.user_id for i in store.list_user_sessions("v")] == ["v"]
    assert store.revoke_user("v") == 1 and store.load(sid) is None


@pytest.mark.parametrize("near", [0, 100])
def test_a_late_save_of_the_previous_user_does_not_hand_the_session_to_them(redis_url: str,
                                                                            near: int) -> None:
    """After the interleaving above, u's device list showed v's session (and u could
    revoke it: revoke_session takes any listed handle), and revoke_user('u') logged
    v out."""
    store = SessionStore(redis_url, secret_keys=["k"], near_cache=near)
    try:
        _no_longer_listed_for_u(store, _save_after_a_user_switch(store))
    finally:
        store.close()


@pytest.mark.parametrize("late", ["rotate", "save"])
def test_on_cluster_a_late_request_of_the_previous_user_leaves_the_session_to_the_stored_one(
        redis_cluster_url: str, late: str) -> None:
    """Both on Redis Cluster (the index is written by a second call there)."""
    store = SessionStore(redis_cluster_url, secret_keys=["k"])
    try:
        if late == "rotate":
            _rotation_after_a_user_switch(store, "u")
        else:
            _no_longer_listed_for_u(store, _save_after_a_user_switch(store))
    finally:
        store.close()


def test_a_late_logout_or_user_change_removes_the_session_from_the_stored_users_index(redis_url: str) -> None:
    """The same with the late request changing the user itself: A (loaded as u) logs
    the user out or in as w after B switched the session to v. A's write removed the
    session from u's index (where it no longer was) and left it in v's: revoke_user('v')
    then deleted a session that was A's anonymous one, or w's."""
    store = SessionStore(redis_url, secret_keys=["k"])
    try:
        for then in (None, "w"):
            sid = store.create({"n": 1}, user_id="u").sid
            a, b = store.load(sid), store.load(sid)
            assert a is not None and b is not None
            b.user_id = "v"
            assert store.save(b)
            a.user_id = then
            assert store.save(a)
            assert store.list_user_sessions("v") == [] and store.revoke_user("v") == 0
            assert store.load(sid) is not None, "revoke_user('v') deleted a session no longer v's"
            assert [i.user_id for i in store.list_user_sessions("w")] == (["w"] if then else [])
            store.destroy_id(sid)
    finally:
        store.close()


@pytest.mark.parametrize("late", ["rotate", "save"])
def test_async_a_late_request_of_the_previous_user_leaves_the_session_to_the_stored_one(
        redis_url: str, late: str) -> None:
    """Both interleavings above on the async store (B, the switch to v, by a sync
    worker): the rotated or saved session is v's alone."""
    sync = SessionStore(redis_url, secret_keys=["k"])

    async def main() -> None:
        async with AsyncSessionStore(redis_url, secret_keys=["k"]) as store:
            a = await store.create({"n": 1}, user_id="u")
            a = await store.load(a.sid)
            b = sync.load(a.sid) if a is not None else None
            assert a is not None and b is not None
            b.user_id = "v"
            assert sync.save(b)
            if late == "rotate":
                await store.rotate(a)
            else:
                a["cart"] = ["apple"]
                assert await store.save(a)
            assert await store.list_user_sessions("u") == [], "u's list shows v's session"
            assert await store.revoke_user("u") == 0
            assert await store.revoke_user("v") == 1
            assert await store.load(a.sid) is None, "a session of v survived revoke_user('v')"

    try:
        asyncio.run(main())
    finally:
        sync.close()


def test_a_load_across_a_listener_reconnect_keeps_nothing_stale(redis_line_url: str) -> None:
    """Near cache: process a's load reads the session on its tracked connection; then,
    before the load keeps what it read, a's listener connection drops and comes back
    (a new client id: what the read's tracking redirected to is gone, so the
    invalidation of b's change just after is lost) and b changes the session. The
    load must not keep its copy: a's next load, with b's version token, and without
    one, reads b's change."""
    import redis as redis_py

    from statekit.pytest_plugin import wait_for
    from statekit.sessions.redis import RedisEngine

    a, b = (SessionStore(redis_line_url, secret_keys=["k"], near_cache=100) for _ in range(2))
    engine = a.engine
    assert isinstance(engine, RedisEngine) and engine.listener is not None
    listener, transport = engine.listener, engine.transport
    try:
        s = b.create({"n": 1})
        near = engine.near
        assert near is not None
        # a's listener connects and its connection tracks: a load keeps a copy
        wait_for(lambda: a.load(s.sid) is not None and s.key in near.data, timeout=10, what="a near copy")
        near.evict(s.key)  # the next load reads Redis
        kept: list[bool] = []
        keep = engine._near_keep
        engine._near_keep = lambda *args: kept.append(args[2] >= 0) or keep(*args)  # type: ignore[method-assign]
        real = transport.command
        changed: list[int] = []

        def read_then_reconnect_then_change(*args: object) -> object:
            out = real(*args)
            if args[0] == b"HGETALL" and not changed:
                generation = listener.generation
                with redis_py.Redis.from_url(redis_line_url) as r:
                    r.client_kill_filter(_id=str(listener.client_id))
                wait_for(lambda: listener.generation > generation and listener.connected.is_set(),
                         timeout=10, what="the listener to reconnect")
                other = b.load(s.sid)
                assert other is not None
                other["n"] = 2
                assert b.save(other)
                changed.append(other.version)
            return out

        transport.command = read_then_reconnect_then_change  # type: ignore[method-assign]
        try:
            first = a.load(s.sid)
        finally:
            transport.command = real  # type: ignore[method-assign]
        assert first is not None and first["n"] == 1 and changed
        assert kept == [True]  # the load went to keep what it read (begun while the listener lived) ...
        assert s.key not in near.data  # ... and was refused
        again = a.load(s.sid)
        assert again is not None and again["n"] == 2
    finally:
        a.close()
        b.close()


def test_a_rotation_whose_reply_was_lost_is_not_sent_again_and_a_retry_keeps_the_data(redis_url: str) -> None:
    """A login's rotation reaches Redis but its reply is lost: rotate() raises, the
    old id is a tombstone (the transport never sends a script again), and the
    rotation is not taken over by a retry: the retried rotate gives the request's
    session a new id of its own holding the data it loaded, stored by its save."""
    from statekit.errors import BackendUnavailable
    from statekit.sessions.redis import RedisEngine

    store = SessionStore(redis_url, secret_keys=["k"])
    engine = store.engine
    assert isinstance(engine, RedisEngine)
    real = engine.transport.script
    lost: list[object] = []

    def reply_lost(script: object, keys: object, args: object) -> object:
        out = real(script, keys, args)  # type: ignore[arg-type]
        if not lost:
            lost.append(out)
            raise BackendUnavailable("simulated: the rotation's reply timed out")
        return out

    try:
        s = store.load(store.create({"cart": ["apple"]}, user_id="u").sid)
        assert s is not None
        old = s.sid
        engine.transport.script = reply_lost  # type: ignore[method-assign]
        try:
            with pytest.raises(BackendUnavailable):
                store.rotate(s)
            assert s.sid == old and lost == [[1]]
            assert store.load(old) is None  # a tombstone: the rotation landed
            store.rotate(s)
        finally:
            engine.transport.script = real  # type: ignore[method-assign]
        assert s.sid != old and s.new and dict(s) == {"cart": ["apple"]}
        assert store.save(s)
        again = store.load(s.sid)
        assert again is not None and dict(again) == {"cart": ["apple"]} and again.user_id == "u"
        assert store.revoke_user("u") == 2  # the one this request holds, and the one it lost
    finally:
        store.close()
