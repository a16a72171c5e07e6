"""Server-side sessions for Starlette and FastAPI: :class:`SessionMiddleware`.

::

    from starlette_statekit.sessions import SessionMiddleware, destroy_session, rotate_session

    app.add_middleware(SessionMiddleware, url="redis://127.0.0.1:6379/0", secret_key="s3cret")

    async def login(request):
        ...                                      # check the password
        await rotate_session(request)           # a new id: no session fixation
        request.session["user_id"] = user.id
        return RedirectResponse("/")

    async def logout(request):
        await destroy_session(request)          # deleted now; the cookie is deleted
        return RedirectResponse("/")

A drop-in for :class:`starlette.middleware.sessions.SessionMiddleware`'s
``request.session`` (the same dict API; FastAPI's ``request.session`` too): the data
lives in Redis (:class:`~statekit.sessions.aio.AsyncSessionStore`, the same hashes,
keys and scripts as the Flask and Django adapters, so a session written by a WSGI
worker is read here and back), and the cookie holds only the signed session id
(itsdangerous, HMAC-SHA256). A pure ASGI middleware: it loads the session before the
app runs (one Redis round trip when the request has a cookie, none otherwise) and
saves it when the response starts, before its headers go out. What the app changes
after that (a ``BackgroundTask``, a streaming body) is saved once the app returns,
without a cookie (none can go out any more): only for a session the browser already
holds (stored before this request, or by this response); otherwise it is logged and
dropped.

**Saves** write only the keys the request assigned or deleted (an in-place change of
a mutable value, ``request.session["cart"].append(x)``, needs the value assigned
again or ``request.session.modified = True``). Concurrent requests of one session
that change different keys all keep their change; for one key the last save wins.

**Rotation and logout.** :func:`rotate_session` on login gives the session a new id
atomically; requests already in flight with the old cookie still write through it
(into the new session) for the store's ``alias_window`` and send no cookie back,
while a request that *loads* with the old cookie afterwards gets a fresh anonymous
session (no fixation). :func:`destroy_session` (or ``request.session.clear()`` of a
stored session) deletes the session and the cookie; what the same request sets
afterwards (a "logged out" message; after ``clear()``, a login's keys too) goes to a
new session, and the old id names nothing. ``clear()`` is two writes,
the emptied session then its deletion: one an outage cuts between them (a 503, the
session empty and its cookie kept) is completed by its retry, which finds that empty
session and clears it again.

**Errors.** A request answered with a 5xx saves none of its session changes (as
Django's SessionMiddleware), whoever answers it: an exception the app does not handle
(Starlette's 500, from a route, a middleware or a mounted app's own
ServerErrorMiddleware), a 500 a handler or a middleware returns, an
``HTTPException(503)``; a 4xx (``HTTPException``'s 400) saves like any other
response. When the session had a new id before the app failed (a login's
rotation, or a new session stored by :func:`incr_session`), the 5xx carries its
cookie, as the outage's 503 does: the session (the cart) lives under the new id
only, and after a rotation the old one is a tombstone. The exception goes on as
before, and whatever answers it sends the cookie: Starlette's ServerErrorMiddleware
(outermost: the app's handler for 500 or ``Exception``, run once; its debug page; or
"Internal Server Error"), or a middleware outside this one that answers errors
itself. When it first sees the app (its lifespan's start, or its first request), the
middleware puts a thin layer around the app's ``middleware_stack``, outside
ServerErrorMiddleware, that adds the cookie to the response starting after the
failure. A request that comes before that (the first of an app served without its
lifespan), or an app that is not Starlette's, gets a plain "Internal Server Error"
500 with the cookie from here; the app's handler still runs once (its answer unsent).

**Cookies** are sent when the id is new or rotated, and with each write when
*max_age* is set (a sliding ``Max-Age`` that follows the server-side expiry). A
response to a request that read ``request.session`` carries ``Vary: Cookie``, as
Starlette's own middleware's does, so a shared cache never serves it to another user. A
request that writes nothing sends no cookie: one in flight during a login would
otherwise put the pre-login cookie back in the browser. A tampered, truncated or
foreign cookie gives a fresh session without a Redis call (logged to
``statekit.security``).

**Outages.** Redis unreachable while loading: the request is answered ``503`` with
``Retry-After`` before the app runs (a WebSocket's handshake too, where the server
takes a denial response, ``websocket.http.response``, as uvicorn does; elsewhere it
is closed with 1013, "try again later", which a server may answer 403); inside the
app (:func:`rotate_session`, :func:`destroy_session`, :func:`incr_session`, or any
statekit backend, raising :class:`~statekit.errors.BackendUnavailable` before the
response starts): the same 503; while saving: the app's response is replaced by that
503. Either way the cookie is left alone (except the new id of a rotation Redis had
already made, or of a new session whose first save timed out: it may be stored, and
the browser's retry then continues it) and nothing partial is written, so the same session is served when
Redis is back: never a silent logout, never an empty session overwriting the stored
one.

**Near cache, on by default** (:data:`NEAR_CACHE` sessions per process, for a
``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL; ``near_cache=0``
turns it off, ``near_cache=N`` sets the size; never on Redis Cluster or ``memory://``,
and a ready ``store=`` keeps its own setting): loads are served from this process's
copies, kept coherent by Redis (client-side caching, see :mod:`statekit.sessions`),
so a request that only reads its session makes no Redis call and one that writes
makes one. The middleware then sends the version-token cookie (``<cookie_name>_v``)
that orders a browser's reads after its own writes. What it costs and what may be
stale, for how long: docs/starlette.md, "Near cache".

**Switching from Starlette's cookie sessions** (or starsessions on Redis) without
logging users out: ``carry_over=StarletteCookieSessions(old_secret_key)`` (or
``StarsessionsRedis(old_redis_url)``) carries each user's session over on their first
request (docs/starlette.md).

**WebSockets** get ``websocket.session`` loaded; it is not saved by the middleware
(``await get_session_store(websocket).save(websocket.session)`` does).
"""

