"""Review 19: a Flask-Session 0.8 user (Redis backend) switching to statekit's Flask
sessions, checked against what Flask's own session interface and Flask-Session do
with the same app (their installed sources: flask/sessions.py, flask/ctx.py,
flask_session/base.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, session
from test_flask_sessions import SECRET, make_app

pytestmark = pytest.mark.redis


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
