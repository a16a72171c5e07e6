"""Health endpoints and graceful drain for Django (:mod:`statekit.lifecycle`).

In ``wsgi.py``, use statekit's WSGI application instead of Django's::

    from django_statekit.lifecycle import get_wsgi_application
    application = get_wsgi_application()

and run it with ``statekit serve myproject.wsgi:application``. ``/healthz``
(liveness) and ``/readyz`` (readiness: not draining, Redis and the blob store
reachable within a small budget) are answered before Django runs — no URL
resolution, no ``ALLOWED_HOSTS`` check, no database — and while the process drains
(SIGTERM under ``statekit serve``) new requests get a 503 a load balancer can retry
elsewhere. ``wrap(application)`` does the same for a WSGI app you already have.

Where ``wsgi.py`` cannot change, add ``"django_statekit.lifecycle.DrainMiddleware"``
first in ``MIDDLEWARE``: it answers the endpoints and rejects while draining, but
only once Django has built the request (so ``ALLOWED_HOSTS`` applies to probes) and
its request counting ends when the view returns, not when a streamed body ends.
Under the WSGI wrapper as well, it steps aside (requests are not counted twice).

Settings (then the environment): ``STATEKIT_HEALTH_PATH`` (``/healthz``),
``STATEKIT_READY_PATH`` (``/readyz``), ``STATEKIT_DRAIN_MODE`` (``reject`` /
``serve``; default: what ``statekit serve --drain-mode`` set),
``STATEKIT_READY_BUDGET`` (0.5 s), ``STATEKIT_RETRY_AFTER`` (1 s).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from statekit.errors import ConfigError
from statekit.lifecycle import COUNTED, Lifecycle, LifecycleMiddleware

from .conf import get_setting, get_settings

__all__ = ["DrainMiddleware", "get_lifecycle", "get_wsgi_application", "lifecycle_from_settings", "wrap"]

_lifecycle: Lifecycle | None = None
_lock = threading.Lock()


def _number(name: str, default: float) -> float:
    raw = get_setting(name, default)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def lifecycle_from_settings() -> Lifecycle:
    """A new :class:`Lifecycle` from the Django settings (then the environment)."""
    return Lifecycle(
        get_settings(),
        health_path=get_setting("STATEKIT_HEALTH_PATH", "/healthz"),
        ready_path=get_setting("STATEKIT_READY_PATH", "/readyz"),
        mode=get_setting("STATEKIT_DRAIN_MODE") or None,
        budget=_number("STATEKIT_READY_BUDGET", 0.5),
        retry_after=int(_number("STATEKIT_RETRY_AFTER", 1)),
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


def _json(status: int, body: dict[str, Any]) -> HttpResponse:
    response = HttpResponse(json.dumps(body, sort_keys=True), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


class DrainMiddleware:
    """Django middleware variant of :class:`~statekit.lifecycle.LifecycleMiddleware`
    (see the module docstring for what it cannot do). Thread-safe."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.META.get(COUNTED):  # under statekit's WSGI wrapper, which did all this
            return self.get_response(request)
        lc = get_lifecycle()
        if request.path_info == lc.health_path:
            return _json(*lc.liveness())
        if request.path_info == lc.ready_path:
            return _json(*lc.readiness())
        state = lc.drain
        if state.draining and not state.accepting(lc.mode):
            state.request_rejected()
            response = _json(503, {"status": "draining"})
            response["Retry-After"] = str(lc.retry_after)
            response["X-Statekit-Drain"] = "reject"
            return response
        state.request_started()
        try:
            return self.get_response(request)
        finally:
            state.request_finished()
