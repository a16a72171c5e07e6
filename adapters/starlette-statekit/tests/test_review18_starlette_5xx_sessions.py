"""Review 18 of starlette_statekit's SessionMiddleware, on a real Redis: one rule for the
session changes of a request answered 5xx, wherever the 5xx comes from.

The rule (docs/starlette.md, "Sessions"): a request answered with a 5xx saves none of
its session changes, as Django's SessionMiddleware; only the cookie of an id already
changed in Redis (a login's rotation, a session first stored by ``incr_session``) goes
out with it. Before, a route that raised saved nothing while the same error in a
mounted sub-app (whose own ServerErrorMiddleware answers it, through the session
middleware) saved the request's changes, as did a 500 a handler or a middleware
returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from test_review17_starlette_500_once import _uvicorn
from test_starlette_sessions import KEY, sync_store, v_get, v_set

from starlette_statekit.sessions import SessionMiddleware, incr_session, rotate_session

pytestmark = pytest.mark.redis

FAILURE = "the app fails"


@pytest.fixture
def prefix() -> str:
    return "st" + uuid.uuid4().hex[:10]


async def v_fails(request: Request) -> Response:
    request.session["note"] = "unsaved"
    raise RuntimeError(FAILURE)


async def v_login_fails(request: Request) -> Response:
    await rotate_session(request)
    request.session["user"] = "bob"
    raise RuntimeError(FAILURE)


async def v_returns_500(request: Request) -> Response:
    request.session["note"] = "unsaved"
    return PlainTextResponse("returned", status_code=500)


async def v_http_503(request: Request) -> Response:
    request.session["note"] = "unsaved"
    raise HTTPException(503, "maintenance")


async def v_incr_fails(request: Request) -> Response:
    await incr_session(request, "n")  # stores a new session: its id is in Redis now
    request.session["note"] = "unsaved"
    raise RuntimeError(FAILURE)


async def v_http_400(request: Request) -> Response:
    request.session["note"] = "saved"
    raise HTTPException(400, "bad")


async def v_calls(request: Request) -> Response:
    return JSONResponse(request.app.state.calls)


FAILING = [Route(path, view, methods=["POST"]) for path, view in [
    ("/fails", v_fails), ("/login-fails", v_login_fails), ("/returns-500", v_returns_500),
    ("/http-503", v_http_503), ("/incr-fails", v_incr_fails), ("/http-400", v_http_400),
    ("/mw-fails", v_get), ("/mw-500", v_get)]]


def page(name: str, calls: list[str]) -> Any:
    """An app's 500 handler: its own page, each call recorded."""
    async def handler(request: Request, exc: Exception) -> Response:
        calls.append(f"{name}: {exc}")
        return JSONResponse({"error": name}, status_code=500)

    return handler


class Inner(BaseHTTPMiddleware):
    """An ``@app.middleware("http")`` one inside the session middleware: fails (or
    answers a 500 itself) after the handler, for its app's ``/mw-*`` paths."""

    def __init__(self, app: Any, mount: str = "") -> None:
        super().__init__(app)
        self.mount = mount

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if path in (self.mount + "/mw-fails", self.mount + "/mw-500"):
            request.session["note"] = "unsaved"
        response = await call_next(request)
        if path == self.mount + "/mw-fails":
            raise RuntimeError(FAILURE)
        if path == self.mount + "/mw-500":
            return PlainTextResponse("middleware says no", status_code=500)
        return response


def make_site(url: str, prefix: str) -> Starlette:
    """The session middleware on the site; the failing routes on the site itself and
    on a mounted sub-app (``/shop``) of its own, with no session middleware, each with
    its 500 handler."""
    calls: list[str] = []
    shop = Starlette(routes=FAILING, exception_handlers={500: page("shop", calls)},
                     middleware=[Middleware(Inner, mount="/shop")])
    site = Starlette(routes=[Route("/get", v_get), Route("/set/{key}/{value}", v_set, methods=["POST"]),
                             Route("/calls", v_calls), *FAILING, Mount("/shop", app=shop)],
                     exception_handlers={500: page("site", calls)},
                     middleware=[Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix),
                                 Middleware(Inner)])
    site.state.calls = calls
    return site


