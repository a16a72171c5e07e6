"""Review (helper T) of the Starlette adapter as a demanding Starlette/FastAPI user
drives it: background tasks that change the session after the response, the
store failing inside the app (not only at load and save), and a shutdown whose
broadcaster fails to stop. In-process (httpx.ASGITransport) on the suite's Redis;
each failure is injected at a chosen call, no sleeps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from test_starlette_adapter import _no_statekit_env, client  # noqa: F401 -- its environment fixture (autouse)

from starlette_statekit import StateKit, get_state
from starlette_statekit.sessions import SessionMiddleware, destroy_session, incr_session, rotate_session
from statekit.broadcast.aio import AsyncBroadcaster
from statekit.errors import BackendUnavailable, BroadcastError
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.redis import AsyncRedisEngine

pytestmark = [pytest.mark.redis]

KEY = "starlette-review-t-key"


async def v_get(request: Request) -> Response:
    return JSONResponse(dict(request.session.items()))


async def v_set(request: Request) -> Response:
    request.session[request.path_params["key"]] = request.path_params["value"]
    return PlainTextResponse("ok")


async def v_later(request: Request) -> Response:
    """Answers at once; a background task then records the request in the session."""

    async def record() -> None:
        request.session["audit"] = "recorded after the response"

    return PlainTextResponse("accepted", background=BackgroundTask(record))


async def v_login(request: Request) -> Response:
    await rotate_session(request)
    request.session["user"] = "carol"
    return PlainTextResponse("ok")


async def v_logout(request: Request) -> Response:
    await destroy_session(request)
    if request.query_params.get("flash"):
        request.session["flash"] = "bye"  # goes to a new session of its own
    return PlainTextResponse("ok")


async def v_incr(request: Request) -> Response:
    return PlainTextResponse(str(await incr_session(request, "n")))


async def v_fails(request: Request) -> Response:
    request.session["half"] = "done"
    if request.path_params["how"] == "crash":
        raise RuntimeError("a bug")
    raise HTTPException(400)


ROUTES = [Route("/get", v_get), Route("/fails/{how}", v_fails, methods=["POST"]),
          Route("/set/{key}/{value}", v_set, methods=["POST"]),
          Route("/later", v_later, methods=["POST"]), Route("/login", v_login, methods=["POST"]),
          Route("/logout", v_logout, methods=["POST"]), Route("/incr", v_incr, methods=["POST"])]


def make_app(url: str, **options: Any) -> Starlette:
    prefix = "rt" + uuid.uuid4().hex[:10]
    return Starlette(routes=ROUTES, middleware=[
        Middleware(SessionMiddleware, url=url, secret_key=KEY, key_prefix=prefix, **options)])


def test_a_background_task_changing_the_session_after_the_response_is_saved(redis_url: str) -> None:
    """The session is saved as the response starts; a BackgroundTask runs after the
    response was sent and sets a key. Its change was dropped without a word (the
    next request did not see it); it is saved once the task is done (no cookie can
    go out any more: the session is the one the browser already holds)."""
    app = make_app(redis_url, near_cache=0)

    async def main() -> tuple[dict[str, Any], str | None]:
        async with client(app) as c:
            await c.post("/set/cart/pear")
            later = await c.post("/later")
            return (await c.get("/get")).json(), later.headers.get("set-cookie")

    seen, cookie = asyncio.run(main())
    assert seen == {"cart": "pear", "audit": "recorded after the response"}
    assert cookie is None


def test_what_a_logout_sets_afterwards_is_saved_once_and_no_loss_is_reported(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The response's save carries what the request set after destroy_session into
    a new session: nothing is left to save once the app returns, and no warning of
    a dropped change may be logged (a false alarm)."""
    app = make_app(redis_url, near_cache=0)

    async def main() -> dict[str, Any]:
        async with client(app) as c:
            await c.post("/set/cart/pear")
            await c.post("/logout?flash=1")
            return (await c.get("/get")).json()

    assert asyncio.run(main()) == {"flash": "bye"}
    assert not [r for r in caplog.records if "not saved" in r.getMessage()]


def test_an_unhandled_error_saves_nothing_and_a_handled_one_saves_like_any_response(redis_url: str) -> None:
    """What the docstring says of errors: the 500 of a crash (sent by Starlette's
    outermost middleware) saves nothing the request changed; the 400 an exception
    handler gives is a response like any other."""
    app = make_app(redis_url, near_cache=0)

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await c.post("/set/cart/pear")
            crash = await c.post("/fails/crash")
            after_crash = (await c.get("/get")).json()
            handled = await c.post("/fails/handled")
            return [crash.status_code, after_crash, handled.status_code, (await c.get("/get")).json()]

    assert asyncio.run(main()) == [500, {"cart": "pear"}, 400, {"cart": "pear", "half": "done"}]


