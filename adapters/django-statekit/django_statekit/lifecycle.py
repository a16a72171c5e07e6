"""Health endpoints and graceful drain for Django (:mod:`statekit.lifecycle`).

In ``wsgi.py``, use statekit's WSGI application instead of Django's::

    from django_statekit.lifecycle import get_wsgi_application
    application = get_wsgi_application()

and run it with ``statekit serve myproject.wsgi:application``. Under ASGI, in
``asgi.py``::

    from django_statekit.lifecycle import get_asgi_application
    application = get_asgi_application()

and ``statekit serve myproject.asgi:application`` (uvicorn workers). ``/healthz``
(liveness) and ``/readyz`` (readiness: not draining, Redis and the blob store
reachable within a small budget) are answered before Django runs — no URL
resolution, no ``ALLOWED_HOSTS`` check, no database — and while the process drains
(SIGTERM under ``statekit serve``) new requests get a 503 a load balancer can retry
elsewhere. ``wrap(application)`` does the same for a WSGI app you already have,
``wrap_asgi(application)`` for an ASGI one.

Where ``wsgi.py`` cannot change, add ``"django_statekit.lifecycle.DrainMiddleware"``
first in ``MIDDLEWARE``: it answers the endpoints and rejects while draining, but
only once Django has built the request (so ``ALLOWED_HOSTS`` applies to probes) and
its request counting ends when the view returns, not when a streamed body ends.
It is sync and async capable: under ASGI it runs on the event loop (no thread hop
per request), readiness checks that have to run go to a worker thread, and while
draining responses carry ``Connection: close``. Under
the WSGI or ASGI wrapper as well, it steps aside (requests are not counted twice).

Settings (then the environment): ``STATEKIT_HEALTH_PATH`` (``/healthz``),
``STATEKIT_READY_PATH`` (``/readyz``), ``STATEKIT_DRAIN_MODE`` (``reject`` /
``serve``; default: what ``statekit serve --drain-mode`` set),
``STATEKIT_READY_BUDGET`` (0.5 s), ``STATEKIT_RETRY_AFTER`` (1 s).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from statekit import asgi
from statekit.lifecycle import APP, COUNTED, REJECT, Lifecycle, LifecycleMiddleware, Reply

from ._middleware import HybridMiddleware
from .conf import get_number, get_setting, get_settings

__all__ = ["DrainMiddleware", "get_asgi_application", "get_lifecycle", "get_wsgi_application",
           "lifecycle_from_settings", "wrap", "wrap_asgi"]

_lifecycle: Lifecycle | None = None
_lock = threading.Lock()


def lifecycle_from_settings() -> Lifecycle:
    """A new :class:`Lifecycle` from the Django settings (then the environment)."""
    return Lifecycle(
        get_settings(),
        health_path=get_setting("STATEKIT_HEALTH_PATH", "/healthz"),
        ready_path=get_setting("STATEKIT_READY_PATH", "/readyz"),
        mode=get_setting("STATEKIT_DRAIN_MODE") or None,
        budget=get_number("STATEKIT_READY_BUDGET", 0.5),
        retry_after=int(get_number("STATEKIT_RETRY_AFTER", 1)),
    )


def get_lifecycle() -> Lifecycle:
    """The project's :class:`Lifecycle`, created from the settings on first use; add
    checks to it (``get_lifecycle().add_check("db", check)``)."""
    global _lifecycle
    if _lifecycle is None:
        with _lock:
            if _lifecycle is None:
                _lifecycle = lifecycle_from_settings()
    return _lifecycle


def wrap(application: Any, lifecycle: Lifecycle | None = None) -> LifecycleMiddleware:
    """Wrap a WSGI application in the lifecycle middleware."""
    return LifecycleMiddleware(application, lifecycle or get_lifecycle())


def get_wsgi_application() -> LifecycleMiddleware:
    """Django's WSGI application (``django.setup()`` included), wrapped."""
    from django.core.wsgi import get_wsgi_application as django_wsgi

    return wrap(django_wsgi())


def wrap_asgi(application: asgi.ASGIApp, lifecycle: Lifecycle | None = None) -> asgi.LifecycleMiddleware:
    """Wrap an ASGI application in the ASGI lifecycle middleware (:mod:`statekit.asgi`)."""
    return asgi.LifecycleMiddleware(application, lifecycle or get_lifecycle())


def get_asgi_application() -> asgi.LifecycleMiddleware:
    """Django's ASGI application (``django.setup()`` included), wrapped."""
    from django.core.asgi import get_asgi_application as django_asgi

    return wrap_asgi(django_asgi())


def _response(reply: Reply) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        response[name] = value
    return response


def _wrapped(request: HttpRequest) -> bool:
    """Whether statekit's WSGI or ASGI wrapper already handled *request*."""
    return bool(request.META.get(COUNTED) or (getattr(request, "scope", None) or {}).get(COUNTED))


class DrainMiddleware(HybridMiddleware):
    """Django middleware variant of :class:`~statekit.lifecycle.LifecycleMiddleware`
    (see the module docstring for what it cannot do). Thread-safe; sync or async,
    whichever the middleware chain below it is."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if _wrapped(request):
            return self.get_response(request)
        lc = get_lifecycle()
        kind = lc.admit(request.path_info)
        if kind != APP:
            return _response(lc.reply(kind))
        state = lc.drain
        state.request_started()
        try:
            return self.get_response(request)
        finally:
            state.request_finished()

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
        if _wrapped(request):
            return await get_response(request)
        lc = get_lifecycle()
        kind = lc.admit(request.path_info)
        if kind != APP:
            reply = lc.reply_now(kind)
            if reply is None:  # the readiness checks have to run: they block
                reply = await asyncio.to_thread(lc.reply, kind)
            return _closing(_response(reply), kind == REJECT)
        state = lc.drain
        state.request_started()
        try:
            return _closing(await get_response(request), state.closing)
        finally:
            state.request_finished()


def _closing(response: HttpResponse, close: bool) -> HttpResponse:
    """Under ASGI (whose servers, unlike wsgiref, take hop-by-hop headers from the
    app): ``Connection: close`` while draining, as the ASGI middleware sends."""
    if close:
        response["Connection"] = "close"
    return response
