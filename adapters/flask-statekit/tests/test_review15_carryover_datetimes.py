"""Review 15 follow-up: a Flask-Session 0.8 user whose session holds a datetime stays
logged in across the switch, the datetime as Flask-Session gave it to the views."""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session

from flask_statekit import StateKit, get_state

pytestmark = pytest.mark.redis

SECRET = "flask-carry-over-datetimes-0123456789"
SEEN = dt.datetime(2026, 12, 7, 14, 5, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def _app(name: str, config: dict[str, Any]) -> Flask:
    app = Flask(name)
    app.config.update(SECRET_KEY=SECRET, **config)

    @app.post("/login")
    def login() -> Any:
        session["_user_id"] = "alice"
        session["last_seen"] = SEEN
        return "ok"

    @app.get("/seen")
    def seen() -> Any:
        at = session.get("last_seen")
        return jsonify(user=session.get("_user_id"),
                       at=at.isoformat() if isinstance(at, dt.datetime) else repr(at))

    return app


def test_a_session_holding_an_aware_datetime_is_carried_over(redis_url: str) -> None:
    """``session["last_seen"] = <an aware datetime>`` under Flask-Session 0.8 (Redis,
    msgpack): its view read it back as a datetime in UTC. After the switch the user was
    logged out (statekit refused the msgpack Timestamp); now the same user and datetime,
    on the first request and the next."""
    from flask_session import Session

    old_url = redis_url.rsplit("/", 1)[0] + "/3"
    before = _app("before", {"SESSION_TYPE": "redis", "SESSION_REDIS": redis.Redis.from_url(old_url)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Session(before)
    old_browser = before.test_client()
    assert old_browser.post("/login").status_code == 200
    expected = {"user": "alice", "at": "2026-12-07T13:05:09.123456+00:00"}
    assert old_browser.get("/seen").json == expected  # Flask-Session's own reading
    cookie = old_browser.get_cookie("session")
    assert cookie is not None

    after = _app("after", {"STATEKIT_SESSION_URL": redis_url, "STATEKIT_CACHE_ENABLED": False,
                           "STATEKIT_BROADCAST_ENABLED": False,
                           "STATEKIT_SESSION_CARRY_OVER": "flask-session",
                           "STATEKIT_SESSION_CARRY_OVER_URL": old_url})
    StateKit(after)
    browser = after.test_client()
    browser.set_cookie("session", cookie.value)
    assert browser.get("/seen").json == expected
    assert browser.get("/seen").json == expected  # from statekit's own store now
    counters = get_state(after).sessions.counters
    assert counters.get("carried_over") == 1 and counters.get("carry_over_refused") == 0
