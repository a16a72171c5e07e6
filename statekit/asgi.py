"""Health endpoints and graceful drain for ASGI apps (Starlette, FastAPI, Django's
ASGI handler): the ASGI twin of :class:`statekit.lifecycle.LifecycleMiddleware`.

It takes the same :class:`~statekit.lifecycle.Lifecycle` and the same drain state,
and asks it the same questions (:meth:`~statekit.lifecycle.Lifecycle.admit`,
:meth:`~statekit.lifecycle.Lifecycle.reply`): ``/healthz`` and ``/readyz`` are
answered before the app runs; while the process drains (SIGTERM under ``statekit
serve``) readiness is 503, every response carries ``Connection: close`` and, in mode
``reject``, a new request is answered ``503`` with ``Retry-After`` before the app
runs. Readiness checks that have to run (Redis ``PING``, S3 ``HeadBucket``) run in a
worker thread, never on the event loop; a cached result or a draining answer is
given on the loop.

A ``lifespan`` scope passes through to the app, with two additions made as it
starts. The readiness checks run once (:meth:`~statekit.lifecycle.Lifecycle.warm`, in
a worker thread, beside the app's own startup; ``lifespan.startup.complete`` waits for
them, up to :data:`~statekit.lifecycle.WARM_TIMEOUT`), so their clients exist before
the first probe and that probe answers within the budget; a backend that is down does
not fail the start, readiness says 503 with the reason. And under plain uvicorn
(``uvicorn app:app``, no ``statekit serve``), SIGTERM drains as under ``statekit
serve``: the drain starts at once (readiness 503, ``Connection: close``, new requests
refused in mode ``reject``), uvicorn is told to stop after ``STATEKIT_PRE_STOP_DELAY``
seconds (2; 0 stops at once): it then closes its listener and lets the requests in
flight finish. A second SIGTERM, and SIGINT (Ctrl+C), stop at once; ``uvicorn
--reload`` and ``uvicorn --workers N`` (whose supervisor also stops one worker with
SIGTERM to replace it while the others serve) are left as they are. Under
``statekit serve`` the master drains and nothing is added; under another server, or
uvicorn with ``--lifespan off``, SIGTERM is the server's.

A WebSocket handshake passes through, except while the process drains in mode
``reject``: it is denied as a request would be, with ``503`` and ``Retry-After`` where
the server supports denial responses (the ``websocket.http.response`` extension:
uvicorn with ``websockets``), else closed before the accept with code 1013 (try again
later; the client sees the handshake refused), so a client reconnects to a worker that
stays rather than to one about to stop. A WebSocket already open is left alone: it
ends when the worker stops.

    from statekit.asgi import LifecycleMiddleware
    app = LifecycleMiddleware(app)  # or Lifecycle(Settings.from_env()) as second argument

``statekit serve`` wraps an ASGI app in it unless it already is.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from .lifecycle import APP, COUNTED, REJECT, Lifecycle

__all__ = ["ASGIApp", "LifecycleMiddleware", "interface_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: an ASGI 3 application (loosely typed: each framework spells scope and messages its own way)
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_CLOSE = (b"connection", b"close")


def interface_of(app: object) -> str:
    """``"asgi"`` when *app* is an ASGI 3 callable (an ``async def`` function, or an
    object whose ``__call__`` is one: Starlette, FastAPI, Django's ``ASGIHandler``),
    else ``"wsgi"``. The same test uvicorn uses to tell ASGI 3 from ASGI 2."""
    if isinstance(app, LifecycleMiddleware):
        return "asgi"
    if inspect.isclass(app):
        return "wsgi"
    if inspect.iscoroutinefunction(app):
        return "asgi"
    call = getattr(type(app), "__call__", None)  # noqa: B004 -- the method, not callable()
    return "asgi" if call is not None and inspect.iscoroutinefunction(call) else "wsgi"


def _closing(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != b"connection"] + [_CLOSE]


class LifecycleMiddleware:
    """ASGI middleware: health endpoints, request accounting and draining (see the
    module docstring). Same constructor as the WSGI one.

    A request is counted in this process's drain-state slot from when the app is
    called until it returns (the response sent, or the app gave up), so the master
    of ``statekit serve`` reports in-flight requests and recycles workers by request
    count as it does for WSGI. Under another :class:`LifecycleMiddleware` (the app
    wrapped twice: by the framework adapter and by ``statekit serve``) the inner one
    steps aside, so nothing is answered or counted twice.

    :param app: the ASGI 3 app.
    :param lifecycle: endpoints, drain mode and checks; default ``Lifecycle()``.
    """

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle | None = None) -> None:
        self.app = app
        self.lifecycle = lifecycle or Lifecycle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] not in ("http", "websocket") or scope.get(COUNTED):
            await self.app(scope, receive, send)
            return
        lc = self.lifecycle
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):  # PATH_INFO, as the WSGI middleware sees it
            path = path[len(root):]
        kind = lc.admit(path)
        if scope["type"] == "websocket":
            if kind == REJECT:
                await self._deny_websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if kind != APP:
            reply = lc.reply_now(kind)
            if reply is None:  # the readiness checks have to run: they block
                reply = await asyncio.to_thread(lc.reply, kind)
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
            if kind == REJECT:
                headers.append(_CLOSE)
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            return
        state = lc.drain

        async def drain_aware_send(message: Message) -> None:
            if message["type"] == "http.response.start" and state.closing:
                message = {**message, "headers": _closing(message.get("headers", ()))}
            await send(message)

        # Django's DrainMiddleware (and an inner twin) see it and leave the request to us
        scope = {**scope, COUNTED: True}
        state.request_started()
        try:
            await self.app(scope, receive, drain_aware_send)
        finally:
            state.request_finished()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's lifespan, with the checks' first run and plain uvicorn's drain on
        SIGTERM (the module docstring)."""
        self._drain_on_sigterm()

        async def warm() -> None:
            with contextlib.suppress(Exception):  # never fails the start (warm() does not raise)
                await asyncio.to_thread(self.lifecycle.warm)

        warming = asyncio.ensure_future(warm())

        async def send_when_warm(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await warming
            await send(message)

        try:
            await self.app(scope, receive, send_when_warm)
        except Exception:
            # an app without lifespan support (Django's handler raises): the server
            # starts serving once this is raised, so after the warm-up
            await warming
            raise

    def _drain_on_sigterm(self) -> None:
        """Under plain uvicorn, make its SIGTERM handler start the drain and stop the
        server only after the pre-stop delay (the module docstring). Runs on the
        server's loop as the lifespan starts: uvicorn's handlers are set by then."""
        if threading.current_thread() is not threading.main_thread():
            return  # no signal handler of ours (a server run in a thread, a test)
        previous = signal.getsignal(signal.SIGTERM)
        server = getattr(previous, "__self__", None)
        try:
            from uvicorn.server import Server
        except ImportError:  # pragma: no cover - not served by uvicorn
            return
        if (not isinstance(server, Server) or getattr(server, "statekit_drains", False)
                or getattr(server.config, "reload", False) or getattr(server.config, "workers", 1) > 1
                or self.lifecycle.pre_stop_delay <= 0):
            # another server, statekit serve's worker (its master drains), a dev reload; a
            # worker of uvicorn --workers N, whose supervisor also replaces one with SIGTERM
            # while the others serve (SIGHUP, SIGTTOU): drained, it answered 503 meanwhile
            return
        handle_exit: Callable[[int, FrameType | None], Any] = previous  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        state = self.lifecycle.drain
        delay = self.lifecycle.pre_stop_delay

        def stop(sig: int, frame: FrameType | None) -> None:
            if not server.should_exit:  # not stopping already (a Ctrl+C during the delay)
                handle_exit(sig, frame)

        def drain_then_stop(sig: int, frame: FrameType | None) -> None:
            if state.draining:  # a second SIGTERM: stop now
                stop(sig, frame)
                return
            state.start_drain(serve_for=delay)
            logging.getLogger("uvicorn.error").info(
                "statekit: draining (mode %s): readiness 503, Connection: close; stopping to accept in "
                "%gs (STATEKIT_PRE_STOP_DELAY)", self.lifecycle.mode or state.mode, delay)
            loop.call_later(delay, stop, sig, frame)

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            # on the loop, not in the handler: the drain state's lock may be held by
            # the code the signal interrupted
            loop.call_soon_threadsafe(drain_then_stop, sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _deny_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a WebSocket handshake while draining (the module docstring)."""
        reply = self.lifecycle.reply_now(REJECT)
        assert reply is not None  # a rejection never runs the checks
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
            await send({"type": "websocket.http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": reply.body})
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": "draining"})
