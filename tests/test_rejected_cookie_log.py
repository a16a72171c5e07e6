"""Another app's session cookie on the same domain, sent with every request, is
refused every time (counted) but logs one WARNING, not one per request: Flask and
Starlette here, Django in its adapter's tests (test_django_rejected_cookie_log)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import httpx
import pytest
from flask import Flask, jsonify, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis

KEY = "rejected-cookie-log-key"


def flask_requests(url: str, cookie: str, n: int) -> list[int]:
    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config.update(SECRET_KEY=KEY, STATEKIT_SESSION_URL=url, STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_BROADCAST_ENABLED=False)
    StateKit(app)
    app.add_url_rule("/get", "get", lambda: jsonify(dict(session)))
    client = app.test_client()
    statuses = []
    for _ in range(n):
        client.set_cookie("session", cookie)
        statuses.append(client.get("/get").status_code)
    return statuses


def starlette_requests(url: str, cookie: str, n: int) -> list[int]:
    from starlette_statekit.sessions import SessionMiddleware

    async def get(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    app = Starlette(routes=[Route("/get", get)], middleware=[
        Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix="rc" + uuid.uuid4().hex[:8])])

    async def main() -> list[int]:
        statuses = []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            for _ in range(n):
                c.cookies.set("session", cookie)
                statuses.append((await c.get("/get")).status_code)
        return statuses

    return asyncio.run(main())


@pytest.mark.parametrize("requests", [flask_requests, starlette_requests], ids=["flask", "starlette"])
def test_a_foreign_cookie_on_every_request_logs_once(
        requests: Callable[[str, str, int], list[int]], redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    other = SessionStore(redis_url, secret_keys=["another-apps-key"])
    foreign = other.sign(other.new().sid)
    other.close()
    caplog.set_level("INFO")
    assert requests(redis_url, foreign, 50) == [200] * 50
    warnings = [r for r in caplog.records if r.name == "statekit.security" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
