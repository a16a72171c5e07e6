"""Review 14 of starlette_statekit's SessionMiddleware: what a 503 of an outage tells
the browser when a new session's first save timed out, on a real Redis that is
paused (SIGSTOP: the write reaches it, the reply is lost) or killed."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_starlette_sessions import client, make_app, middleware, outage_url, sync_store

from starlette_statekit.sessions import incr_session, rotate_session
from statekit.embedded import RedisServer
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("fault", ["pause", "kill"])
def test_a_new_sessions_first_save_timing_out_sends_its_cookie_with_the_503(
        durable_redis: RedisServer, fault: str) -> None:
    """A new session's first save (as the response starts) times out: Redis paused,
    the create reached it and its reply was lost; or killed, it did not. The 503
    carries the new session's cookie when it may be stored (``Session.maybe_stored``):
    the browser's retry continues that session (no second one); killed, none.
    Without it a stored create was orphaned under an id the browser never learned,
    and the cart was lost."""
    prefix = "st" + uuid.uuid4().hex[:10]
    # near cache off: with it on, a paused Redis times the save out before the create
    # is sent (nothing stored: the kill case's answer), not after
    app = make_app(outage_url(durable_redis), prefix, near_cache=0)

    async def first_cart(request: Request) -> Response:
        request.session["cart"] = "apple"
        getattr(durable_redis, fault)()  # between the app and the save
        return PlainTextResponse("ok")

    app.router.routes.append(Route("/first-cart", first_cart, methods=["POST"]))

    async def down() -> tuple[httpx.Response, httpx.Cookies]:
        async with client(app) as warm:
            await warm.post("/set/warm/up")  # a pooled connection: the create is sent on it
        async with client(app) as browser:
            try:
                return await browser.post("/first-cart"), browser.cookies
            finally:
                if fault == "pause":
                    durable_redis.resume()

    async def retry(cookies: httpx.Cookies) -> Any:
        async with client(app) as browser:
            browser.cookies = cookies
            return (await browser.get("/get")).json()

    resp, cookies = asyncio.run(down())
    answer = (resp.status_code, resp.headers.get("retry-after"), "session" in cookies)
    if fault == "kill":
        # the killed server's kept socket is found closed before the create is sent
        # and the reconnect is refused: certainly not stored, so no cookie names it
        # (review 15: it sent one for a session that did not exist)
        assert answer == (503, "5", False)
        durable_redis.start()
        assert asyncio.run(retry(cookies)) == {}  # a fresh session
        return
    assert answer == (503, "5", True)
    assert "httponly" in resp.headers["set-cookie"] and "samesite=lax" in resp.headers["set-cookie"]
    store = sync_store(durable_redis.url, prefix)
    try:
        sid = store.unsign(cookies["session"])
        assert sid is not None
        wait_for(lambda: store.load(sid) is not None, timeout=30, what="Redis to run the create it took")
        assert asyncio.run(retry(cookies)) == {"cart": "apple"}
        with durable_redis.client() as r:  # the warm-up's and this one: no second session
            assert len(r.keys(f"{prefix}:session:*")) == 2
    finally:
        store.close()


def test_a_logout_cut_between_its_save_and_its_destroy_completes_on_retry(
        durable_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """``request.session.clear()`` of a stored session (a logout) saves the emptied
    session, then destroys it. Redis dies between the two: the 503 keeps the cookie,
    and the stored session is already empty (signed out). The browser's retry of the
    logout completes it: the session is destroyed and the cookie deleted. It answered
    200 and did neither (an empty session loaded with no data was no logout), so the
    id lived on, empty, until its idle timeout."""
    prefix = "st" + uuid.uuid4().hex[:10]
    app = make_app(outage_url(durable_redis), prefix, near_cache=0)

    async def clear(request: Request) -> Response:
        request.session.clear()
        return PlainTextResponse("ok")

    app.router.routes.append(Route("/clear", clear, methods=["POST"]))
    store = sync_store(durable_redis.url, prefix)

    async def main() -> tuple[httpx.Response, Any, httpx.Response, bool]:
        async with client(app) as browser:
            await browser.post("/login/ada")
            sid = store.unsign(browser.cookies["session"])
            assert sid is not None
            engine = middleware(app).store.engine
            destroy = engine.destroy  # (the engine's: the logout's destroy is a step of the save)

            async def dies_first(*args: Any, **kwargs: Any) -> Any:
                durable_redis.kill()
                return await destroy(*args, **kwargs)

            with monkeypatch.context() as m:
                m.setattr(engine, "destroy", dies_first)
                cut = await browser.post("/clear")
            durable_redis.start()  # AOF: the emptied session's save is kept
            left = await asyncio.to_thread(store.load, sid)
            between = (await browser.get("/get")).json()
            retry = await browser.post("/clear")
            return cut, (left is not None and dict(left), between), retry, "session" in browser.cookies

    try:
        cut, (left, between), retry, kept = asyncio.run(main())
    finally:
        store.close()
    answer = (cut.status_code, cut.headers.get("retry-after"), cut.headers.get("set-cookie"))
    assert answer == (503, "5", None)
    assert left == {} and between == {}  # signed out already, the id still stored
    assert retry.status_code == 200 and retry.headers["set-cookie"].startswith("session=null;")
    assert not kept


@pytest.mark.parametrize("first", ["new", "rotated"])
def test_a_failure_inside_the_app_sends_the_cookie_its_session_needs(
        durable_redis: RedisServer, first: str) -> None:
    """``incr_session`` times out inside the app (Redis paused): the 503 the middleware
    answers instead carries the cookie the session needs, as at the save: a new
    session's (its create, which ``incr_session`` makes first, may be stored), or
    the new id of a ``rotate_session`` made before (the data lives there only)."""
    prefix = "st" + uuid.uuid4().hex[:10]
    app = make_app(outage_url(durable_redis), prefix, near_cache=0)

    async def count(request: Request) -> Response:
        if first == "rotated":
            await rotate_session(request)
        durable_redis.pause()
        return PlainTextResponse(str(await incr_session(request, "n")))

    app.router.routes.append(Route("/count", count, methods=["POST"]))

    async def main() -> tuple[httpx.Response, Any]:
        async with client(app) as browser:
            await browser.post("/set/cart/apple")  # a pooled connection, and a cart to keep
            if first == "new":
                browser.cookies.clear()
            try:
                resp = await browser.post("/count")
            finally:
                durable_redis.resume()
            return resp, browser.cookies.get("session")

    resp, cookie = asyncio.run(main())
    assert resp.status_code == 503 and cookie is not None
    store = sync_store(durable_redis.url, prefix)
    try:
        sid = store.unsign(cookie)
        assert sid is not None
        wait_for(lambda: store.load(sid) is not None, timeout=30, what="the session under the cookie's id")
        loaded = store.load(sid)
        assert loaded is not None and loaded.get("cart") == (None if first == "new" else "apple")
    finally:
        store.close()
