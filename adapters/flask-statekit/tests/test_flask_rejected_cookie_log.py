"""Another app's session cookie on the same domain, sent with every request, is
refused every time (counted) but logs one WARNING, not one per request."""

from __future__ import annotations

import logging

import pytest
from test_flask_sessions import make_app

from flask_statekit import get_state
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis


def test_a_foreign_cookie_on_every_request_logs_once(redis_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    other = SessionStore(redis_url, secret_keys=["another-apps-key"])
    foreign = other.sign(other.new().sid)
    other.close()
    app = make_app(redis_url)
    c = app.test_client()
    c.set_cookie("session", foreign)
    caplog.set_level("INFO")
    for _ in range(50):
        assert c.get("/get").status_code == 200
    warnings = [r for r in caplog.records if r.name == "statekit.security" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert get_state(app).sessions.counters.get("rejected_cookies") == 50
