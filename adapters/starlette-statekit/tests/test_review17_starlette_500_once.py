"""Review 17 of starlette_statekit's SessionMiddleware, on a real Redis: the 500 of an
app that fails after a login (``rotate_session``) carries the rotated cookie, and the
app's own 500 handler runs once.

The sixteenth session's fix answered that 500 inside the session middleware, running
the app's handler itself, then re-raised the error for Starlette's
ServerErrorMiddleware (outermost), which ran the handler a second time (an error
reported twice); a middleware outside the session middleware that answers errors
itself found the response started and its answer was dropped. The middleware now
leaves the answer to whoever gives it and adds the cookie to the response that
starts, from the app's outermost layer (put around ServerErrorMiddleware when the
middleware first sees the app: its lifespan, or its first request).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from test_review16_starlette_login_500 import v_login_fails  # rotate_session, then RuntimeError(FAILURE)
from test_starlette_sessions import KEY, ROUTES, sync_store

from starlette_statekit.sessions import SessionMiddleware

pytestmark = pytest.mark.redis

FAILURE = "the app fails after the login"

Scope = dict[str, Any]


@pytest.fixture
def prefix() -> str:
    return "st" + uuid.uuid4().hex[:10]


async def v_calls(request: Request) -> Response:
    return JSONResponse(request.app.state.calls)


EXTRA = [Route("/login-fails", v_login_fails, methods=["POST"]), Route("/calls", v_calls)]


def counting_handler(calls: list[str], *, sync: bool = False) -> Any:
    """An app's 500 handler that records each call: one failing request, one call."""
    def page(exc: Exception) -> Response:
        calls.append(str(exc))
        return JSONResponse({"error": "ours"}, status_code=500, headers={"x-page": "ours"})

    async def handler(request: Request, exc: Exception) -> Response:
        return page(exc)

    def sync_handler(request: Request, exc: Exception) -> Response:
        return page(exc)

    return sync_handler if sync else handler


def make_app(url: str, prefix: str, *, outer: tuple[Middleware, ...] = (), key: Any = 500, sync: bool = False,
             handled: bool = True, **options: Any) -> Starlette:
    """A Starlette app with the session middleware and, when *handled*, a counting
    500 handler under *key*; *outer*: middleware outside the session middleware."""
    calls: list[str] = []
    handlers = {key: counting_handler(calls, sync=sync)} if handled else {}
    app = Starlette(routes=[*ROUTES, *EXTRA], exception_handlers=handlers, middleware=[
        *outer, Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix)], **options)
    app.state.gate, app.state.calls = None, calls
    return app


def make_fastapi_app(url: str, prefix: str, *, handled: bool = True) -> FastAPI:
    """The same as a FastAPI app (``add_middleware``, ``@app.exception_handler(Exception)``)."""
    app = FastAPI()
    app.add_middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix)
    app.router.routes.extend([*ROUTES, *EXTRA])
    app.state.gate, app.state.calls = None, []
    if handled:
        app.exception_handler(Exception)(counting_handler(app.state.calls))
    return app


def served() -> Starlette:
    """The app uvicorn serves in :func:`test_a_fresh_worker_under_uvicorn`."""
    make = make_fastapi_app if os.environ["R17_KIND"] == "fastapi" else make_app
    return make(os.environ["R17_URL"], os.environ["R17_PREFIX"])


