"""Middleware that answers 503 when the session store is unreachable.

Put it *before* ``SessionMiddleware``::

    MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware",
                  "django.contrib.sessions.middleware.SessionMiddleware", ...]

A :class:`~statekit.errors.BackendUnavailable` raised by a view (loading the
session, or writing to the read-only session of the ``anonymous`` policy) becomes a
503 with ``Retry-After``; so does a failed save in ``SessionMiddleware`` (Django
first turns it into a 500, which this middleware replaces). The 503 is a new
response: it carries no ``Set-Cookie``, so the browser keeps its session cookie and
gets the same session back once Redis returns.

It also marks the session cookie ``Secure`` outside ``DEBUG`` (Django's own
``SESSION_COOKIE_SECURE`` defaults to off); set ``STATEKIT_SESSION_COOKIE_SECURE =
False`` to leave the cookie as Django made it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from statekit.errors import BackendUnavailable

from .conf import get_setting

__all__ = ["OUTAGE_PAGE", "SessionOutageMiddleware", "outage_response"]

OUTAGE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>We cannot reach your session right now. Please try again in a few seconds; "
    "you are still signed in.</p>"
)


def outage_response() -> HttpResponse:
    """The 503 page (``STATEKIT_SESSION_RETRY_AFTER`` seconds, default 5)."""
    response = HttpResponse(OUTAGE_PAGE, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(int(get_setting("STATEKIT_SESSION_RETRY_AFTER", 5)))
    response["Cache-Control"] = "no-store"
    return response


class SessionOutageMiddleware:
    """Turn session-store outages into ``503 Service Unavailable`` + ``Retry-After``,
    and send the session cookie with ``Secure`` outside ``DEBUG``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if getattr(getattr(request, "session", None), "outage", False):
            return outage_response()
        morsel = response.cookies.get(settings.SESSION_COOKIE_NAME)
        if morsel is not None and morsel.value and not morsel["secure"]:
            secure = get_setting("STATEKIT_SESSION_COOKIE_SECURE", not settings.DEBUG)
            if secure not in (False, "0", "false", "False", "no", "off"):
                morsel["secure"] = True
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, BackendUnavailable):
            return outage_response()
        return None
