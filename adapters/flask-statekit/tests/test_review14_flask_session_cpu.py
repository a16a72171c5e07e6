"""CPU a permanent Flask session spends per request: the comparison that keeps values
changed in place (``SESSION_REFRESH_EACH_REQUEST``, Flask's default) re-encodes no
value that cannot have changed."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask import Flask, session
from test_flask_sessions import make_app as base_app

from flask_statekit import get_state
from statekit.pytest_plugin import redis_command_calls

pytestmark = pytest.mark.redis


def make_app(url: str) -> Flask:
    app = base_app(url)

    @app.post("/start")
    def start() -> Any:
        session.permanent = True
        session["_user_id"] = "alice"
        session.update(color="red", n=3, ratio=0.5, flag=True, note=None, cart=["apple"])
        return "ok"

    @app.get("/read")
    def read() -> Any:
        return f"{session['color']} {session['n']} {session['ratio']} {session['flag']} {session['note']}"

    @app.post("/append/<item>")
    def append(item: str) -> Any:
        session["cart"].append(item)  # in place: kept by the comparison
        return "ok"

    @app.post("/again")
    def again() -> Any:
        session["n"] = session["n"] + 1  # an assignment: saved as ever
        session["color"] = session["color"].upper()
        return "ok"

    return app


def test_a_permanent_read_request_encodes_no_value_it_only_read(redis_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only request of a permanent session read five values that cannot change
    in place (str, int, float, bool, None) and loaded ``_permanent`` and ``_user_id``:
    its save compared each with the stored bytes by encoding it again (7 encodings
    per request, ~1 µs each, for nothing: only an assignment changes such a value,
    and assignments are tracked). Now it encodes none and, as before, writes
    nothing; values changed in place and assigned values are still saved."""
    app = make_app(redis_url)
    store = get_state(app).sessions
    encoded: list[str] = []
    real_encode = store._encode

    def counting(key: Any, value: Any) -> bytes:
        encoded.append(key)
        return real_encode(key, value)

    monkeypatch.setattr(store, "_encode", counting)
    browser = app.test_client()
    assert browser.post("/start").status_code == 200
    r = redis.Redis.from_url(redis_url)
    r.config_resetstat()
    encoded.clear()
    resp = browser.get("/read")
    assert resp.text == "red 3 0.5 True None"
    assert encoded == []
    assert "evalsha" not in redis_command_calls(r)  # nothing written, as before

    assert browser.post("/append/pear").status_code == 200
    assert encoded == ["cart"]  # the one value that can change in place is compared
    assert browser.post("/again").status_code == 200
    assert browser.get("/get").json == {"_permanent": True, "_user_id": "alice", "color": "RED", "n": 4,
                                        "ratio": 0.5, "flag": True, "note": None, "cart": ["apple", "pear"]}
