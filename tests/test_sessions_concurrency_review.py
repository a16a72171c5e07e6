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
