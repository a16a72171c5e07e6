"""A session revoked (``revoke_user``, ``revoke_session``, ``destroy_id``: another
request's logout, an administrator) while a request that loaded it was in flight
stays ended when that request changes it: its end-of-request save
(``SessionStore.commit``) stores nothing and carries nothing. It carried the whole
session, the user's id included, to a fresh id whose cookie the adapters sent: the
revoked login came back under a new cookie (listed and revocable again, but
revoked for nothing). What a logout or a ``destroy()`` in *this* request sets after
it is still carried (and a logout's when the user was revoked meanwhile: in
test_review16_session_commit). On a real Redis, sync and asyncio."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_review16_session_commit import _committer

from statekit.errors import SessionError
from statekit.sessions import Session, SessionStore

pytestmark = pytest.mark.redis

REVOKES: dict[str, Callable[[SessionStore, Session], object]] = {
    "revoke_user": lambda store, s: store.revoke_user("ada"),
    "revoke_session": lambda store, s: store.revoke_session(s.handle, "ada"),
    "destroy_id": lambda store, s: store.destroy_id(s.sid),
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("revoke", list(REVOKES))
def test_a_session_revoked_in_flight_is_not_carried_to_a_new_id(redis_url: str, mode: str,
                                                                revoke: str) -> None:
    store, commit = _committer(redis_url, mode)
    try:
        created = store.create({"_user_id": "ada", "cart": ["apple"]})
        loaded = store.open(store.sign(created.sid))  # a request in flight
        REVOKES[revoke](store, loaded)
        assert store.list_user_sessions("ada") == []
        loaded["cart"] = ["apple", "pear"]  # the in-flight request changes it
        assert commit(loaded, True) == (False, None)
        assert loaded.destroyed  # the adapters delete the cookie
        assert store.list_user_sessions("ada") == []  # no login came back
        assert store.load(created.sid) is None
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("learns", ["save", "incr"])
def test_a_session_found_revoked_by_a_save_in_the_view_is_not_carried(redis_url: str, mode: str,
                                                                     learns: str) -> None:
    """The view's own ``save()`` (``False``) or ``incr`` (``SessionError``; Flask then
    saves the session of its 500) finds it revoked first: ``destroyed`` is set, its
    data is not emptied, and none of it is carried."""
    store, commit = _committer(redis_url, mode)
    try:
        created = store.create({"_user_id": "ada", "cart": ["apple"]})
        loaded = store.open(store.sign(created.sid))
        store.revoke_user("ada")
        loaded["cart"] = ["apple", "pear"]
        if learns == "save":
            assert store.save(loaded) is False
        else:
            with pytest.raises(SessionError):
                store.incr(loaded, "n")
        assert loaded.destroyed and loaded["_user_id"] == "ada"
        assert commit(loaded, True) == (False, None)
        assert store.list_user_sessions("ada") == []
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_what_a_destroy_in_the_request_is_followed_by_is_still_carried(redis_url: str, mode: str) -> None:
    store, commit = _committer(redis_url, mode)
    try:
        created = store.create({"_user_id": "ada", "cart": ["apple"]})
        loaded = store.open(store.sign(created.sid))
        store.destroy(loaded)  # the view logs out ...
        loaded["flash"] = "signed out"  # ... and says so
        saved, carried = commit(loaded, True)
        assert saved is False and carried is not None
        assert store.open(store.sign(carried.sid)) == {"flash": "signed out"}
        assert store.load(created.sid) is None and store.list_user_sessions("ada") == []
    finally:
        store.close()
