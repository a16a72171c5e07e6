"""Review 14 of the Flask session interface: what a 503 of an outage tells the
browser (a new session whose first save timed out; a logout cut between its two
writes), on a real Redis that is paused (SIGSTOP: the write reaches it, the reply
is lost) or killed."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, session
from test_flask_sessions import make_app, outage_url

from flask_statekit import UNAVAILABLE_PAGE, get_state
from statekit.embedded import RedisServer
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


def _stored_sessions(app: Flask, server: RedisServer) -> int:
    with server.client() as r:
        return len(r.keys(f"{get_state(app).sessions.key_prefix}:session:*"))


@pytest.mark.parametrize("fault", ["pause", "kill"])
def test_a_new_sessions_first_save_timing_out_sends_its_cookie_with_the_503(
        durable_redis: RedisServer, fault: str) -> None:
    """A new session's first save times out (Redis paused: the create reached it, its
    reply was lost; or killed: it did not). The 503 carries the new session's cookie
    when it may be stored (``Session.maybe_stored``): the browser's retry continues
    that session (the cart is there, no second session); killed, none. Without the
    cookie a stored create was orphaned under an id the browser never learned, and
    the cart was lost."""
    app = make_app(outage_url(durable_redis))

    @app.post("/first-cart")
    def first_cart() -> Any:
        session["cart"] = "apple"
        getattr(durable_redis, fault)()  # between the view and the save
        return "ok"

    app.test_client().post("/set/warm/up")  # a pooled connection: the create is sent on it
    browser = app.test_client()
    try:
        resp = browser.post("/first-cart")
    finally:
        if fault == "pause":
            durable_redis.resume()
    cookie = browser.get_cookie("session")
    answer = (resp.status_code, resp.headers.get("Retry-After"), cookie is not None)
    if fault == "kill":
        # the killed server's socket is found closed before the create is sent and the
        # reconnect is refused: certainly not stored, so no cookie names it (review
        # 15: it sent one for a session that did not exist)
        assert answer == (503, "5", False)
        durable_redis.start()
        assert browser.get("/get").json == {}  # a fresh session
        return
    assert answer == (503, "5", True)
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Lax" in resp.headers["Set-Cookie"]
    store = get_state(app).sessions
    sid = store.unsign(cookie.value)  # type: ignore[union-attr]
    assert sid is not None
    wait_for(lambda: store.load(sid) is not None, timeout=30, what="Redis to run the create it took")
    assert browser.get("/get").json == {"cart": "apple"}
    assert browser.get_cookie("session").value == cookie.value  # type: ignore[union-attr]
    assert _stored_sessions(app, durable_redis) == 2  # the warm-up's and this one: no second session


def test_a_logout_cut_between_its_save_and_its_destroy_completes_on_retry(
        durable_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """``session.clear()`` (a logout) saves the emptied session, then destroys it.
    Redis dies between the two: the 503 keeps the cookie, and the stored session is
    already empty (the user is logged out: a read finds no user). The browser's
    retry of the logout completes it: the session is destroyed and the cookie
    deleted. It answered 200 and did neither (an empty session loaded with no data
    was no logout), so the id lived on, empty, until its idle timeout; and the 503
    said "you are still signed in", which the user no longer was."""
    app = make_app(outage_url(durable_redis))
    store = get_state(app).sessions
    browser = app.test_client()
    browser.post("/login/ada")
    cookie = browser.get_cookie("session").value  # type: ignore[union-attr]
    sid = store.unsign(cookie)
    assert sid is not None
    destroy = store.engine.destroy  # (the engine's: the logout's destroy is a step of the save)

    def dies_first(*args: Any, **kwargs: Any) -> Any:
        durable_redis.kill()
        return destroy(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(store.engine, "destroy", dies_first)
        resp = browser.post("/logout")
    assert (resp.status_code, "Set-Cookie" in resp.headers) == (503, False)
    assert resp.text == UNAVAILABLE_PAGE  # not "you are still signed in": it may be half done
    durable_redis.start()  # AOF: the emptied session's save is kept
    left = store.load(sid)
    assert left is not None and dict(left) == {} and left.user_id is None
    assert browser.get("/get").json == {}  # logged out already
    resp = browser.post("/logout")
    assert resp.status_code == 200 and resp.headers["Set-Cookie"].startswith("session=;")
    assert browser.get_cookie("session") is None
    assert store.load(sid) is None


@pytest.mark.parametrize("first", ["new", "rotated"])
def test_a_failure_inside_the_view_sends_the_cookie_its_session_needs(
        durable_redis: RedisServer, first: str) -> None:
    """``session.incr`` times out inside the view (Redis paused): the 503 carries the
    cookie the session needs, as at the save: a new session's (its create, which
    ``incr`` makes first, may be stored), or the new id of a ``rotate()`` made before
    (the data lives there only)."""
    app = make_app(outage_url(durable_redis))

    @app.post("/count")
    def count() -> Any:
        if first == "rotated":
            session.rotate()  # type: ignore[attr-defined]
        durable_redis.pause()
        return str(session.incr("n"))  # type: ignore[attr-defined]

    browser = app.test_client()
    browser.post("/set/cart/apple")  # a pooled connection, and a cart to keep
    if first == "new":
        browser.delete_cookie("session")
    try:
        resp = browser.post("/count")
    finally:
        durable_redis.resume()
    cookie = browser.get_cookie("session")
    assert resp.status_code == 503 and cookie is not None
    store = get_state(app).sessions
    sid = store.unsign(cookie.value)
    assert sid is not None
    wait_for(lambda: store.load(sid) is not None, timeout=30, what="the session under the cookie's id")
    loaded = store.load(sid)
    assert loaded is not None and loaded.get("cart") == (None if first == "new" else "apple")
