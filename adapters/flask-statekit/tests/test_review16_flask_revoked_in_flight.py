"""A user revoked (``revoke_user``: "sign out everywhere", an administrator) while a
request of theirs is in flight stays signed out when that request then changes the
session: the end-of-request save finds the session gone and deletes the cookie. The
whole session, ``_user_id`` included, was carried to a fresh id and its cookie sent:
the revoked browser was signed in again. On a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from flask import session
from test_flask_sessions import make_app

from flask_statekit import get_state

pytestmark = pytest.mark.redis


def test_a_request_in_flight_at_a_revocation_does_not_sign_the_user_in_again(redis_url: str) -> None:
    app = make_app(redis_url)
    store = get_state(app).sessions

    @app.post("/revoked-meanwhile")
    def revoked_meanwhile() -> Any:
        user = session["_user_id"]  # loaded before the revocation
        assert store.revoke_user(user) == 1  # another request, at that moment
        session["cart"] = "pear"
        return "ok"

    browser = app.test_client()
    browser.post("/login/ada")
    assert len(store.list_user_sessions("ada")) == 1
    resp = browser.post("/revoked-meanwhile")
    assert resp.status_code == 200
    assert browser.get_cookie("session") is None, resp.headers.getlist("Set-Cookie")  # deleted
    assert browser.get("/get").json == {}
    assert store.list_user_sessions("ada") == []
