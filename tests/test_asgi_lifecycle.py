"""statekit.asgi: the ASGI lifecycle middleware, in process (httpx's ASGITransport and
raw ASGI calls), and Django's ASGI path (in a subprocess with its own settings)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_lifecycle
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from statekit.asgi import LifecycleMiddleware, interface_of
from statekit.lifecycle import COUNTED, DrainState, Lifecycle, get_drain_state

seen: list[str] = []
#: the fixture: a fresh drain state installed as this process's
drain = test_lifecycle.drain


async def echo(request: Request) -> PlainTextResponse:
    seen.append(request.url.path)
    info = get_drain_state().slot_info(0)
    return PlainTextResponse(f"{request.url.path} in_flight={info.in_flight}")


app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


@pytest.fixture(autouse=True)
def _forget_seen() -> None:
    seen.clear()


def call(asgi_app: Any, *requests: tuple[str, str], **client: Any) -> list[httpx.Response]:
    """Send *requests* (method, path) in order through httpx's ASGI transport."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=asgi_app, **client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.request(m, p) for m, p in requests]

    return asyncio.run(run())


def test_serves_and_counts_when_not_draining(drain: DrainState) -> None:
    (r,) = call(LifecycleMiddleware(app), ("GET", "/x"))
    assert r.status_code == 200 and r.text == "/x in_flight=1"
    assert "connection" not in r.headers
    info = drain.slot_info(0)
    assert (info.started, info.completed, info.in_flight, info.rejected) == (1, 1, 0, 0)


def test_endpoints_are_answered_before_the_app(drain: DrainState) -> None:
    live, ready = call(LifecycleMiddleware(app), ("GET", "/healthz"), ("GET", "/readyz"))
    assert live.status_code == 200 and live.json() == {"status": "ok", "draining": False}
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "checks": {}}
    assert ready.headers["cache-control"] == "no-store"
    assert seen == [] and drain.slot_info(0).started == 0
    mw = LifecycleMiddleware(app, Lifecycle(health_path="/-/live", ready_path="/-/ready"))
    live, _, other = call(mw, ("GET", "/-/live"), ("GET", "/-/ready"), ("GET", "/healthz"))
    assert live.json()["status"] == "ok" and other.text.startswith("/healthz")


def test_reject_mode_answers_503_before_the_app(drain: DrainState) -> None:
    drain.start_drain(serve_for=60)
    write, ready, live = call(LifecycleMiddleware(app, Lifecycle(retry_after=3)),
                              ("POST", "/write"), ("GET", "/readyz"), ("GET", "/healthz"))
    assert write.status_code == 503 and write.json() == {"status": "draining"}
    assert write.headers["retry-after"] == "3" and write.headers["x-statekit-drain"] == "reject"
    assert write.headers["connection"] == "close"
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert live.status_code == 200 and live.json()["draining"] is True
    assert seen == [] and drain.slot_info(0).rejected == 1


def test_serve_mode_serves_with_connection_close(drain: DrainState) -> None:
    drain.mode = "serve"
    drain.start_drain(serve_for=60)
    r, ready = call(LifecycleMiddleware(app), ("GET", "/a"), ("GET", "/readyz"))
    assert r.status_code == 200 and r.headers["connection"] == "close"
    assert ready.status_code == 503 and seen == ["/a"]
    # the Lifecycle's own mode wins over the drain state's
    drain.mode = "reject"
    (r,) = call(LifecycleMiddleware(app, Lifecycle(mode="serve")), ("GET", "/b"))
    assert r.status_code == 200 and r.headers["connection"] == "close"


def test_a_readiness_check_runs_in_a_worker_thread_never_on_the_loop(drain: DrainState) -> None:
    """The check blocks until a task *on the loop* lets it go: had it run on the loop,
    that task could not run and the check would give up at its budget (503)."""
    release = threading.Event()
    threads: list[str] = []

    def slow_backend(timeout: float) -> None:
        threads.append(threading.current_thread().name)
        if not release.wait(timeout):
            raise TimeoutError("the loop was blocked")

    lc = Lifecycle(checks={"backend": slow_backend}, budget=10, cache_ttl=60)
    mw = LifecycleMiddleware(app, lc)
    ticks: list[int] = []

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async def heartbeat() -> None:
            while not release.is_set():
                ticks.append(1)
                if threads:  # the check is running: the loop is free, let it go
                    release.set()
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(heartbeat())
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            first = await c.get("/readyz")
            second = await c.get("/readyz")  # cached: answered on the loop, no check
        await beat
        return first, second

    first, second = asyncio.run(run())
    assert first.status_code == 200 and first.json()["checks"] == {"backend": "ok"}
    assert second.json() == first.json()
    assert len(threads) == 1 and threads[0] != threading.main_thread().name
    assert ticks