@pytest.mark.parametrize("route", ["/login", "/logout", "/incr"])
def test_the_store_failing_inside_the_app_is_a_503_not_a_500(redis_url: str, route: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """rotate_session, destroy_session and incr_session reach Redis from inside the
    app. Redis failing there (BackendUnavailable) must be the middleware's 503 with
    Retry-After, cookie untouched, as at load and save; it was a 500 without
    Retry-After (a server error page, the client does not retry) unless StateKit's
    exception handler was installed."""
    app = make_app(redis_url, near_cache=0, retry_after=9)
    method = {"/login": "rotate", "/logout": "destroy", "/incr": "incr"}[route]

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("session store down (test)")

    async def main() -> tuple[int, str | None, str | None, dict[str, Any]]:
        async with client(app) as c:
            await c.post("/set/cart/pear")
            with monkeypatch.context() as m:
                m.setattr(AsyncSessionStore, method, down)
                answer = await c.post(route)
            after = (await c.get("/get")).json()
        return answer.status_code, answer.headers.get("retry-after"), answer.headers.get("set-cookie"), after

    status, retry_after, cookie, after = asyncio.run(main())
    assert (status, retry_after, cookie) == (503, "9", None)
    assert after == {"cart": "pear"}  # the same session, nothing lost


def test_shutdown_closes_the_cache_even_when_the_broadcaster_fails_to_stop(redis_url: str) -> None:
    """The lifespan's shutdown stops the broadcaster, then closes the cache and the
    blob store. A broadcaster whose stop() raises (a release refused by Redis) left
    the cache's connections and threads open."""
    prefix = "rt" + uuid.uuid4().hex[:10]
    broadcaster = AsyncBroadcaster(redis_url, key_prefix=prefix)

    async def refused(timeout: float = 5.0) -> None:
        raise BroadcastError("release refused (test)")

    broadcaster.stop = refused  # type: ignore[method-assign]
    app = Starlette(routes=ROUTES)
    StateKit(app, redis_url=redis_url, key_prefix=prefix, broadcaster=broadcaster, sessions_enabled=False)
    state = get_state(app)
    closed: list[str] = []

    async def aclose() -> None:
        closed.append("cache")

    state.cache.aclose = aclose

    async def main() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(BroadcastError):
        asyncio.run(main())
    assert closed == ["cache"]


def test_a_login_whose_save_fails_after_the_rotation_sends_the_new_cookie_with_the_503(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docstring's exception to "the cookie is left alone": rotate_session gave
    the session a new id in Redis, then the response's save failed. The 503 must
    carry the new id (the old one names a tombstone now: keeping it would be a
    logout), and the data stays reachable through it when Redis is back."""
    app = make_app(redis_url, near_cache=0)

    async def main() -> tuple[int, bool, dict[str, Any]]:
        async with client(app) as c:
            await c.post("/set/cart/pear")
            old = c.cookies["session"]

            async def down(self: AsyncRedisEngine, handle: str, **kwargs: Any) -> Any:
                raise BackendUnavailable("down after the rotation (test)")

            with monkeypatch.context() as m:
                m.setattr(AsyncRedisEngine, "write", down)  # the login's only write: its save
                answer = await c.post("/login")
            return answer.status_code, c.cookies["session"] != old, (await c.get("/get")).json()

    status, renewed, after = asyncio.run(main())
    assert (status, renewed) == (503, True)
    assert after == {"cart": "pear"}  # the rotated session, without the unsaved "user"


def test_a_websocket_whose_session_cannot_load_is_denied_with_the_503_where_the_server_can(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down while the middleware loads a WebSocket's session, before the app
    runs: a ``websocket.close`` before the accept is turned by the server into an
    HTTP 403 on the handshake (uvicorn), which a client takes for "not allowed" (a
    front end logs the user out), not "try again". Where the server takes a denial
    response (``websocket.http.response``) it must get the 503 with Retry-After, as
    StateKit's exception handler gives; elsewhere the close with 1013 stays."""
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    prefix = "rt" + uuid.uuid4().hex[:10]
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)], middleware=[
        Middleware(SessionMiddleware, url=redis_url, secret_key=KEY, key_prefix=prefix, near_cache=0,
                   retry_after=9)])

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("session store down (test)")

    monkeypatch.setattr(AsyncSessionStore, "open", down)

    async def connect(extensions: dict[str, Any]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        inbox = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop()
            await asyncio.Event().wait()  # the client says nothing more
            raise AssertionError("unreachable")

        async def send(message: Any) -> None:
            sent.append(dict(message))

        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/ws",
                 "raw_path": b"/ws", "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                 "headers": [(b"cookie", b"session=" + b"x" * 40)], "server": None, "subprotocols": [],
                 "extensions": extensions}
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await connect({"websocket.http.response": {}}), await connect({})

    denied, refused = asyncio.run(main())
    assert [m["type"] for m in denied] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert denied[0]["status"] == 503
    assert (b"retry-after", b"9") in denied[0]["headers"]
    assert [(m["type"], m["code"]) for m in refused] == [("websocket.close", 1013)]
