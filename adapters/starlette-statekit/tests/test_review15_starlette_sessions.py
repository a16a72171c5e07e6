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

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_starlette_sessions import client, make_app, sync_store

from starlette_statekit.sessions import rotate_session

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


async def v_login_fails(request: Request) -> Response:
    await rotate_session(request)
    request.session["user"] = "bob"
    raise RuntimeError("the app fails after the login")


async def v_whoami(request: Request) -> Response:
    return PlainTextResponse(request.session.get("user", "anonymous"))


def test_a_login_whose_app_fails_leaves_the_browser_able_to_log_in(redis_url: str, prefix: str) -> None:
    """``rotate_session`` (a login), then the app raises: the 500 comes from
    Starlette's ServerErrorMiddleware, outside this one, so no cookie goes out and
    the browser keeps the pre-login id, a tombstone for the alias window. A login
    retried then got no cookie either (a request whose cookie names a tombstone
    sends none), so the browser stayed anonymous; its own login is sent now."""
    app = make_app(redis_url, prefix)
    app.router.routes += [Route("/login-fails", v_login_fails, methods=["POST"]), Route("/whoami", v_whoami)]

    async def main() -> tuple[int, str, str]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
            await browser.post("/set/cart/apple")
            failed = (await browser.post("/login-fails")).status_code
            between = (await browser.get("/whoami")).text
            await browser.post("/login/bob")  # tried again at once
            return failed, between, (await browser.get("/whoami")).text

    assert asyncio.run(main()) == (500, "anonymous", "bob")
