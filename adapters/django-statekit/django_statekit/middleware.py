"""Middleware that answers 503 when the session store is unreachable.

Put it *before* ``SessionMiddleware``::

    MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware",
                  "django.contrib.sessions.middleware.SessionMiddleware", ...]

A :class:`~statekit.errors.BackendUnavailable` raised by a view (loading the
session, or writing to the read-only session of the ``anonymous`` policy) becomes a
503 with ``Retry-After``; so does a failed save in ``SessionMiddleware`` (Django
first turns it into a 500, which this middleware replaces), and a write by another
middleware to that read-only session (``CsrfViewMiddleware`` with
``CSRF_USE_SESSIONS``, ``MessageMiddleware``), which Django's 500 page itself may
repeat. The 503 is a new
response: it carries no ``Set-Cookie``, so the browser keeps its session cookie and
gets the same session back once Redis returns; except the new key of a rotation (a
login) or a carry-over Redis had already made, since the data lives there only, and
the key of a new session whose first save timed out (it may be stored: the
browser's retry then continues it), whichever call failed (a save, or an ``incr``
or another backend in the view: Django saves nothing on a 5xx). Any other 5xx (a
view that fails after ``login()``) gets that cookie too: the rotation moved the
session to its new key already, and with the old key the browser would be
anonymous, and sent no cookie at all while its tombstone lives (a login retried
then was lost).
Any other outage reaching it (the cache or the blob store in a view) gets the same
503 with a generic page.

The pages never show a host, port, URL, bucket or key. The outage is logged to
``statekit.outage`` once when it starts (WARNING, with those details) and once when
the backend answers again, not as a traceback or an error line per request
(Django's own ``django.request`` line for these 503s is left out).

With ``STATEKIT_SESSION_NEAR_CACHE`` it is required: it carries the session's
version token (cookie ``<SESSION_COOKIE_NAME>_v``) that orders a browser's reads after
its own writes (see :mod:`statekit.sessions`).

A request in flight at a login (it loaded the session with the pre-login cookie
before the rotation, and its save went into the new session through the old id's
alias) does not get that old cookie back: it would replace the new one in the
browser, and the old id names no session any more. This covers read-only requests
with ``SESSION_SAVE_EVERY_REQUEST`` too: every save ``SessionMiddleware`` makes is a
write (see :mod:`django_statekit.sessions`, "Cookie refresh"), so it learns of the
rotation. A request sent with the pre-login cookie that loads only after the
login gets an anonymous session and, while the old id's alias lives, no session
cookie at all (neither SessionMiddleware's deletion of an empty session nor a new
session's cookie after a write). SessionMiddleware's deletion is also left out for a
cookie of the session's name that names nothing this app knows (another app's on the
same domain: it would be deleted on every response that reads the session): none
statekit signed and, with ``STATEKIT_SESSION_CARRY_OVER``, no session of the previous
engine either (the old cookie of a session that engine holds and statekit refuses to
read is deleted, once: each request would read and refuse it again).
It also marks the session
cookie ``Secure`` outside ``DEBUG`` (Django's own ``SESSION_COOKIE_SECURE`` defaults
to off), unless the project sets ``SESSION_COOKIE_SECURE`` itself (``False``: the
cookie is left as Django made it) or ``STATEKIT_SESSION_COOKIE_SECURE`` (which wins).
A ``Secure`` session cookie set on a plain-http request (``request.is_secure()``, so
``SECURE_PROXY_SSL_HEADER`` counts) to a host other than localhost is logged as a
WARNING (``statekit.sessions``, at most one line a minute a process): no client
sends it back, and every request would start a new session.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.http import http_date

from statekit.config import flag
from statekit.errors import BackendUnavailable
from statekit.lifecycle import outage_name, outages
from statekit.sessions import Session
from statekit.sessions.session import warn_secure_cookie_over_http

from ._middleware import HybridMiddleware
from .conf import get_number, get_setting, get_settings
from .sessions import get_core_store, version_token

__all__ = ["OUTAGE_PAGE", "UNAVAILABLE_PAGE", "SessionOutageMiddleware", "outage_response",
           "unavailable_response"]

OUTAGE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>We cannot reach your session right now. Please try again in a few seconds; "
    "you are still signed in.</p>"
)


#: the 503 page of any other outage: nothing about the backend (the log has that)
UNAVAILABLE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>This service is temporarily unavailable. Please try again in a few seconds.</p>"
)


def outage_response(page: str = OUTAGE_PAGE) -> HttpResponse:
    """The 503 page (``STATEKIT_SESSION_RETRY_AFTER`` seconds, default 5)."""
    response = HttpResponse(page, status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(int(get_number("STATEKIT_SESSION_RETRY_AFTER", 5)))
    response["Cache-Control"] = "no-store"
    # statekit.outage logs the outage once; Django would log this 503 per request
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


def unavailable_response() -> HttpResponse:
    """The generic 503 (an outage of the cache or the blob store)."""
    return outage_response(UNAVAILABLE_PAGE)


def _secure() -> bool:
    """Whether statekit marks session cookies ``Secure``: ``STATEKIT_SESSION_COOKIE_SECURE``
    when set; else ``SESSION_COOKIE_SECURE`` when the project sets it (an explicit
    ``False`` is the project's word, as for Django's own engines); else on outside ``DEBUG``."""
    name = "STATEKIT_SESSION_COOKIE_SECURE"
    value = get_setting(name)
    if value is None and settings.is_overridden("SESSION_COOKIE_SECURE"):
        return bool(settings.SESSION_COOKIE_SECURE)
    return flag(not settings.DEBUG if value is None else value, name, default=not settings.DEBUG)


def _warn_plain_http(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """*response*, after :func:`~statekit.sessions.session.warn_secure_cookie_over_http`
    for its session cookie if it is set ``Secure`` on a plain-http request (the host,
    validated against ``ALLOWED_HOSTS`` on each call, is looked up only then)."""
    morsel = response.cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is not None and morsel.value and morsel["secure"] and not request.is_secure():
        try:
            host: str | None = request.get_host()
        except DisallowedHost:
            host = request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME")
        warn_secure_cookie_over_http(False, host)
    return response


#: the request attribute that holds a BackendUnavailable raised outside the views (or
#: answered 503 by ``process_exception``)
_RAISED = "_statekit_unavailable"


def _note_raised(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """Django's ``got_request_exception``: a :class:`~statekit.errors.BackendUnavailable`
    raised outside the views, which ``process_exception`` never sees (another
    middleware writing the read-only session of the ``anonymous`` policy after the
    view: ``CsrfViewMiddleware`` with ``CSRF_USE_SESSIONS``, ``MessageMiddleware``; a
    cache call in a middleware), is a 500 by the time the response reaches
    :class:`SessionOutageMiddleware`: noted on the request, it is answered as the
    outage it is."""
    raised = sys.exc_info()[1]
    if request is not None and isinstance(raised, BackendUnavailable):
        setattr(request, _RAISED, raised)


got_request_exception.connect(_note_raised, dispatch_uid="django_statekit.middleware")


class _Pass:
    """One request's way through :class:`SessionOutageMiddleware`: the version token
    the browser sent is the request's (:data:`~django_statekit.sessions.version_token`)
    while the chain below runs, and a :class:`~statekit.errors.BackendUnavailable` that
    escaped even Django's 500 handler (whose ``requires_csrf_token`` writes the
    read-only session again with ``CSRF_USE_SESSIONS``) is kept for the answer."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.sent = request.COOKIES.get(settings.SESSION_COOKIE_NAME + "_v")
        self.response: HttpResponseBase = HttpResponse(status=500)

    def __enter__(self) -> _Pass:
        self._reset = version_token.set(self.sent)
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> bool:
        version_token.reset(self._reset)
        if isinstance(error, BackendUnavailable):
            setattr(self.request, _RAISED, error)  # answered 503 by _finish
            return True
        return False


