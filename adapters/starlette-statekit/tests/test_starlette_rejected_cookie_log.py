"""Another app's session cookie on the same domain, sent with every request, is
refused every time (counted) but logs one WARNING, not one per request."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from test_starlette_sessions import client, make_app

from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis


def test_a_foreign_cookie_on_every_request_logs_once(redis_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    other = SessionStore(redis_url, secret_keys=["another-apps-key"])
    foreign = other.sign(other.new().sid)
    other.close()
    app = make_app(redis_url, "st" + uuid.uuid4().hex[:10])
    caplog.set_level("INFO")

    async def main() -> None:
        async with client(app) as c:
            for _ in range(50):
                c.cookies.set("session", foreign)
                assert (await c.get("/get")).status_code == 200

    asyncio.run(main())
    warnings = [r for r in caplog.records if r.name == "statekit.security" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