from __future__ import annotations

import json
import logging
from base64 import b64decode
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from itsdangerous import BadSignature, TimestampSigner
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, cookie_parser
from starlette.responses import PlainTextResponse

from statekit.config import Settings, parse_url
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import outage_name, outages
from statekit.sessions import Session
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis, PreviousStore
from statekit.sessions.session import warn_secure_cookie_over_http

__all__ = ["NEAR_CACHE", "STORE_SCOPE_KEY", "SessionMiddleware", "StarletteCookieSessions",
           "StarsessionsRedis", "destroy_session", "get_session_store", "incr_session", "rotate_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("statekit.sessions")

#: where the middleware puts its store in the ASGI scope (for the helpers below)
STORE_SCOPE_KEY = "statekit.sessions"
#: sessions each process keeps in its near cache by default (``near_cache=``)
NEAR_CACHE = 10_000
#: the URL schemes whose store may keep a near cache (standalone and Sentinel Redis)
_NEAR_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
#: where :class:`_ErrorCookies` puts, in the scope, the list of cookies the response
#: that starts after the app failed is to carry (filled by the session middleware)
_ERROR_COOKIES = "statekit.sessions.error_cookies"
#: what the plain-http warning tells to change: StateKit(app) reads the setting, and
#: an https_only the app passes (session_options, or to this middleware) wins over it
_PLAIN_HTTP_FIX = ("set STATEKIT_SESSION_COOKIE_SECURE=false (or https_only=False where the app passes "
                   "https_only: StateKit's session_options, SessionMiddleware)")


class _Down(Exception):
    """The store failed while saving: answer 503 with these cookies."""

    def __init__(self, cookies: list[str]) -> None:
        super().__init__("session store unavailable")
        self.cookies = cookies


class SessionMiddleware:
    """Server-side ``request.session`` in Redis (see the module docstring).

    :param app: the ASGI app.
    :param url: the session Redis URL (default: *settings*' ``session_url``, i.e.
        ``STATEKIT_SESSION_URL`` or ``STATEKIT_REDIS_URL``).
    :param store: a ready :class:`~statekit.sessions.aio.AsyncSessionStore` instead
        (*url*, *secret_key* and *store_options* are then the store's).
    :param settings: statekit :class:`~statekit.config.Settings` (the
        ``StateKit`` extension passes its own); default: from the environment.
    :param cookie_name: the cookie (``session_cookie`` is accepted as in Starlette).
    :param max_age: the session's idle timeout in seconds and the cookie's
        ``Max-Age``; ``None``: a browser-session cookie, 14 days idle on the server.
    :param secret_key: signing key, or keys newest first (default: the settings'
        ``STATEKIT_SECRET_KEYS``).
    :param path: the cookie's ``Path``. :param domain: its ``Domain``.
    :param https_only: mark the cookie ``Secure`` (off by default, as in Starlette's
        ``SessionMiddleware``; turn it on in production; ``StateKit(app)`` passes
        ``STATEKIT_SESSION_COOKIE_SECURE`` unless *session_options* has it). A ``Secure`` session cookie
        set on a plain-http request (the scope's scheme: a proxy's forwarded one counts
        where the server trusts it, uvicorn's ``--forwarded-allow-ips``) to a host
        other than localhost is logged (``statekit.sessions``, rate-limited): no
        client sends it back, and every request would start a new session.
    :param same_site: ``lax``, ``strict`` or ``none``.
    :param retry_after: seconds in the 503's ``Retry-After``.
    :param carry_over: the previous session store, read once per browser on its first
        request (:mod:`statekit.sessions.carryover`): :class:`StarletteCookieSessions`
        for Starlette's own cookie sessions, :class:`StarsessionsRedis` for starsessions
        on Redis, so a user logged in before the switch stays logged in; or a ready
        :class:`~statekit.sessions.carryover.CarryOver`. The store's ``aclose()`` closes
        it (the client :class:`StarsessionsRedis` built from a URL).
    :param on_open: called with the store opened from a URL (not a *store* given):
        :class:`~starlette_statekit.StateKit` closes it at the lifespan's shutdown.
    :param store_options: more keywords for the store (``absolute_lifetime``,
        ``alias_window``, ``codec``, ``key_prefix``, ``near_cache``: :data:`NEAR_CACHE`
        unless given, where the URL allows it, ``0`` turns it off...); ``user_key``, the session key
        holding the logged-in user's id (what :meth:`~statekit.sessions.aio.AsyncSessionStore.revoke_user`
        and ``list_user_sessions`` find sessions by), is ``"_user_id"`` unless given,
        as in the Flask adapter.

    Concurrency: no locks; saves merge per key (see :mod:`statekit.sessions`).
    """

    def __init__(self, app: ASGIApp, url: str | None = None, *, store: AsyncSessionStore | None = None,
                 settings: Settings | None = None, cookie_name: str = "session",
                 session_cookie: str | None = None, max_age: int | None = 14 * 86400,
                 secret_key: str | bytes | Iterable[str | bytes] | None = None, path: str = "/",
                 domain: str | None = None, https_only: bool = False, same_site: str = "lax",
                 retry_after: int = 5, carry_over: PreviousStore | CarryOver | None = None,
                 on_open: Callable[[AsyncSessionStore], object] | None = None,
                 **store_options: Any) -> None:
        self.app = app
        if store is None:
            settings = settings or Settings.from_env()
            url = url or settings.session_url
            if not url:
                raise ConfigError("SessionMiddleware needs a Redis URL (url=, STATEKIT_SESSION_URL or "
                                  "STATEKIT_REDIS_URL)")
            keys = [secret_key] if isinstance(secret_key, (str, bytes)) else list(secret_key or ())
            store_options.setdefault("key_prefix", settings.key_prefix)
            # the logged-in user's key, as in the Flask adapter (sessions are shared):
            # indexed, so revoke_user and list_user_sessions find the user's sessions
            store_options.setdefault("user_key", "_user_id")
            if max_age:
                store_options.setdefault("idle_timeout", max_age)
            if url.partition("://")[0].lower() in _NEAR_SCHEMES:
                store_options.setdefault("near_cache", NEAR_CACHE)
            store_options.setdefault("session_class", _Session)
            store = AsyncSessionStore(url, secret_keys=keys or settings.secret_keys, **store_options)
            if on_open is not None:  # StateKit's: its shutdown closes the store
                on_open(store)
            self.outage_name = f"session store {parse_url(url).redacted()}"
        else:
            self.outage_name = "session store"
            if store.session_class is Session:  # its sessions say when the app read them
                store.session_class = _Session
        if carry_over is not None:
            if not isinstance(carry_over, CarryOver):  # claimed for the old store's lifetime (or 14 days)
                lifetime = getattr(carry_over, "max_age", None) or 14 * 86400
                carry_over = CarryOver(carry_over, claim_ttl=lifetime)
            store.carry_over = carry_over
        self.store = store
        self.cookie_name = session_cookie or cookie_name
        #: the version-token cookie, read only with the near cache (see :mod:`statekit.sessions`)
        self.token_name = self.cookie_name + "_v"
        self._near = store.near_cache
        self.max_age = max_age
        self.retry_after = retry_after
        if same_site.lower() not in ("lax", "strict", "none"):
            raise ConfigError(f"same_site={same_site!r} must be lax, strict or none")
        self.https_only = https_only
        self._flags = f"; path={path}" + (f"; domain={domain}" if domain else "") + \
            f"; httponly; samesite={same_site.lower()}" + ("; secure" if https_only else "")

    # -- cookies ----------------------------------------------------------------------

    def _cookie(self, session: Session, name: str = "", value: str = "") -> str:
        age = f"; Max-Age={self.max_age}" if self.max_age else ""
        return f"{name or self.cookie_name}={value or self.store.sign(session.sid)}{age}{self._flags}"

    def _deleted_cookie(self, name: str = "") -> str:
        expired = "Max-Age=0; expires=Thu, 01 Jan 1970 00:00:00 GMT"
        return f"{name or self.cookie_name}=null; {expired}{self._flags}"

    def _warn_plain_http(self, scope: Scope, cookies: list[str]) -> None:
        """:func:`~statekit.sessions.session.warn_secure_cookie_over_http` when *cookies*
        set the session cookie ``Secure`` on a plain-http request (looked at only then)."""
        if self.https_only and scope.get("scheme") not in ("https", "wss") and any(
                c.startswith(self.cookie_name + "=") and not c.startswith(self.cookie_name + "=null;")
                for c in cookies):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            warn_secure_cookie_over_http(False, host, _PLAIN_HTTP_FIX)

    # -- the request --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope.get("app")
        if isinstance(app, Starlette) and app.middleware_stack is not None \
                and not isinstance(app.middleware_stack, _ErrorCookies):
            # the app's first call through here (its lifespan, or a first request):
            # its next requests' responses go out through _ErrorCookies
            app.middleware_stack = _ErrorCookies(app.middleware_stack)
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        cookie = cookies.get(self.cookie_name)
        token = cookies.get(self.token_name) if self._near else None
        try:
            session = await self.store.open(cookie, context=lambda: f"client {_client(scope)}",
                                            version_token=token)
        except BackendUnavailable as e:
            outages.down(self.outage_name, e)
            await self._unavailable(scope, receive, send, [])
            return
        if not session.new and not session.unavailable:
            outages.up(self.outage_name)
        scope["session"] = session
        scope[STORE_SCOPE_KEY] = self.store
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        had_data, had_cookie = bool(session), cookie is not None
        replaced = started = failed = False

        async def send_saving(message: Message) -> None:
            nonlocal replaced, started, failed
            if message["type"] == "http.response.start":
                started = True
                failed = message["status"] >= 500
                if failed:
                    # a failure, whoever answers it (a mounted app's ServerErrorMiddleware,
                    # a handler's or a middleware's 500, an HTTPException(503)): nothing of
                    # the request is saved, as when the app raises through here
                    cookies = self._outage_cookies(session)
                else:
                    try:
                        cookies = await self._commit(session, had_data, had_cookie, token)
                    except _Down as down:
                        replaced = True
                        await self._unavailable(scope, receive, send, down.cookies)
                        return
                session.modified = False  # handled (saved, carried or dropped): see _save_late
                if cookies:
                    self._warn_plain_http(scope, cookies)
                    _add_cookies(message, cookies)
                if getattr(session, "accessed", False):  # request.session was read
                    _vary_cookie(message)
            elif replaced:
                return  # the body of the response the 503 replaced
            await send(message)

        try:
            await self.app(scope, receive, send_saving)
        except BackendUnavailable as e:
            if started:
                raise
            # rotate_session, destroy_session, incr_session... in the app (or another
            # statekit backend): the same 503 as at load and save (StateKit's exception
            # handler, when installed, answers first)
            name = outage_name(e)
            outages.down(self.outage_name if name == "session store" else name, e)
            await self._unavailable(scope, receive, send, self._outage_cookies(session))
            return
        except Exception:
            needed = [] if started else self._outage_cookies(session)
            if needed:
                await self._server_error(scope, receive, send, needed)
            raise
        if started and not (replaced or failed) and session.modified:
            await self._save_late(session)

    async def _save_late(self, session: Session) -> None:
        """Save what the app changed after its response started (a ``BackgroundTask``):
        no cookie can go out any more, so only a session the browser holds is saved."""
        if session.unavailable or session.superseded:
            return  # as at the response's start: nothing of this session is saved
        if session.new or session.destroyed:
            log.warning("session changed after the response started, not saved: the browser "
                        "holds no cookie for it (set it before the response, or store it yourself)")
            return
        try:
            await self.store.save(session)
        except BackendUnavailable as e:
            outages.down(self.outage_name, e)
            log.warning("session changed after the response started, not saved: %s", e)

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send, cookies: list[str]) -> None:
        if scope["type"] == "websocket" and "websocket.http.response" not in (scope.get("extensions") or {}):
            # a close before the accept: the server refuses the handshake (uvicorn: 403)
            await send({"type": "websocket.close", "code": 1013, "reason": "try again later"})
            return
        from . import unavailable_response  # a WebSocket's handshake denied with it where the server can

        response = unavailable_response(self.retry_after)
        self._warn_plain_http(scope, cookies)
        for value in cookies:
            response.headers.append("set-cookie", value)
        await response(scope, receive, send)

    async def _server_error(self, scope: Scope, receive: Receive, send: Send, cookies: list[str]) -> None:
        """The app failed (the exception goes on) after its session got a new id: the
        answer to that error, whoever gives it, carries *cookies*
        (:meth:`_outage_cookies`): the session lives under the new id only. Starlette's
        ServerErrorMiddleware answers outside this middleware: on a Starlette app
        :class:`_ErrorCookies`, around it, adds them to the response that starts (the
        app's 500 handler's, its debug page, or a middleware's of the app's that answers
        errors itself). Without it (this app's first request, served without its
        lifespan; an app that is not Starlette's) the 500 is answered here, Starlette's
        plain one: ServerErrorMiddleware then runs the app's handler, its answer unsent."""
        self._warn_plain_http(scope, cookies)
        later = scope.get(_ERROR_COOKIES)
        if later is not None:
            later += cookies
            return
        response = PlainTextResponse("Internal Server Error", status_code=500)
        for value in cookies:
            response.headers.append("set-cookie", value)
        await response(scope, receive, send)

    def _outage_cookies(self, session: Session) -> list[str]:
        """The ``Set-Cookie`` values of the 503 answered when the store failed while
        *session* was in use, and of the answer to an app's failure (:meth:`_server_error`):
        its cookie if it was rotated (or first stored) before Redis or the app failed,
        as the data lives under the new id only; or if it is new and its create timed
        out (stored or not, the browser's retry continues it)."""
        if session.superseded or not (session.send_cookie and not session.new or session.maybe_stored):
            return []
        return [self._cookie(session)]

    async def _commit(self, session: Session, had_data: bool, had_cookie: bool,
                      token: str | None) -> list[str]:
        """Save *session* as the response starts; the ``Set-Cookie`` values to add.

        :raises _Down: the store is unreachable (the response becomes a 503)."""
        store = self.store
        if session.unavailable or session.superseded:
            # an outage's read-only session; or the cookie named a session a login
            # rotated moments ago: the browser most likely holds the new cookie already
            return []
        try:
            # cleared or emptied: a logout (see SessionStore.commit); what was set after
            # the clear, or after a destroy_session() in the app, goes to a fresh id
            saved, carried = await store.commit(session, had_data=had_data)
            logged_out = session.destroyed
        except BackendUnavailable as e:
            outages.down(self.outage_name, e)
            raise _Down(self._outage_cookies(session)) from e
        if logged_out:
            out = [self._deleted_cookie(self.token_name)] if token is not None else []
            if carried is not None:
                return [*out, self._cookie(carried)]
            return [*out, self._deleted_cookie()] if had_cookie else out
        if not saved or session.new:
            # revoked meanwhile (the cookie opens a fresh session anyway), or nothing stored
            return []
        out = []
        version = store.version_token(session, token)
        if version is not None:  # the near cache: this browser's next load reads this save
            out.append(self._cookie(session, self.token_name, version))
        if session.through_alias:
            return out  # an old cookie in flight during a login: the browser holds the new one
        outages.up(self.outage_name)
        if session.send_cookie or (self.max_age and session.written):
            session.send_cookie = False
            out.append(self._cookie(session))
        return out