class SessionOutageMiddleware(HybridMiddleware):
    """Turn session-store outages into ``503 Service Unavailable`` + ``Retry-After``,
    and send the session cookie with ``Secure`` outside ``DEBUG``.

    Sync and async capable, whichever the middleware chain below it is: under ASGI it
    runs on the event loop, so putting it first costs no thread hop per request (a
    sync-only middleware at the top made Django run the whole chain below it through
    ``async_to_sync`` from a worker thread)."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with _Pass(request) as p:
            p.response = self.get_response(request)
        return _warn_plain_http(request, self._finish(request, p))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        with _Pass(request) as p:
            p.response = await self.get_response(request)
        return _warn_plain_http(request, self._finish(request, p))

    def _finish(self, request: HttpRequest, p: _Pass) -> HttpResponseBase:
        """The response to send, once the chain below answered (no I/O: it runs on the
        event loop under ASGI)."""
        response, sent = p.response, p.sent
        token_name = settings.SESSION_COOKIE_NAME + "_v"
        session = getattr(request, "session", None)
        if getattr(session, "outage", False):
            return self._outage_cookie(session, outage_response())
        raised = getattr(request, _RAISED, None)
        if raised is not None and response.status_code == 500:
            # raised outside a view (see _note_raised)
            return self._outage_cookie(session, self._unavailable(request, raised))
        if raised is not None and response.status_code == 503:
            return self._outage_cookie(session, response)  # process_exception's
        morsel = response.cookies.get(settings.SESSION_COOKIE_NAME)
        if morsel is None and response.status_code >= 500:
            # SessionMiddleware saved nothing and sent no cookie: a login (cycle_key)
            # made before the view failed moved the session to its new key, and the
            # old one is a tombstone for which no cookie would be sent while it lives
            morsel = self._outage_cookie(session, response).cookies.get(settings.SESSION_COOKIE_NAME)
        if morsel is not None and not morsel.value and self._foreign(request, session):
            # SessionMiddleware's deletion of an "empty" session, for a cookie this app
            # cannot have signed (another app's on the same domain): left alone
            del response.cookies[settings.SESSION_COOKIE_NAME]
            morsel = None
        core = getattr(session, "_core", None)
        if morsel is not None and morsel.value and isinstance(core, Session) and core.through_alias:
            # an old cookie, in flight during a login: the browser holds the new one,
            # and the old id loads no session any more
            del response.cookies[settings.SESSION_COOKIE_NAME]
            morsel = None
        if morsel is not None and getattr(session, "superseded", False):
            # the request's cookie named a session a login rotated moments ago: the
            # browser most likely holds the new cookie by now, which this one (a fresh
            # session's, or SessionMiddleware's deletion of an empty one) would replace
            del response.cookies[settings.SESSION_COOKIE_NAME]
            return response
        if morsel is not None and morsel.value and not morsel["secure"] and _secure():
            morsel["secure"] = True
        self._send_version_token(session, response, morsel, token_name, sent)
        return response

    @staticmethod
    def _foreign(request: HttpRequest, session: Any) -> bool:
        """Whether the request's session cookie names nothing this app knows: none its
        statekit sessions signed, nor, with a carry-over, a session of the previous
        engine (:attr:`~django_statekit.sessions.SessionStore.foreign_cookie`); or a
        key Django itself refuses (shorter than 8: ``SessionBase._validate_session_key``),
        which no engine looks up."""
        from .sessions import SessionStore

        cookie = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
        if not cookie or not isinstance(session, SessionStore):
            return False
        return session.foreign_cookie or len(cookie) < 8

    @classmethod
    def _outage_cookie(cls, session: Any, response: HttpResponseBase) -> HttpResponseBase:
        """*response*, an outage's 503 or another 5xx, with the session cookie when
        the session needs it (SessionMiddleware neither saves nor sends a cookie on a
        5xx): rotated (a login) or carried over before Redis (or the view) failed, the
        data lives under the new key only and the old one is a tombstone; new and its
        create timed out, it may be stored, and the browser's retry then continues it."""
        core = getattr(session, "_core", None)
        if isinstance(core, Session) and not core.unavailable and not getattr(session, "superseded", False) \
                and (core.send_cookie and not core.new or core.maybe_stored):
            cls._set_session_cookie(session, core, response)
        return response

    @staticmethod
    def _set_session_cookie(session: Any, core: Session, response: HttpResponseBase) -> None:
        """The session cookie as SessionMiddleware sets it."""
        if session.get_expire_at_browser_close():
            max_age, expires = None, None
        else:
            max_age = session.get_expiry_age()
            expires = http_date(time.time() + max_age)
        response.set_cookie(
            settings.SESSION_COOKIE_NAME, core.store.sign(core.sid), max_age=max_age, expires=expires,
            domain=settings.SESSION_COOKIE_DOMAIN, path=settings.SESSION_COOKIE_PATH,
            secure=bool(settings.SESSION_COOKIE_SECURE or _secure()),
            httponly=bool(settings.SESSION_COOKIE_HTTPONLY), samesite=settings.SESSION_COOKIE_SAMESITE)

    @staticmethod
    def _send_version_token(session: object, response: HttpResponseBase, morsel: Any, name: str,
                            sent: str | None) -> None:
        """With the near cache: the session's version in ``<cookie name>_v`` after a
        change, so the browser's next request reads at least that version."""
        core = getattr(session, "_core", None)
        if not isinstance(core, Session):
            return
        if morsel is not None and not morsel.value:  # the session cookie is being deleted
            if sent is not None:
                response.delete_cookie(name, path=settings.SESSION_COOKIE_PATH,
                                       domain=settings.SESSION_COOKIE_DOMAIN)
            return
        # the sync store's near cache (the one loads use), whichever store loaded the
        # session: the async methods' store has none and would never send a token
        token = get_core_store().version_token(core, sent)
        if token is not None:
            response.set_cookie(
                name, token, max_age=None if settings.SESSION_EXPIRE_AT_BROWSER_CLOSE
                else settings.SESSION_COOKIE_AGE,
                path=settings.SESSION_COOKIE_PATH, domain=settings.SESSION_COOKIE_DOMAIN,
                secure=settings.SESSION_COOKIE_SECURE or _secure(),
                httponly=True, samesite=settings.SESSION_COOKIE_SAMESITE)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, BackendUnavailable):
            return None
        setattr(request, _RAISED, exception)  # _finish adds the cookie the session needs
        return self._unavailable(request, exception)

    @staticmethod
    def _unavailable(request: HttpRequest, exception: BackendUnavailable) -> HttpResponse:
        """The 503 for *exception*: the session's page when the session store failed
        (or served the read-only session of the ``anonymous`` policy), else the generic one."""
        outages.down(outage_name(exception, get_settings()), exception)
        session = getattr(request, "session", None)
        core = getattr(session, "_core", None)
        if getattr(session, "outage", False) or isinstance(core, Session) and core.unavailable:
            return outage_response()
        return unavailable_response()
