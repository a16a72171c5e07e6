"""Another app's session cookie on the same domain, sent with every request, is
refused every time (counted) but logs one WARNING, not one per request."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import Client
from test_django_sessions import configure

from django_statekit.sessions import get_core_store
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis


def test_a_foreign_cookie_on_every_request_logs_once(django_settings: Any, redis_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    configure(django_settings, redis_url)
    other = SessionStore(redis_url, secret_keys=["another-apps-key"])
    foreign = other.sign(other.new().sid)
    other.close()
    get_core_store()._reject_log.clear()  # the process's store: other tests' refusals logged before
    caplog.set_level("INFO")
    c = Client()
    for _ in range(50):
        c.cookies["sessionid"] = foreign  # another app's cookie, sent again by the browser
        assert c.get("/sessions/get").status_code == 200
    warnings = [r for r in caplog.records if r.name == "statekit.security" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