def browser_of(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def login_fails(app: Any) -> dict[str, Any]:
    """A cart, then a login whose app fails: the 500 and what the browser then holds."""
    async def main() -> dict[str, Any]:
        async with browser_of(app) as browser:
            await browser.post("/set/cart/apple")
            before = browser.cookies["session"]
            failed = await browser.post("/login-fails")
            return {"status": failed.status_code, "body": failed.text, "page": failed.headers.get("x-page"),
                    "set_cookie": failed.headers.get("set-cookie", ""), "before": before,
                    "after": browser.cookies["session"], "data": (await browser.get("/get")).json()}

    return asyncio.run(main())


def assert_kept(out: dict[str, Any]) -> None:
    """The 500 carried the rotated cookie: the cart is served, nobody logged in."""
    assert out["status"] == 500 and out["after"] != out["before"], out
    assert out["set_cookie"].startswith(f"session={out['after']};") and "httponly" in out["set_cookie"], out
    assert out["data"] == {"cart": "apple"}, out


@pytest.mark.parametrize(("key", "sync"), [(500, False), (Exception, False), (500, True)])
def test_the_apps_500_handler_runs_once_and_its_page_carries_the_cookie(redis_url: str, prefix: str, key: Any,
                                                                        sync: bool) -> None:
    app = make_app(redis_url, prefix, key=key, sync=sync)
    out = login_fails(app)
    assert_kept(out)
    assert (out["body"], out["page"]) == ('{"error":"ours"}', "ours")
    assert app.state.calls == [FAILURE]


def test_fastapi_exception_handler_runs_once_and_the_default_500(redis_url: str, prefix: str) -> None:
    handled = make_fastapi_app(redis_url, prefix)
    plain = make_fastapi_app(redis_url, prefix, handled=False)
    out = login_fails(handled)
    assert_kept(out)
    assert (out["body"], handled.state.calls) == ('{"error":"ours"}', [FAILURE])
    out = login_fails(plain)
    assert_kept(out)
    assert out["body"] == "Internal Server Error"


def test_the_debug_page_carries_the_cookie(redis_url: str, prefix: str) -> None:
    out = login_fails(make_app(redis_url, prefix, handled=False, debug=True))
    assert_kept(out)
    assert f"RuntimeError: {FAILURE}" in out["body"]


class Reporter:
    """Error reporting outside (as Sentry's ASGI middleware): records each exception
    that passes, then lets it go on."""

    def __init__(self, app: Any, seen: list[BaseException]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            self.seen.append(e)
            raise


class JsonErrors:
    """A middleware answering errors itself with JSON (and not raising them on)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started = False

        async def watch(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            if started:
                raise
            await JSONResponse({"error": str(e)}, status_code=500)(scope, receive, send)


class Timing(BaseHTTPMiddleware):
    """An ``@app.middleware("http")`` one: adds a header to each response it gets."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-timed"] = "yes"
        return response


def test_error_reporting_outside_sees_the_exception_once(redis_url: str, prefix: str) -> None:
    seen: list[BaseException] = []
    app = make_app(redis_url, prefix, outer=(Middleware(Reporter, seen=seen), Middleware(Timing)))
    out = login_fails(Reporter(app, seen))  # one inside the app, one around it
    assert_kept(out)
    assert (out["body"], app.state.calls) == ('{"error":"ours"}', [FAILURE])
    assert [str(e) for e in seen] == [FAILURE, FAILURE] and seen[0] is seen[1]


def test_a_middleware_outside_that_answers_errors_sends_its_answer_with_the_cookie(redis_url: str,
                                                                                  prefix: str) -> None:
    app = make_app(redis_url, prefix, outer=(Middleware(JsonErrors),))
    out = login_fails(app)
    assert_kept(out)
    assert out["body"] == f'{{"error":"{FAILURE}"}}'
    assert app.state.calls == []  # the error was answered before ServerErrorMiddleware saw it


def test_a_mounted_app_with_its_own_session_middleware(redis_url: str, prefix: str) -> None:
    shop = make_app(redis_url, prefix)
    site = Starlette(routes=[Mount("/shop", app=shop)])

    async def main() -> dict[str, Any]:
        async with browser_of(site) as browser:
            await browser.post("/shop/set/cart/apple")
            before = browser.cookies["session"]
            failed = await browser.post("/shop/login-fails")
            return {"status": failed.status_code, "set_cookie": failed.headers.get("set-cookie", ""),
                    "before": before, "after": browser.cookies["session"],
                    "data": (await browser.get("/shop/get")).json()}

    assert_kept(asyncio.run(main()))
    assert shop.state.calls == [FAILURE]


def test_the_first_request_of_an_app_served_without_its_lifespan(redis_url: str, prefix: str) -> None:
    """A worker's first request, its app never called before (no lifespan: httpx's
    ASGITransport, uvicorn --lifespan off): the failing login still gets its cookie,
    on Starlette's plain 500; the app's handler runs once (its page is not sent)."""
    with contextlib.closing(sync_store(redis_url, prefix)) as store:
        cookie = store.sign(store.create({"cart": "apple"}).sid)
    app = make_app(redis_url, prefix)

    async def main() -> tuple[httpx.Response, str, Any]:
        async with browser_of(app) as browser:  # the cookie of a session another worker stored
            failed = await browser.post("/login-fails", headers={"cookie": f"session={cookie}"})
            return failed, browser.cookies["session"], (await browser.get("/get")).json()

    failed, after, data = asyncio.run(main())
    assert (failed.status_code, failed.text, after != cookie, data) == (
        500, "Internal Server Error", True, {"cart": "apple"})
    assert failed.headers.get("set-cookie", "").startswith(f"session={after};")
    assert app.state.calls == [FAILURE]


# -- a fresh uvicorn worker: its lifespan lets the very first request get the app's page --


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _uvicorn(env: dict[str, str], log: Path, module: str = Path(__file__).stem,
             lifespan: str = "on") -> Iterator[str]:
    """``uvicorn --factory`` *module*'s ``served`` (of this directory; default this
    module's :func:`served`) in a process of its own (lifespan on, as by default), until
    the block ends (SIGINT, then SIGKILL after 20 s); its log in *log*."""
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{module}:served", "--app-dir",
               str(Path(__file__).parent), "--host", "127.0.0.1", "--port", str(port), "--lifespan", lifespan]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # listening once the lifespan's startup is done (uvicorn binds after it)
            assert proc.poll() is None, f"uvicorn exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"uvicorn did not listen within 30 s: {log.read_text()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
            raise AssertionError("uvicorn did not stop within 20 s of SIGINT") from None


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])
def test_a_fresh_worker_under_uvicorn(redis_url: str, prefix: str, tmp_path: Path, kind: str) -> None:
    with contextlib.closing(sync_store(redis_url, prefix)) as store:
        cookie = store.sign(store.create({"cart": "apple"}).sid)
    log = tmp_path / "uvicorn.log"
    with _uvicorn({"R17_URL": redis_url, "R17_PREFIX": prefix, "R17_KIND": kind}, log) as base:
        # a connection each: uvicorn closes the one an exception came through
        with httpx.Client(base_url=base, timeout=20, headers={"connection": "close"}) as browser:
            # the worker's first request, with the cookie of a session another one stored
            failed = browser.post("/login-fails", headers={"cookie": f"session={cookie}"})
            after = browser.cookies["session"]
            data = browser.get("/get").json()
            calls = browser.get("/calls").json()
    assert (failed.status_code, failed.text, failed.headers.get("x-page")) == (
        500, '{"error":"ours"}', "ours")  # the app's page: the lifespan put _ErrorCookies in place
    assert after != cookie and failed.headers.get("set-cookie", "").startswith(f"session={after};")
    assert (data, calls) == ({"cart": "apple"}, [FAILURE])
    text = log.read_text()
    assert text.count("Exception in ASGI application") == 1 and FAILURE in text, text
