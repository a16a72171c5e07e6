"""Review 18: the Flask adapter keeps Flask's own rule for the session of a failed
request (docs/starlette.md, "5xx and the session, per adapter"): the session is saved
in ``process_response``, which Flask runs on the 500 of an unhandled error too, as its
cookie sessions are. (The Starlette adapter saves nothing on a 5xx, as Django does.)"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, session
from test_flask_sessions import make_app

pytestmark = pytest.mark.redis


def failing_app(url: str) -> Flask:
    app = make_app(url)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # Flask's 500, as in production

    @app.post("/fails")
    def fails() -> Any:
        session["note"] = "kept"
        raise RuntimeError("the view fails")

    @app.post("/returns-500")
    def returns_500() -> Any:
        session["note"] = "kept too"
        return jsonify(error="ours"), 500

    return app


@pytest.mark.parametrize(("path", "note"), [("/fails", "kept"), ("/returns-500", "kept too")])
def test_a_500_saves_the_session_as_flask_does(redis_url: str, path: str, note: str) -> None:
    client = failing_app(redis_url).test_client()
    assert client.post("/set/cart/apple").status_code == 200
    assert client.post(path).status_code == 500
    assert client.get("/get").get_json() == {"cart": "apple", "note": note}