def test_lifespan_and_websocket_scopes_pass_through(drain: DrainState) -> None:
    events: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        events.append((scope["type"], COUNTED in scope))
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

    async def run() -> list[Any]:
        mw = LifecycleMiddleware(inner)
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Any] = []

        async def receive() -> Any:
            return inbox.pop(0)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        await mw({"type": "websocket", "path": "/healthz"}, receive, send)
        return sent

    drain.start_drain()  # neither is refused while draining
    sent = asyncio.run(run())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == [("lifespan", False), "lifespan.startup", "lifespan.shutdown", ("websocket", False)]


def _handshake(mw: Any, extensions: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """One WebSocket handshake to /ws through *mw*: what it sent, and what the app saw."""
    ran: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        await receive()
        await send({"type": "websocket.accept"})

    async def run() -> list[Any]:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "websocket.connect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "extensions": extensions}
        await LifecycleMiddleware(inner, mw.lifecycle)(scope, receive, send)
        return sent

    return asyncio.run(run()), ran


def test_a_websocket_handshake_is_denied_while_draining_in_reject_mode(drain: DrainState) -> None:
    """Refused as a request would be: a 503 with Retry-After where the server takes a
    denial response, else a close before the accept (1013: try again later); served
    when not draining, and while draining in mode serve."""
    mw = LifecycleMiddleware(app, Lifecycle())
    sent, ran = _handshake(mw, {})
    assert sent == [{"type": "websocket.accept"}] and ran == ["/ws"]
    drain.start_drain(serve_for=60)
    sent, ran = _handshake(mw, {"websocket.http.response": {}})
    assert ran == [] and [m["type"] for m in sent] == ["websocket.http.response.start",
                                                       "websocket.http.response.body"]
    assert sent[0]["status"] == 503 and b"retry-after" in dict(sent[0]["headers"])
    assert json.loads(sent[1]["body"]) == {"status": "draining"}
    sent, ran = _handshake(mw, {})
    assert ran == [] and sent == [{"type": "websocket.close", "code": 1013, "reason": "draining"}]
    assert drain.slot_info(0).rejected == 2
    drain.mode = "serve"
    sent, ran = _handshake(LifecycleMiddleware(app, Lifecycle(mode="serve")), {})
    assert sent == [{"type": "websocket.accept"}] and ran == ["/ws"]


def test_an_app_error_still_counts_the_request_finished(drain: DrainState) -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(LifecycleMiddleware(boom), ("GET", "/"))
    info = drain.slot_info(0)
    assert (info.in_flight, info.completed) == (0, 1)


def test_wrapped_twice_answers_and_counts_once(drain: DrainState) -> None:
    """The adapter wraps the app, ``statekit serve`` wraps it again: the outer one
    does the work, the inner one steps aside."""
    inner_checks: list[int] = []
    inner = LifecycleMiddleware(app, Lifecycle(checks={"inner": lambda t: inner_checks.append(1)}))
    r, ready = call(LifecycleMiddleware(inner), ("GET", "/x"), ("GET", "/readyz"))
    assert r.text == "/x in_flight=1" and ready.json()["checks"] == {}
    assert drain.slot_info(0).started == 1 and inner_checks == []


def test_root_path_is_left_out_of_the_endpoint_path(drain: DrainState) -> None:
    (r,) = call(LifecycleMiddleware(app), ("GET", "/svc/healthz"), root_path="/svc")
    assert r.json()["status"] == "ok" and seen == []


def test_interface_of_tells_asgi_from_wsgi() -> None:
    from django.core.handlers.asgi import ASGIHandler
    from fastapi import FastAPI
    from flask import Flask

    from statekit.lifecycle import LifecycleMiddleware as WSGILifecycle

    async def asgi_function(scope: Any, receive: Any, send: Any) -> None:
        return None

    def wsgi_function(environ: Any, start_response: Any) -> list[bytes]:
        return []

    asgi_apps = [app, FastAPI(), asgi_function, LifecycleMiddleware(app), ASGIHandler.__new__(ASGIHandler)]
    wsgi_apps = [Flask(__name__), wsgi_function, WSGILifecycle(wsgi_function), Starlette]
    assert [interface_of(a) for a in asgi_apps] == ["asgi"] * len(asgi_apps)
    assert [interface_of(a) for a in wsgi_apps] == ["wsgi"] * len(wsgi_apps)


@pytest.mark.gunicorn
def test_serve_wraps_an_asgi_app_once(drain: DrainState) -> None:
    from statekit.gunicorn import wrap_app

    wrapped = wrap_app(app)
    assert isinstance(wrapped, LifecycleMiddleware) and wrapped.app is app
    assert wrap_app(wrapped) is wrapped
    adapted = Starlette(routes=app.routes, middleware=[Middleware(LifecycleMiddleware)])
    assert wrap_app(adapted) is adapted


DJANGO_ASGI = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False, SECRET_KEY="x" * 50, ALLOWED_HOSTS=["example.com"], ROOT_URLCONF=__name__,
        MIDDLEWARE=["django_statekit.lifecycle.DrainMiddleware"], INSTALLED_APPS=[],
        DATABASES={}, STATEKIT_DRAIN_MODE="reject",
    )
    django.setup()

    from django.http import HttpResponse
    from django.urls import path
    import httpx
    from django_statekit import lifecycle
    from statekit.lifecycle import DrainState, Lifecycle, set_drain_state

    views = []

    def where():
        return "loop" if threading.current_thread() is threading.main_thread() else "thread"

    async def write(request):
        return HttpResponse("written")

    get_lifecycle = lifecycle.get_lifecycle

    def recording_get_lifecycle():  # DrainMiddleware calls it: on which thread?
        views.append("middleware on " + where())
        return get_lifecycle()

    urlpatterns = [path("write", write)]
    state = DrainState()
    set_drain_state(state)

    async def send(asgi_app, method, path, host="example.com"):
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
            r = await c.request(method, path)
            return [r.status_code, dict(r.headers), r.text]

    async def main():
        out = {}
        wrapped = lifecycle.get_asgi_application()
        plain = __import__("django.core.asgi", fromlist=["x"]).get_asgi_application()
        lifecycle.get_lifecycle = recording_get_lifecycle
        out["probe_by_ip"] = await send(wrapped, "GET", "/healthz", host="10.0.0.7")
        out["write"] = await send(wrapped, "POST", "/write")
        out["counted_once"] = state.slot_info(0).started
        # DrainMiddleware alone (no wrapper), async all the way, readiness in a thread
        lifecycle._lifecycle = Lifecycle(checks={"t": lambda t: views.append("check on " + where())},
                                         cache_ttl=0)
        out["mw_ready"] = await send(plain, "GET", "/readyz")
        out["mw_write"] = await send(plain, "POST", "/write")
        state.start_drain()
        out["mw_reject"] = await send(plain, "POST", "/write")
        out["wrapped_reject"] = await send(wrapped, "POST", "/write")
        lifecycle._lifecycle = Lifecycle(mode="serve")
        state.stop_drain()
        state.start_drain(serve_for=60)  # mode serve: served until the pre-stop delay ends
        out["mw_served_while_draining"] = await send(plain, "POST", "/write")
        out["views"] = views
        out["slot"] = [state.slot_info(0).started, state.slot_info(0).rejected]
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_django_asgi_application_and_async_drain_middleware(tmp_path: Path) -> None:
    (tmp_path / "django_asgi_check.py").write_text(DJANGO_ASGI)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(tmp_path / "django_asgi_check.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["probe_by_ip"][0] == 200 and '"draining": false' in r["probe_by_ip"][2]  # before ALLOWED_HOSTS
    assert r["write"][0] == 200 and r["write"][2] == "written"
    assert r["counted_once"] == 1  # the wrapper counted; DrainMiddleware stepped aside
    assert r["mw_ready"][0] == 200 and '"t": "ok"' in r["mw_ready"][2]
    assert r["mw_write"][0] == 200
    for key in ("mw_reject", "wrapped_reject"):
        status, headers, _ = r[key]
        assert status == 503 and headers["retry-after"] == "1" and headers["x-statekit-drain"] == "reject"
        assert headers["connection"] == "close"
    status, headers, _ = r["mw_served_while_draining"]
    assert status == 200 and headers["connection"] == "close"
    # DrainMiddleware ran on the loop (no sync_to_async hop), but for the wrapped app
    # (it stepped aside before asking anything); the readiness check ran in a thread
    assert r["views"] == ["middleware on loop", "check on thread", "middleware on loop", "middleware on loop",
                          "middleware on loop"]
    assert r["slot"] == [3, 2]


def test_a_websocket_handshake_to_a_draining_uvicorn_gets_503(drain: DrainState) -> None:
    """The same on a real uvicorn (``websockets``, the ``asgi`` extra's WebSocket
    library): the handshake is served, then refused with 503 and Retry-After while
    the process drains, then served again."""
    import socket

    import uvicorn
    import websockets
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def hello(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    served = LifecycleMiddleware(Starlette(routes=[WebSocketRoute("/ws", hello)]), Lifecycle())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(served, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    async def handshakes() -> list[Any]:
        url = f"ws://127.0.0.1:{port}/ws"
        out: list[Any] = []
        async with websockets.connect(url) as c:
            out.append(await c.recv())
        drain.start_drain(serve_for=60)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        out.append((refused.value.response.status_code, refused.value.response.headers.get("Retry-After")))
        drain.stop_drain()
        async with websockets.connect(url) as c:
            out.append(await c.recv())
        return out

    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        assert server.started
        assert asyncio.run(handshakes()) == ["hi", (503, "1"), "hi"]
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
