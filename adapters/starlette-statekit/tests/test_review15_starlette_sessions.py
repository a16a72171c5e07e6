"""Review 15 of starlette_statekit's SessionMiddleware, on a real Redis.

* ``request.session.clear()`` followed by a write in the same request (a logout
  that leaves a "logged out" message) was no logout: the session was saved under
  its old id (only an emptied session was destroyed), so a copy of the pre-logout
  cookie still named a live session and read what was set after the logout.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_starlette_sessions import client, make_app, sync_store

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return "st" + uuid.uuid4().hex[:10]


async def v_logout_flash(request: Request) -> Response:
    request.session.clear()
    request.session["flash"] = "logged out"
    return PlainTextResponse("ok")


def test_clear_then_a_message_is_a_logout_and_the_old_id_is_gone(redis_url: str, prefix: str) -> None:
    app = make_app(redis_url, prefix)
    app.router.routes.append(Route("/logout-flash", v_logout_flash, methods=["POST"]))

    async def main() -> tuple[str, str, dict[str, str], dict[str, str]]:
        async with client(app) as browser:
            await browser.post("/login/bob")
            await browser.post("/set/cart/apple")
            before = browser.cookies["session"]
            assert (await browser.post("/logout-flash")).status_code == 200
            after = browser.cookies["session"]
            data = (await browser.get("/get")).json()
        async with client(app) as thief:
            thief.cookies["session"] = before
            stolen = (await thief.get("/get")).json()
        return before, after, data, stolen

    before, after, data, stolen = asyncio.run(main())
    assert (after != before, data, stolen) == (True, {"flash": "logged out"}, {})
    with contextlib.closing(sync_store(redis_url, prefix)) as store:
        assert store.load(store.unsign(before) or "") is None  # the pre-logout id names nothing