def browser(app: Starlette) -> httpx.AsyncClient:
    """A client of *app* in this process, without its lifespan: a test's first request
    is the app's first call (the failing ones come after one)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


WHERE = {"route": "", "mount": "/shop"}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(("path", "status", "body"), [
    ("/fails", 500, {"error": None}), ("/returns-500", 500, "returned"), ("/http-503", 503, "maintenance"),
    ("/mw-fails", 500, {"error": None}), ("/mw-500", 500, "middleware says no")])
def test_a_5xx_saves_nothing_of_the_request(redis_url: str, prefix: str, where: str, path: str, status: int,
                                            body: Any) -> None:
    async def main() -> tuple[httpx.Response, str, str, Any]:
        async with browser(make_site(redis_url, prefix)) as c:
            assert (await c.post("/set/cart/apple")).status_code == 200
            before = c.cookies["session"]
            failed = await c.post(WHERE[where] + path)
            return failed, before, c.cookies["session"], (await c.get("/get")).json()

    failed, before, after, data = asyncio.run(main())
    assert failed.status_code == status, failed.text
    if isinstance(body, dict):  # the 500 handler of the app the error happened in
        assert failed.json() == {"error": "shop" if where == "mount" else "site"}
    else:
        assert failed.text == body
    assert "set-cookie" not in failed.headers, failed.headers
    assert (after, data) == (before, {"cart": "apple"})


@pytest.mark.parametrize("where", WHERE)
def test_a_handled_4xx_saves_as_any_response(redis_url: str, prefix: str, where: str) -> None:
    async def main() -> tuple[int, Any]:
        async with browser(make_site(redis_url, prefix)) as c:
            await c.post("/set/cart/apple")
            status = (await c.post(WHERE[where] + "/http-400")).status_code
            return status, (await c.get("/get")).json()

    assert asyncio.run(main()) == (400, {"cart": "apple", "note": "saved"})


@pytest.mark.parametrize("where", WHERE)
def test_a_login_that_fails_sends_the_rotated_cookie_with_the_apps_500(redis_url: str, prefix: str,
                                                                       where: str) -> None:
    site = make_site(redis_url, prefix)

    async def main() -> tuple[httpx.Response, str, str, Any]:
        async with browser(site) as c:
            await c.post("/set/cart/apple")
            before = c.cookies["session"]
            failed = await c.post(WHERE[where] + "/login-fails")
            return failed, before, c.cookies["session"], (await c.get("/get")).json()

    failed, before, after, data = asyncio.run(main())
    assert failed.status_code == 500
    assert failed.json() == {"error": "shop" if where == "mount" else "site"}
    assert after != before and failed.headers["set-cookie"].startswith(f"session={after};")
    assert data == {"cart": "apple"}  # under the new id; "user" not saved
    # the handler of the app it failed in, once (a mounted app's error goes on to the
    # site's ServerErrorMiddleware, which runs the site's handler too: Starlette's way)
    assert site.state.calls.count(f"{'shop' if where == 'mount' else 'site'}: {FAILURE}") == 1


@pytest.mark.parametrize("where", WHERE)
def test_a_session_first_stored_by_incr_session_gets_its_cookie_with_the_500(redis_url: str, prefix: str,
                                                                             where: str) -> None:
    async def main() -> tuple[httpx.Response, str, Any]:
        async with browser(make_site(redis_url, prefix)) as c:
            await c.get("/get")  # the app's first call: not this test's subject
            failed = await c.post(WHERE[where] + "/incr-fails")
            return failed, c.cookies["session"], (await c.get("/get")).json()

    failed, after, data = asyncio.run(main())
    assert failed.status_code == 500
    assert failed.headers["set-cookie"].startswith(f"session={after};")
    assert data == {"n": 1}  # the increment, not the note


# -- the first request of an app served without its lifespan, under uvicorn -------------


def served() -> Starlette:
    """The site uvicorn serves in :func:`test_the_first_requests_without_lifespan_under_uvicorn`."""
    return make_site(os.environ["R18_URL"], os.environ["R18_PREFIX"])


@pytest.mark.parametrize("first", ["route", "mount"])
def test_the_first_request_without_lifespan_under_uvicorn(redis_url: str, prefix: str, tmp_path: Path,
                                                          first: str) -> None:
    """uvicorn ``--lifespan off``: the app's very first call is a failing login, in a
    route or in the mounted app. The rule holds on it as on any request: nothing of it
    saved, the rotated cookie sent, the handler of the app it failed in run once. (The
    route's 500 is Starlette's plain one: no layer can be put outside the app's
    ServerErrorMiddleware before its first call; a mounted app's is its own page.)"""
    with contextlib.closing(sync_store(redis_url, prefix)) as store:
        cookie = store.sign(store.create({"cart": "apple"}).sid)
    log = tmp_path / "uvicorn.log"
    with _uvicorn({"R18_URL": redis_url, "R18_PREFIX": prefix}, log, Path(__file__).stem, "off") as base:
        # a connection each: uvicorn closes the one an exception came through
        with httpx.Client(base_url=base, timeout=20, headers={"connection": "close"}) as c:
            failed = c.post(WHERE[first] + "/login-fails", headers={"cookie": f"session={cookie}"})
            after = c.cookies["session"]
            data = c.get("/get").json()
            calls = c.get("/calls").json()
            # a later one, the layer in place: a mounted app's failure saves nothing either
            again = c.post("/shop/fails")
            data_again = c.get("/get").json()
    assert failed.status_code == 500
    if first == "mount":
        assert failed.json() == {"error": "shop"}
    else:
        assert failed.text == "Internal Server Error"
    assert after != cookie and failed.headers["set-cookie"].startswith(f"session={after};")
    assert data == {"cart": "apple"}
    assert calls.count(f"{'shop' if first == 'mount' else 'site'}: {FAILURE}") == 1, calls
    assert (again.status_code, again.json(), "set-cookie" in again.headers) == (500, {"error": "shop"}, False)
    assert data_again == {"cart": "apple"}