class _ErrorCookies:
    """The outermost layer of a Starlette (or FastAPI) app that has a
    :class:`SessionMiddleware`, which puts it around the app's ``middleware_stack``
    (ServerErrorMiddleware) when it first sees the app: the response that starts after
    the app failed carries the cookies the session middleware left for it in the scope,
    whichever layer answers the error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies: list[str] = []
        scope[_ERROR_COOKIES] = cookies

        async def send_cookies(message: Message) -> None:
            if cookies and message["type"] == "http.response.start":
                _add_cookies(message, cookies)
            await send(message)

        await self.app(scope, receive, send_cookies)


class StarletteCookieSessions:
    """Starlette's own ``SessionMiddleware`` as the previous store of a carry-over
    (``carry_over=`` of :class:`SessionMiddleware`): its cookie holds the session itself,
    JSON signed with itsdangerous' ``TimestampSigner``. A cookie it verifies with
    *secret_key* (Starlette's ``secret_key``) within *max_age* (its ``max_age``; ``None``:
    no limit) is carried over; a tampered, expired or foreign one gives a fresh session,
    as before. Nothing is stored on the server: the statekit cookie replaces the old one
    (keep Starlette's cookie name, ``session`` unless you set ``session_cookie``)."""

    name = "Starlette cookie sessions"

    def __init__(self, secret_key: str | Any, *, max_age: int | None = 14 * 86400) -> None:
        self.signer = TimestampSigner(str(secret_key))  # str(): Starlette's Secret too
        self.max_age = max_age

    def read(self, cookie: str) -> dict[str, Any] | None:
        try:
            data = json.loads(b64decode(self.signer.unsign(cookie.encode("utf-8"), max_age=self.max_age)))
        except (BadSignature, ValueError):  # binascii.Error and JSON's errors are ValueErrors
            return None
        return data if isinstance(data, dict) and data else None

    def forget(self, cookie: str) -> None:
        """Nothing is stored on the server: the new cookie replaces this one."""


class StarsessionsRedis(FlaskSessionRedis):
    """starsessions' ``RedisStore`` (with its default ``JsonSerializer``) as the
    previous store of a carry-over: the cookie holds the session id as it is, the
    session is JSON under ``<prefix><id>`` (starsessions' *prefix*, ``starsessions.``
    by default). Read as :class:`~statekit.sessions.carryover.FlaskSessionRedis` reads
    Flask-Session's unsigned layout, the same one; the old entry is deleted once carried
    over.

    :param url: the old Redis, or *client*: a ready (sync) redis-py client.
    """

    name = "starsessions (Redis)"

    def __init__(self, url: str | None = None, *, client: Any = None, prefix: str = "starsessions.") -> None:
        super().__init__(url, client=client, key_prefix=prefix)


class _Session(Session):
    """The session the middleware hands out: :class:`~statekit.sessions.Session`,
    marked *accessed* when the app reads ``request.session`` (Starlette's property calls
    :meth:`mark_accessed`, as for its own sessions), so its response varies on the
    cookie."""

    accessed = False

    def mark_accessed(self) -> None:
        self.accessed = True


def _vary_cookie(message: Message) -> None:
    """``Vary: Cookie`` on the ``http.response.start`` *message* (added to a ``Vary``
    it has, unless that names ``Cookie`` or ``*``), as Starlette's own
    ``SessionMiddleware`` does for a request that used its session: a shared cache (a
    CDN, a proxy) then never gives one user's page to another."""
    headers = message["headers"] = list(message.get("headers", ()))
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            if not {b"cookie", b"*"} & {v.strip().lower() for v in value.split(b",")}:
                headers[i] = (name, value + b", Cookie")
            return
    headers.append((b"vary", b"Cookie"))


def _add_cookies(message: Message, cookies: list[str]) -> None:
    """*cookies* as ``Set-Cookie`` headers of the ``http.response.start`` *message*
    (as ``MutableHeaders(scope=message).append`` would, without building one)."""
    headers = message["headers"] = list(message.get("headers", ()))
    headers += [(b"set-cookie", value.encode("latin-1")) for value in cookies]


def _cookies(scope: Scope) -> dict[str, str]:
    """The request's cookies, read as Starlette's ``HTTPConnection.cookies`` reads them
    (its first ``Cookie`` header) without building a connection and its headers."""
    for name, value in scope["headers"]:
        if name == b"cookie":
            return cookie_parser(value.decode("latin-1"))
    return {}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def get_session_store(conn: HTTPConnection) -> AsyncSessionStore:
    """The store of the :class:`SessionMiddleware` serving *conn* (a request or a
    WebSocket).

    :raises RuntimeError: no statekit session middleware wraps this app."""
    store = conn.scope.get(STORE_SCOPE_KEY)
    if not isinstance(store, AsyncSessionStore):
        raise RuntimeError("no statekit SessionMiddleware serves this request")
    return store


def _session(conn: HTTPConnection) -> Session:
    session = conn.scope.get("session")
    if not isinstance(session, Session):
        raise RuntimeError("no statekit SessionMiddleware serves this request")
    return session


async def rotate_session(conn: HTTPConnection) -> None:
    """Give the request's session a new id, keeping its data (call it on login); the
    response sends the new cookie.

    :raises BackendUnavailable: Redis unreachable (the old id still works)."""
    await get_session_store(conn).rotate(_session(conn))


async def destroy_session(conn: HTTPConnection) -> None:
    """Delete the request's session now (logout); the response deletes the cookie.
    Concurrent requests of this session cannot write it back."""
    await get_session_store(conn).destroy(_session(conn))


async def incr_session(conn: HTTPConnection, key: str, amount: int = 1) -> int:
    """Atomically add *amount* to the integer under *key* of the request's session
    and return it (concurrent increments are never lost)."""
    return await get_session_store(conn).incr(_session(conn), key, amount)
