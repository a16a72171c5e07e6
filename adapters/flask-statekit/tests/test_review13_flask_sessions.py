"""Review 13 of the Flask session interface, as users of Flask's own sessions,
Flask-Session and Flask-Login use it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, session
from test_flask_sessions import make_app as base_app
from test_flask_sessions import while_paused

from flask_statekit import get_state
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import redis_command_calls

pytestmark = pytest.mark.redis


def make_app(url: str, **config: Any) -> Flask:
    """The session tests' app, with a cart changed in place."""
    app = base_app(url, **config)

    @app.post("/cart/<int:permanent>")
    def new_cart(permanent: int) -> Any:
        session.permanent = bool(permanent)
        session["cart"] = []
        session["color"] = "red"
        return "ok"

    @app.post("/append/<item>")
    def append(item: str) -> Any:
        session["cart"].append(item)  # in place: session.modified stays False
        return "ok"

    return app


@pytest.mark.parametrize("refresh", [True, False], ids=["refresh-each-request", "no-refresh"])
@pytest.mark.parametrize("permanent", [1, 0], ids=["permanent", "browser-session"])
def test_in_place_changes_are_kept_when_flask_keeps_them(redis_url: str, permanent: int,
                                                         refresh: bool) -> None:
    """Flask stores the whole session whenever it sets the cookie: after a change, and
    on every request of a permanent session with ``SESSION_REFRESH_EACH_REQUEST`` (on
    by default; Flask-Session, permanent by default, does the same). A value changed
    in place (``session["cart"].append(x)``) is then kept, otherwise not. Flask's own
    cookie sessions are the reference: the same answers."""
    answers = []
    for statekit in (True, False):
        app = make_app(redis_url, SESSION_REFRESH_EACH_REQUEST=refresh, STATEKIT_SESSIONS_ENABLED=statekit)
        client = app.test_client()
        client.post(f"/cart/{permanent}")
        client.post("/append/apple")
        client.post("/append/pear")
        answers.append(client.get("/get").json)
    assert answers[0] == answers[1]
    assert answers[0]["cart"] == (["apple", "pear"] if permanent and refresh else [])


def test_a_permanent_session_writes_back_no_key_it_only_read(redis_url: str) -> None:
    """The comparison that keeps in-place changes writes only keys that differ from
    what the request loaded: a request of a permanent session that read ``color``
    and appended to ``cart`` in place, while another request of the same browser
    set ``color``, keeps that other request's ``color``."""
    app = make_app(redis_url)
    loaded, go = threading.Event(), threading.Event()

    @app.post("/slow-append/<item>")
    def slow_append(item: str) -> Any:
        seen = session["color"]
        loaded.set()
        assert go.wait(30)
        session["cart"].append(item)
        return seen

    browser = app.test_client()
    browser.post("/cart/1")
    paused, changed = while_paused(lambda: browser.post("/slow-append/apple"), loaded, go,
                                   lambda: browser.post("/set/color/blue"))
    assert changed.status_code == 200 and paused.text == "red"
    assert browser.get("/get").json == {"_permanent": True, "cart": ["apple"], "color": "blue"}


# -- Flask-Login -----------------------------------------------------------------------


def login_app(url: str, **config: Any) -> Flask:
    """An app on Flask-Login, whose login view does not call ``session.rotate()``
    (Flask-Login's own examples do not: cookie sessions need no rotation)."""
    flask_login = pytest.importorskip("flask_login")

    class User(flask_login.UserMixin):  # type: ignore[name-defined,misc]
        def __init__(self, uid: str) -> None:
            self.id = uid

    app = make_app(url, **config)
    manager = flask_login.LoginManager(app)
    manager.user_loader(User)

    @app.post("/flask-login/<uid>")
    def flask_login_view(uid: str) -> Any:
        flask_login.login_user(User(uid), remember=True)
        return "ok"

    @app.get("/who")
    def who() -> Any:
        return str(flask_login.current_user.get_id())

    return app


