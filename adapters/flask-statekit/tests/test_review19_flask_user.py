"""Review 19: a Flask-Session 0.8 user (Redis backend) switching to statekit's Flask
sessions, checked against what Flask's own session interface and Flask-Session do
with the same app (their installed sources: flask/sessions.py, flask/ctx.py,
flask_session/base.py)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session
from test_flask_sessions import SECRET, make_app

pytestmark = pytest.mark.redis


def _permanent(app: Flask) -> Flask:
    """The migration guide's stand-in for Flask-Session's ``SESSION_PERMANENT = True``."""

    @app.before_request
    def make_session_permanent() -> None:
        session.permanent = True

    return app


def _flask_session_app(url: str) -> Flask:
    """The app as it ran before the switch: Flask-Session 0.8 on the same Redis."""
    from flask_session import Session

    app = Flask("before")
    app.config.update(SECRET_KEY=SECRET, SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url),
                      SESSION_KEY_PREFIX="before:")  # SESSION_PERMANENT: True by default
    Session(app)
    app.add_url_rule("/peek", "peek", lambda: "ok")
    return app


def test_a_session_holding_only_its_permanence_is_not_stored(redis_url: str) -> None:
    """``session.permanent = True`` in ``before_request`` runs for every request:
    a visitor that stores nothing (a crawler, a health check, a first page view)
    must not cost a stored session and a cookie each, as Flask-Session's
    ``ServerSideSession.__bool__`` (ignoring ``_permanent``) made sure."""
    r = redis.Redis.from_url(redis_url)
    before = _flask_session_app(redis_url)
    for _ in range(3):
        assert "Set-Cookie" not in before.test_client().get("/peek").headers
    assert r.dbsize() == 0  # Flask-Session stored nothing

    app = _permanent(make_app(redis_url))
    for _ in range(3):
        response = app.test_client().get("/peek")
        assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert r.dbsize() == 0, f"stored for visitors who store nothing: {r.keys('*')}"

    client = app.test_client()
    set_cookie = client.post("/set/cart/apple").headers["Set-Cookie"]
    assert "Expires=" in set_cookie  # something to store: stored, permanent
    assert client.get("/get").get_json() == {"_permanent": True, "cart": "apple"}
    assert r.dbsize() == 1


def _flask_cookie_app() -> Flask:
    """Flask's own session interface (signed cookies), the reference for Vary."""
    app = Flask("reference")
    app.config["SECRET_KEY"] = SECRET
    app.add_url_rule("/peek", "peek", lambda: "ok")
    app.add_url_rule("/get", "get", lambda: jsonify(dict(session)))

    @app.post("/set/<key>/<value>")
    def set_(key: str, value: str) -> Any:
        session[key] = value
        return "ok"

    return app


@pytest.mark.parametrize("with_cookie", [False, True], ids=["no-cookie", "cookie"])
def test_vary_cookie_only_when_the_session_is_used(redis_url: str, with_cookie: bool) -> None:
    """Flask adds ``Vary: Cookie`` when the request used the session (Flask 3.1:
    any use of the ``session`` proxy): a view that never touches it stays
    cacheable by a shared cache. statekit's own outage check before each view must
    not count as the app's use of the session."""
    for app in (_flask_cookie_app(), make_app(redis_url)):
        client = app.test_client()
        if with_cookie:
            client.post("/set/cart/apple")
        peek = client.get("/peek")
        assert peek.status_code == 200
        assert "Vary" not in peek.headers, f"{app.name}: {peek.headers.get('Vary')}"
        assert "Cookie" in client.get("/get").headers["Vary"], app.name
