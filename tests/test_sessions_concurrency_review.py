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


def test_on_cluster_a_rotation_by_a_request_that_loaded_another_user_is_still_revoked(
        redis_cluster_url: str) -> None:
    store = SessionStore(redis_cluster_url, secret_keys=["k"])
    try:
        _rotation_after_a_user_switch(store, "u")
    finally:
        store.close()


def test_async_a_rotation_by_a_request_that_loaded_another_user_is_still_revoked(redis_url: str) -> None:
    async def main() -> None:
        async with AsyncSessionStore(redis_url, secret_keys=["k"]) as store:
            sid = (await store.create({"n": 1}, user_id="u")).sid
            a = await store.load(sid)
            b = await store.load(sid)
            assert a is not None and b is not None
            b.user_id = "v"
            assert await store.save(b)
            await store.rotate(a)
            assert await store.load(a.sid) is not None
            await store.revoke_user("v")
            assert await store.load(a.sid) is None, "a session of v survived revoke_user('v')"
            assert await store.list_user_sessions("u") == []

    asyncio.run(main())
