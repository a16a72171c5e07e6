"""Review 16 of starlette_statekit's SessionMiddleware, on a real Redis: a login
(``rotate_session``) whose app then fails with a 500.

The 500 comes from Starlette's ServerErrorMiddleware, outside the session
middleware, so it carried no cookie: the browser kept the pre-login id, which the
rotation had made a tombstone, and the session it held (the cart) lived on under an
id the browser never learned: its next request was a fresh anonymous session, the
cart lost. The fixed Django adapter sends the rotated key with such a 5xx
(``test_review15_django_sessions``); so does this one now: the browser keeps its
cart, is not logged in (the request saved nothing), can log in again at once, and
the pre-login id names nothing (no session fixation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from test_starlette_sessions import KEY, ROUTES, sync_store

from starlette_statekit.sessions import SessionMiddleware, rotate_session

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return "st" + uuid.uuid4().hex[:10]


async def v_login_fails(request: Request) -> Response:
    await rotate_session(request)
    request.session["user"] = "bob"
    raise RuntimeError("the app fails after the login")


async def v_fails(request: Request) -> Response:
    request.session["note"] = "unsaved"
    raise RuntimeError("the app fails without a login")


async def v_whoami(request: Request) -> Response:
    return PlainTextResponse(request.session.get("user", "anonymous"))


EXTRA = [Route("/login-fails", v_login_fails, methods=["POST"]), Route("/fails", v_fails, methods=["POST"]),
         Route("/whoami", v_whoami)]


def make_app(url: str, prefix: str, **app_options: Any) -> Starlette:
    app = Starlette(routes=[*ROUTES, *EXTRA], middleware=[
        Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix)], **app_options)
    app.state.gate = None
    return app


def browser_of(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def test_a_login_whose_app_fails_keeps_the_cart_under_the_rotated_cookie(redis_url: str, prefix: str) -> None:
    app = make_app(redis_url, prefix)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with browser_of(app) as browser:
            await browser.post("/set/cart/apple")
            out["before"] = browser.cookies["session"]
            failed = await browser.post("/login-fails")
            out["status"], out["set_cookie"] = failed.status_code, failed.headers.get("set-cookie", "")
            out["after"] = browser.cookies["session"]
            out["data"] = (await browser.get("/get")).json()
            out["who"] = (await browser.get("/whoami")).text
            async with browser_of(app) as thief:  # the pre-login cookie, copied before the login
                thief.cookies["session"] = out["before"]
                out["stolen"] = (await thief.get("/get")).json()
                out["retried"] = (await browser.post("/login/bob")).status_code
                out["who_after"] = (await browser.get("/whoami")).text
                out["data_after"] = (await browser.get("/get")).json()
                out["stolen_after"] = (await thief.get("/whoami")).text
        return out

    out = asyncio.run(main())
    assert (out["status"], out["after"] != out["before"]) == (500, True), out
    assert out["set_cookie"].startswith(f"session={out['after']};") and "httponly" in out["set_cookie"]
    assert (out["data"], out["who"]) == ({"cart": "apple"}, "anonymous")  # the failed request saved nothing
    assert out["stolen"] == {}  # the pre-login id names nothing
    assert (out["retried"], out["who_after"], out["stolen_after"]) == (200, "bob", "anonymous")
    assert out["data_after"] == {"cart": "apple", "user": "bob"}
    with contextlib.closing(sync_store(redis_url, prefix)) as store:
        assert store.load(store.unsign(out["before"]) or "") is None


def test_the_500_is_the_apps_own_page_with_the_cookie(redis_url: str, prefix: str) -> None:
    """The app's 500 handler (or its debug page) answers, with the rotated cookie."""
    seen: list[str] = []

    async def on_500(request: Request, exc: Exception) -> Response:
        seen.append(str(exc))
        return PlainTextResponse("our own error page", status_code=500, headers={"x-page": "ours"})

    handled = make_app(redis_url, prefix, exception_handlers={500: on_500})
    debugging = make_app(redis_url, prefix, debug=True)

    async def main(app: Starlette) -> tuple[httpx.Response, str]:
        async with browser_of(app) as browser:
            await browser.post("/set/cart/apple")
            failed = await browser.post("/login-fails")
            return failed, (await browser.get("/get")).text

    page, data = asyncio.run(main(handled))
    assert (page.status_code, page.text, page.headers.get("x-page")) == (500, "our own error page", "ours")
    assert page.headers.get("set-cookie", "").startswith("session=") and data == '{"cart":"apple"}'
    assert seen and set(seen) == {"the app fails after the login"}
    page, data = asyncio.run(main(debugging))
    assert page.status_code == 500 and "RuntimeError: the app fails after the login" in page.text
    assert page.headers.get("set-cookie", "").startswith("session=") and data == '{"cart":"apple"}'


def test_a_500_without_a_login_still_saves_nothing_and_sends_no_cookie(redis_url: str, prefix: str) -> None:
    app = make_app(redis_url, prefix)

    async def main() -> tuple[int, str | None, str, str, dict[str, Any]]:
        async with browser_of(app) as browser:
            await browser.post("/set/cart/apple")
            before = browser.cookies["session"]
            failed = await browser.post("/fails")
            return (failed.status_code, failed.headers.get("set-cookie"), before, browser.cookies["session"],
                    (await browser.get("/get")).json())

    status, set_cookie, before, after, data = asyncio.run(main())
    assert (status, set_cookie, after == before, data) == (500, None, True, {"cart": "apple"})


# -- under uvicorn: the server gets the error to log, the browser the 500 and the cookie --


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    import uvicorn

    from statekit.embedded import free_port

    port = free_port()
    # log_config=None: uvicorn's own would replace the handler the test adds
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start within 20 s"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop within 20 s"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage() + (repr(record.exc_info[1]) if record.exc_info else ""))


def test_under_uvicorn(redis_url: str, prefix: str) -> None:
    errors = _Errors()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(errors)
    try:
        with _serving(make_app(redis_url, prefix)) as base:
            # a connection each: uvicorn closes the one an exception came through
            with httpx.Client(base_url=base, timeout=20, headers={"connection": "close"}) as browser:
                browser.post("/set/cart/apple")
                before = browser.cookies["session"]
                failed = browser.post("/login-fails")
                after = browser.cookies["session"]
                data = browser.get("/get").json()
    finally:
        logger.removeHandler(errors)
    assert (failed.status_code, failed.text, after != before, data) == (
        500, "Internal Server Error", True, {"cart": "apple"})
    assert any("the app fails after the login" in m for m in errors.messages), errors.messages
