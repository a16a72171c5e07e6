"""Review 15 of the Flask session interface, on a real Redis.

* ``session.clear()`` followed by a write in the same request (Flask's usual logout:
  ``session.clear(); flash("logged out")``) was no logout: the session was saved
  under its old id (only an emptied session was destroyed), so a copy of the
  pre-logout cookie (a shared computer, a stolen cookie) still named a live session
  and read what was set after the logout, for the whole idle timeout.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import flash, get_flashed_messages, jsonify, session
from test_flask_sessions import make_app

from flask_statekit import get_state

pytestmark = pytest.mark.redis


def test_clear_then_flash_is_a_logout_and_the_old_id_is_gone(redis_url: str) -> None:
    app = make_app(redis_url)

    @app.post("/logout-flash")
    def logout_flash() -> Any:
        session.clear()
        flash("logged out")
        return "ok"

    @app.get("/flashes")
    def flashes() -> Any:
        return jsonify(get_flashed_messages())

    store = get_state(app).sessions
    browser = app.test_client()
    browser.post("/login/ada")
    browser.post("/set/cart/apple")
    before = browser.get_cookie("session").value  # type: ignore[union-attr]
    old_sid = store.unsign(before)
    assert old_sid is not None and len(store.list_user_sessions("ada")) == 1

    resp = browser.post("/logout-flash")
    after = browser.get_cookie("session").value  # type: ignore[union-attr]
    assert (resp.status_code, after != before) == (200, True)
    assert store.load(old_sid) is None  # the pre-logout id names nothing any more
    assert store.list_user_sessions("ada") == []
    thief = app.test_client()
    thief.set_cookie("session", before)
    assert thief.get("/get").json == {}  # a copy of the old cookie reads nothing
    assert browser.get("/flashes").json == ["logged out"]  # the message, under the new id


def test_clear_then_login_in_one_request_gets_a_fresh_id(redis_url: str) -> None:
    """``session.clear()`` then a new user's keys (switching accounts without the
    rotation Flask-Login makes): the new login is under a fresh id, the old one gone."""
    app = make_app(redis_url)

    @app.post("/switch/<user>")
    def switch(user: str) -> Any:
        session.clear()
        session["_user_id"] = user
        return "ok"

    store = get_state(app).sessions
    browser = app.test_client()
    browser.post("/login/ada")
    before = browser.get_cookie("session").value  # type: ignore[union-attr]
    browser.post("/switch/bob")
    after = browser.get_cookie("session").value  # type: ignore[union-attr]
    assert after != before and store.load(store.unsign(before) or "") is None
    assert browser.get("/get").json == {"_user_id": "bob"}
    assert [s.user_id for s in store.list_user_sessions("bob")] == ["bob"]
    assert store.list_user_sessions("ada") == []


@pytest.mark.parametrize("how", ["rotate", "login_user"])
def test_a_login_sent_with_the_cookie_of_a_session_just_rotated_logs_in(redis_url: str, how: str) -> None:
    """A login whose answer was lost (the browser never got its new cookie) is sent
    again with the pre-login cookie, a tombstone for the alias window: no session
    cookie was sent for such a request, its login's neither, so the browser stayed
    anonymous until the window passed. A login's cookie goes out now (``session.rotate()``
    in the view, or Flask-Login's ``login_user`` on the fresh session)."""
    from test_review13_flask_sessions import login_app

    app = login_app(redis_url)
    url = "/login/ada" if how == "rotate" else "/flask-login/ada"
    first = app.test_client()
    first.post("/set/cart/apple")
    before = first.get_cookie("session").value  # type: ignore[union-attr]
    first.post(url)  # its answer lost: the browser still holds *before*
    browser = app.test_client()
    browser.set_cookie("session", before)
    resp = browser.post(url)
    after = browser.get_cookie("session")
    assert resp.status_code == 200 and after is not None and after.value != before
    store = get_state(app).sessions
    loaded = store.load(store.unsign(after.value) or "")
    assert loaded is not None and loaded.get("_user_id") == "ada"