@pytest.mark.parametrize("how", ["login_user", "remember-me"])
def test_flask_login_planted_cookie_never_gets_the_login(redis_url: str, how: str) -> None:
    """Session fixation through Flask-Login: an attacker plants the cookie of a session
    they hold in the victim's browser; the victim then logs in (``login_user``), or
    comes back with Flask-Login's remember-me cookie and is logged in from it (a path
    no view of the app runs, so it cannot call ``session.rotate()`` there). The
    attacker's cookie must stay anonymous: the login goes to a new session id."""
    app = login_app(redis_url)
    attacker = app.test_client()
    attacker.post("/set/color/green")  # a stored session the attacker holds
    planted = attacker.get_cookie("session").value  # type: ignore[union-attr]
    victim = app.test_client()
    if how == "remember-me":
        victim.post("/flask-login/victim")  # long ago, with "remember me"
        victim.delete_cookie("session")  # the browser session ended; remember_token stays
    victim.set_cookie("session", planted)
    if how == "login_user":
        assert victim.post("/flask-login/victim").status_code == 200
    else:
        assert victim.get("/who").text == "victim"  # logged in from the remember cookie
    assert victim.get("/who").text == "victim"
    assert victim.get_cookie("session").value != planted  # type: ignore[union-attr]
    assert attacker.get("/who").text == "None"
    assert attacker.get("/get").json == {}  # the planted id names no session any more


# -- hooks that write the session: static files and outages ----------------------------


def _down(*args: Any, **kwargs: Any) -> Any:
    raise BackendUnavailable("Redis stopped (test)")


def test_static_files_with_a_hook_writing_the_session_are_served(redis_url: str, tmp_path: Path) -> None:
    """Flask's common idiom ``@app.before_request``: ``session.permanent = True`` runs
    for static files too, whose session is never loaded: the write is dropped (that
    session is never stored), the file is served, no Redis call, no cookie; it was a
    503 "cannot reach your session" for every static file."""
    (tmp_path / "site.css").write_text("body{}")
    app = make_app(redis_url)
    app.static_folder = str(tmp_path)
    app.static_url_path = "/static"  # as registered (setting the folder renamed it)

    @app.before_request
    def make_permanent() -> None:
        session.permanent = True

    client = app.test_client()
    client.post("/set/cart/apple")
    r = redis.Redis.from_url(redis_url)
    r.config_resetstat()
    with client.get("/static/site.css") as resp:
        assert (resp.status_code, resp.data, "Set-Cookie" in resp.headers) == (200, b"body{}", False)
    assert redis_command_calls(r) == {}
    assert client.get("/get").json == {"_permanent": True, "cart": "apple"}


@pytest.mark.parametrize("policy", ["raise", "anonymous"])
def test_outage_with_an_after_request_hook_writing_the_session_is_503(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    """An ``after_request`` hook that writes the session (``session["seen"] = ...``,
    Flask-Login's remember-cookie refresh) during an outage: the answer is the
    outage's 503 with ``Retry-After`` and the cookie kept, as without the hook; the
    hook's write refused by the read-only session made it Flask's 500."""
    app = make_app(redis_url, STATEKIT_SESSION_OUTAGE_POLICY=policy)

    @app.after_request
    def seen(response: Any) -> Any:
        session["seen"] = "now"
        return response

    client = app.test_client()
    client.post("/set/cart/apple")
    cookie = client.get_cookie("session").value  # type: ignore[union-attr]
    with monkeypatch.context() as m:
        m.setattr(get_state(app).sessions.engine, "load", _down)
        resp = client.get("/get")
    answer = (resp.status_code, resp.headers.get("Retry-After"), "Set-Cookie" in resp.headers)
    assert answer == (503, "5", False)
    assert client.get_cookie("session").value == cookie  # type: ignore[union-attr]
    assert client.get("/get").json == {"cart": "apple", "seen": "now"}


def test_anonymous_outage_serves_an_app_that_makes_its_sessions_permanent(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration guide's ``session.permanent = True`` in ``before_request`` with the
    ``anonymous`` policy: during an outage the read-only session takes the flag (it
    is never stored, and no cookie is sent) and the page is served read-only, as the
    policy says (the flag is this request's only); the flag's write made every request
    a 503."""
    app = make_app(redis_url, STATEKIT_SESSION_OUTAGE_POLICY="anonymous")

    @app.before_request
    def make_permanent() -> None:
        session.permanent = True

    client = app.test_client()
    client.post("/set/cart/apple")
    with monkeypatch.context() as m:
        m.setattr(get_state(app).sessions.engine, "load", _down)
        resp = client.get("/get")
        answer = (resp.status_code, resp.json, "Set-Cookie" in resp.headers)
        assert answer == (200, {"_permanent": True}, False)
        assert client.post("/set/cart/pear").status_code == 503  # a write of the view still refused
    assert client.get("/get").json == {"_permanent": True, "cart": "apple"}
