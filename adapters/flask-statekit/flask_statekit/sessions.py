"""Server-side Flask sessions in Redis (:class:`statekit.sessions.SessionStore`).

``StateKit(app)`` installs :class:`StatekitSessionInterface` for the session URL
(``STATEKIT_SESSION_URL``, else ``STATEKIT_REDIS_URL``); the store is
``app.extensions["statekit"].sessions``. Without a URL it refuses to start
(:class:`~statekit.errors.ConfigError`) rather than leave Flask's cookie sessions in
place unnoticed; ``STATEKIT_SESSIONS_ENABLED = False`` keeps them knowingly.
``session`` keeps Flask's API and adds ``session.rotate()`` (call it on login: no
session fixation, as a request that loads with the old cookie afterwards gets a
fresh, anonymous session, which for ``STATEKIT_SESSION_ALIAS_WINDOW`` seconds is
neither stored nor sent as a cookie: the browser that logged in may still have sent
such a request, and its answer must not replace the new cookie),
``session.incr(key)`` (an atomic counter) and ``session.destroy()`` (logout);
Flask-Session's ``app.session_interface.regenerate(session)`` is ``session.rotate()``.
With Flask-Login installed, its logins rotate a stored session themselves:
``login_user()`` and the login from its remember-me cookie (a path no view runs, so
an app could not call ``rotate()`` there), unless the request rotated it already.
``session.clear()`` on a stored session also destroys it and deletes the cookie,
whatever the request sets after it: that (``flash("logged out")``) goes to a new
session, as after ``session.destroy()``, and the old id names nothing (unless a login
in a parallel request rotated it since this request loaded it: then only the keys
this request removed go from the new session, and what it set after goes there). As
with Flask, an in-place change of a mutable value (``session["cart"].append(x)``) is
saved only after ``session.modified = True`` (or assigning the value again), except in
a permanent session with ``SESSION_REFRESH_EACH_REQUEST`` (on by default), where
Flask and Flask-Session store the whole session on every request: there every key
the request read is compared with what it loaded, and the ones that differ are saved.

Settings (``app.config``, then the environment). Flask's ``SESSION_COOKIE_DOMAIN``,
``_SAMESITE``, ``_SECURE`` (when on), ``_HTTPONLY`` and ``_PARTITIONED`` apply where the
``STATEKIT_`` setting is not given; Flask's hooks on the interface
(``app.session_interface.get_cookie_name(app)``, ``get_cookie_domain``...) answer with
the cookie sent, which a subclass overriding one changes:

===================================  ==================================================
``STATEKIT_SESSION_COOKIE_NAME``     default ``SESSION_COOKIE_NAME`` (``"session"``)
``STATEKIT_SESSION_COOKIE_SECURE``   default on unless ``app.debug`` (when the response is sent)
``STATEKIT_SESSION_COOKIE_SAMESITE`` default ``"Lax"``
``STATEKIT_SESSION_COOKIE_HTTPONLY`` default on
``STATEKIT_SESSION_COOKIE_PARTITIONED``, ``..._DOMAIN``, ``..._PATH``
``STATEKIT_SESSION_IDLE_TIMEOUT``    seconds (14 days, or ``PERMANENT_SESSION_LIFETIME``
                                     if shorter); ``..._ABSOLUTE_LIFETIME`` (30 days)
``STATEKIT_SESSION_REFRESH_INTERVAL`` seconds (60); ``..._ALIAS_WINDOW`` (10: how
                                     long requests in flight at a rotation still
                                     write through the old id)
``STATEKIT_SESSION_CODEC``           ``json`` or ``msgpack``
``STATEKIT_SESSION_OUTAGE_POLICY``   ``raise`` (503) or ``anonymous``
``STATEKIT_SESSION_USER_KEY``        default ``"_user_id"`` (Flask-Login)
``STATEKIT_SESSION_RETRY_AFTER``     seconds in the 503's ``Retry-After`` (5)
``STATEKIT_SESSION_NEAR_CACHE``      off (default), on (10,000 sessions) or a number:
                                     per-process copies of sessions, kept coherent
                                     by Redis (see :mod:`statekit.sessions`)
``STATEKIT_SESSION_CARRY_OVER``      off (default), ``flask-cookie`` or
                                     ``flask-session``: users of the previous session
                                     store stay logged in (:mod:`flask_statekit.carryover`)
===================================  ==================================================

**Cookie refresh.** Flask re-sends a permanent session's cookie on every request
(``SESSION_REFRESH_EACH_REQUEST``, on by default) so its ``Expires`` slides. Here the
cookie of an unchanged session is re-sent only together with the server-side expiry
refresh, a write made at most once per ``STATEKIT_SESSION_REFRESH_INTERVAL``: the
cookie's expiry then tracks the session's TTL in Redis, and an unchanged request still
costs one Redis call. That write is also how a request learns that the session was
rotated meanwhile (a login in a parallel request); it then sends no cookie at all, so a
read-only request in flight at a login (an XHR poll, an asset served by the app) never
puts the pre-login cookie back in the browser: no logout. A new or rotated id, and a
change of ``session.permanent``, are sent at once as before. With
``SESSION_REFRESH_EACH_REQUEST = False`` a permanent session's cookie goes out when the
request modified the session, as Flask sends it. A cookie signed with a key of
``SECRET_KEY_FALLBACKS`` is signed with ``SECRET_KEY`` and sent by the next request
that writes (a change, or the refresh): its user stays signed in once the old key is
removed. A new session holding nothing but ``session.permanent`` (a ``before_request``
hook sets it for every visitor: crawlers, probes) is neither stored nor sent a cookie,
and a request that leaves a stored one holding nothing else (a flash message shown,
Flask-Login's ``logout_user()``) ends it as ``session.clear()`` does, as Flask-Session
does with both. ``Vary: Cookie`` is added when the request used the session,
or sets or deletes its cookie, as Flask adds it.

Flask's static files (``app.static_url_path``) are served without loading the
session: no Redis round trip, and no 503 while Redis is away.

**Outages.** When Redis cannot be reached while loading a session, the request is
answered ``503 Service Unavailable`` with ``Retry-After`` before any view runs; when
it fails while saving, the response is replaced by the same 503. Either way the
cookie is left alone (never deleted, never replaced, except by the new id of a
rotation Redis had already done, or the id of a new session whose first save timed
out: it may be stored, and the browser's retry then continues it) and nothing
partial is written, so the same session is served once Redis is back. A logout by
``session.clear()`` is two writes, the emptied session then its deletion: Redis
failing between them leaves the session empty (signed out) and still named by the
cookie. Its 503 has the generic page, not "you are still signed in" (as has one after
``session.destroy()``), and the retried logout completes it (the session deleted, the
cookie too). With the ``anonymous`` policy the
request runs with an empty read-only session instead; writing to it raises
:class:`~statekit.errors.BackendUnavailable`, which is also answered with a 503 (a
write after the view, by an ``after_request`` hook, is not stored either and makes
the response that 503). A hook that writes the session while a static file or an
outage's 503 is answered (``session.permanent = True`` in ``before_request``) changes
nothing: that session is never stored.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, Response, after_this_request, request, session
from flask.sessions import SessionInterface, SessionMixin

from statekit.config import flag, parse_url
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import outages
from statekit.sessions import Session, SessionStore
from statekit.sessions.session import warn_secure_cookie_over_http

from . import UNAVAILABLE_PAGE, _config, _config_number
from . import _on_backend_unavailable as _generic_unavailable

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["FlaskSession", "StatekitSessionInterface", "init_app", "outage_response"]

OUTAGE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>We cannot reach your session right now. Please try again in a few seconds; "
    "you are still signed in.</p>"
)


class FlaskSession(Session, SessionMixin):  # type: ignore[misc]
    """A Flask session backed by :class:`statekit.sessions.SessionStore`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accessed = False
        self.outage = False
        self.had_data = bool(self)
        self.loaded_permanent = bool(dict.get(self, "_permanent", False))
        self.token_sent: str | None = None  # the version token the browser sent
        #: a read-only session (:attr:`unavailable`) that takes writes and drops them
        #: instead of raising: a static file's, an outage's already answered 503, the
        #: ``anonymous`` policy's once the view has run (see :meth:`_changing`)
        self.drops_writes = False
        #: a write was dropped; :attr:`static`: the session of a static file
        self.dropped = self.static = False

    @property
    def permanent(self) -> bool:
        return bool(self.get("_permanent", False))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if self.unavailable:
            # the read-only session of an outage or a static file: never stored and no
            # cookie sent, so the flag (``session.permanent = True`` in a before_request
            # hook, the migration guide's idiom) is this request's only, not a write
            # refused (the anonymous policy would answer every request 503)
            dict.__setitem__(self, "_permanent", bool(value))
            return
        self["_permanent"] = bool(value)

    def _changing(self, key: str) -> None:
        if self.unavailable and self.drops_writes:
            # after the view (Flask's after_request hooks, Flask-Login's remember-cookie
            # refresh) or for a static file (``session.permanent = True`` in a
            # before_request hook): raising here was Flask's 500, or a 503 per static file
            self.dropped = True
            return
        super()._changing(key)

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().setdefault(key, default)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return super().__contains__(key)


#: headers of a response that no longer apply once its body is replaced by the 503 page
_BODY_HEADERS = ("Content-Encoding", "Content-Range", "Content-Disposition", "ETag", "Last-Modified",
                 "Location")


def outage_response(retry_after: int = 5) -> Response:
    """The 503 answered while the session store is unreachable."""
    response = Response(OUTAGE_PAGE, status=503, mimetype="text/html")
    _mark_outage(response, retry_after)
    return response


def _mark_outage(response: Response, retry_after: int) -> None:
    response.headers["Retry-After"] = str(retry_after)
    response.headers["Cache-Control"] = "no-store"


#: the WSGI environ key under which ``open_session`` leaves a session that could not be
#: loaded (an outage's, the ``anonymous`` policy's) for :func:`_guard`
_UNAVAILABLE = "statekit.session_unavailable"

#: the keys of a session that holds nothing to store: a new one holding only these is
#: neither stored nor sent a cookie (Flask-Session's rule: ``session.permanent = True``
#: in a ``before_request`` hook runs for every visitor, crawlers and probes included)
_FLAGS_ONLY = frozenset({"_permanent"})


def _vary_cookie(response: Response) -> None:
    """``response.vary.add("Cookie")`` without building a header set when the
    response has no ``Vary`` yet (the usual case)."""
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Cookie"
    elif "cookie" not in (t.strip().lower() for t in vary.split(",")):
        response.vary.add("Cookie")


class StatekitSessionInterface(SessionInterface):
    """Loads the session in ``open_session`` (one Redis round trip) and saves only
    what changed in ``save_session`` (one script, or nothing).

    Concurrency: requests of one session run in parallel without locks; each saves
    only the keys it changed, so changes to different keys never overwrite each
    other and, for one key, the last save wins.
    """

    def __init__(self, store: SessionStore, *, cookie_name: str = "session",
                 cookie_domain: str | None = None, cookie_path: str | None = None,
                 secure: bool | None = None, httponly: bool = True, samesite: str | None = "Lax",
                 partitioned: bool = False, retry_after: int = 5) -> None:
        self.store = store
        self.cookie_name = cookie_name
        self.cookie_domain = cookie_domain
        self.cookie_path = cookie_path
        #: ``None``: on unless ``app.debug``, decided per response (``app.run(debug=True)``
        #: sets it after the extension is initialised)
        self.secure = secure
        self.httponly = httponly
        self.samesite = samesite
        self.partitioned = partitioned
        self.retry_after = retry_after
        #: the version-token cookie, read only with the near cache (see :mod:`statekit.sessions`)
        self.token_name = cookie_name + "_v"
        self._near = store.near_cache
        #: how outages of the store are named in the ``statekit.outage`` log
        self.outage_name = "session store"

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        static = app.static_url_path
        if static is not None and request.path.startswith(static + "/") and app.has_static_folder:
            # Flask's static files never use the session: no round trip, and no 503
            # for them while Redis is away; a hook's write to it is dropped
            detached = self._read_only()
            detached.drops_writes = detached.static = True
            return detached
        cookies = request.cookies
        cookie = cookies.get(self.get_cookie_name(app))
        token = cookies.get(self.token_name) if self._near else None
        try:
            s = self.store.open(cookie, context=lambda: f"client {request.remote_addr}", version_token=token)
        except BackendUnavailable as e:
            outages.down(self.outage_name, e)
            s = self._read_only()
            s.outage = s.drops_writes = True  # _guard answers 503 before any view
        else:
            if not s.new and not s.unavailable:  # loaded: the store answered
                outages.up(self.outage_name)
        assert isinstance(s, FlaskSession)
        s.token_sent = token
        if s.unavailable:
            request.environ[_UNAVAILABLE] = s
        else:  # (an environ served twice: a retrying WSGI middleware)
            request.environ.pop(_UNAVAILABLE, None)
        return s

    def _read_only(self) -> FlaskSession:
        """An empty session that is never saved and refuses writes (as in an outage;
        or drops them, :attr:`FlaskSession.drops_writes`)."""
        s = self.store.session_class(self.store, "", new=False)
        assert isinstance(s, FlaskSession)
        s.unavailable = True
        return s

    # Flask's cookie hooks answer with the cookie this interface sends (the settings
    # resolved by init_app), and are what it sends: a subclass may override one

    def get_cookie_name(self, app: Flask) -> str:
        return self.cookie_name

    def get_cookie_domain(self, app: Flask) -> str | None:
        return self.cookie_domain

    def get_cookie_path(self, app: Flask) -> str:
        return self.cookie_path or super().get_cookie_path(app)

    def get_cookie_secure(self, app: Flask) -> bool:
        return not app.debug if self.secure is None else self.secure

    def get_cookie_httponly(self, app: Flask) -> bool:
        return self.httponly

    def get_cookie_samesite(self, app: Flask) -> str | None:
        return self.samesite

    def get_cookie_partitioned(self, app: Flask) -> bool:
        return self.partitioned

    def _cookie_kwargs(self, app: Flask) -> dict[str, Any]:
        return {"domain": self.get_cookie_domain(app), "path": self.get_cookie_path(app),
                "secure": self.get_cookie_secure(app), "httponly": self.get_cookie_httponly(app),
                "samesite": self.get_cookie_samesite(app), "partitioned": self.get_cookie_partitioned(app)}

    def _set_cookie(self, app: Flask, session: FlaskSession, response: Response) -> None:
        kwargs = self._cookie_kwargs(app)
        response.set_cookie(self.get_cookie_name(app), self.store.sign(session.sid),
                            expires=self.get_expiration_time(app, session), **kwargs)
        _vary_cookie(response)  # as Flask: whether or not the view used the session
        if kwargs["secure"]:
            warn_secure_cookie_over_http(request.is_secure, request.host)

    @staticmethod
    def _outage_body(response: Response, page: str = OUTAGE_PAGE) -> None:
        """Make *response* the outage's 503 page (the caller marks it)."""
        response.status_code = 503
        for header in _BODY_HEADERS:  # they describe the body being replaced
            del response.headers[header]
        response.set_data(page)
        response.mimetype = "text/html"

    def save_session(self, app: Flask, session: SessionMixin | None, response: Response) -> None:
        if not isinstance(session, FlaskSession):
            return
        if session.unavailable:  # outage: never touch the cookie
            if session.dropped and not session.static and response.status_code != 503:
                self._outage_body(response)  # the anonymous policy's session written after the view
            if response.status_code == 503:
                _mark_outage(response, self.retry_after)
            return
        if session.accessed:
            _vary_cookie(response)
        if session.new and dict.keys(session) <= _FLAGS_ONLY and not session.maybe_stored:
            return  # nothing to store (at most the permanence a hook sets on every request)
        if session.superseded:
            # its cookie named a session a login rotated moments ago: the browser most
            # likely holds the new cookie, which any cookie sent now would replace
            return
        if session.modified and not session.new and dict.keys(session) <= _FLAGS_ONLY:
            # emptied but for its permanence (a flash message shown, Flask-Login's
            # logout_user()): a logout, as Flask-Session ends an empty modified session
            session.clear()
        if session.permanent and app.config["SESSION_REFRESH_EACH_REQUEST"]:
            # Flask (and Flask-Session) store the whole session whenever they refresh
            # the cookie, so a value changed in place is kept: compare every key this
            # request read; only those that differ from what it loaded are written
            session.modified = True
        changed = session.modified  # Flask's test for sending the cookie
        logout = session.logging_out(session.had_data)
        try:
            # cleared or emptied: a logout (see SessionStore.commit); what was set after
            # the clear, or after a destroy() in the view, goes to a fresh id
            saved, carried = self.store.commit(session, had_data=session.had_data)
            logged_out = session.destroyed
        except BackendUnavailable as e:
            outages.down(self.outage_name, e)
            # a logout Redis failed in may be half done (the session emptied, not yet
            # destroyed): no "you are still signed in"; its retry completes it
            self._outage_body(response, UNAVAILABLE_PAGE if logout or session.destroyed else OUTAGE_PAGE)
            _mark_outage(response, self.retry_after)
            if session.send_cookie and not session.new or session.maybe_stored:
                # rotated (or first stored) before Redis failed: the data lives under the
                # new id only, and the old one is an alias for a few seconds. Or a new
                # session's create timed out: stored or not, the retry continues it
                self._set_cookie(app, session, response)
            return
        if logged_out:
            _vary_cookie(response)  # the cookie is replaced or deleted
            if session.token_sent is not None:
                response.delete_cookie(self.token_name, **self._cookie_kwargs(app))
            if carried is not None:
                assert isinstance(carried, FlaskSession)  # (the store's session_class)
                self._set_cookie(app, carried, response)
            else:
                response.delete_cookie(self.get_cookie_name(app), **self._cookie_kwargs(app))
            return
        token = self.store.version_token(session, session.token_sent)
        if token is not None and saved and not session.new:
            response.set_cookie(self.token_name, token, expires=self.get_expiration_time(app, session),
                                **self._cookie_kwargs(app))
        if not saved:
            # revoked or expired meanwhile: nothing written. The cookie is left alone:
            # the browser may already hold a newer one (a rotation in a parallel
            # request), and this one now opens a fresh session anyway.
            return
        if session.new:  # nothing stored (an empty session)
            return
        outages.up(self.outage_name)
        permanent = session.permanent
        # the cookie of a kept id goes out again only with a write (a change, or the
        # server's TTL refresh), which learns of a rotation by another request: a
        # read-only request in flight at a login would otherwise send the old cookie.
        # Then as Flask sends it: a permanent session's (a new Expires) when modified,
        # which SESSION_REFRESH_EACH_REQUEST (above) makes every request; and one
        # signed with a fallback key (SECRET_KEY_FALLBACKS), signed again now
        refresh = session.written and (permanent and changed or request.cookies.get(
            self.get_cookie_name(app)) != self.store.sign(session.sid))
        if not (session.send_cookie or permanent != session.loaded_permanent or refresh):
            return
        if session.through_alias:
            return  # an old cookie in flight during a login: the browser holds the new one
        session.loaded_permanent = permanent
        session.send_cookie = False
        self._set_cookie(app, session, response)

    def regenerate(self, session: SessionMixin) -> None:
        """Flask-Session's login call, ``app.session_interface.regenerate(session)``:
        ``session.rotate()`` (a new id, no session fixation). A session not stored yet
        already has an id made in this request, and keeps it."""
        if isinstance(session, FlaskSession) and not session.new:
            session.rotate()


def _rotate_on_login(sender: Flask, **extra: Any) -> None:
    """Flask-Login's ``user_logged_in`` and ``user_loaded_from_cookie``: a new session
    id for the login (no session fixation: a cookie planted before it stays
    anonymous). A session not yet stored already has an id made in this request; one
    rotated or destroyed in this request needs none (rotating a destroyed one would
    drop the login's keys)."""
    s = session._get_current_object()  # type: ignore[attr-defined]
    if isinstance(s, FlaskSession) and not (s.new or s.rotated or s.destroyed or s.unavailable):
        s.rotate()
    elif isinstance(s, FlaskSession):
        s.superseded = False  # a login: its cookie goes out whatever cookie the request sent


def _connect_flask_login(app: Flask) -> None:
    """Rotate on Flask-Login's logins in *app*, when Flask-Login is installed."""
    if importlib.util.find_spec("flask_login") is None:
        return
    signals = importlib.import_module("flask_login.signals")
    for name in ("user_logged_in", "user_loaded_from_cookie"):
        getattr(signals, name).connect(_rotate_on_login, sender=app, weak=False)


def _guard() -> Response | None:
    """First ``before_request`` hook: a session that could not be loaded answers 503
    before any view (or later hook) runs."""
    from flask import current_app

    # not through the ``session`` proxy: using it marks the session accessed (Flask
    # 3.1), which would add ``Vary: Cookie`` to every response
    s = request.environ.get(_UNAVAILABLE)
    if not isinstance(s, FlaskSession):
        return None
    if s.outage:
        iface = current_app.session_interface
        retry = iface.retry_after if isinstance(iface, StatekitSessionInterface) else 5
        return outage_response(retry)
    if not s.drops_writes:  # the anonymous policy: its view's writes raise, later ones are dropped
        after_this_request(functools.partial(_view_done, s))
    return None


def _view_done(s: FlaskSession, response: Response) -> Response:
    """The first after-request function (``after_this_request`` from :func:`_guard`):
    from now on the ``anonymous`` policy's read-only session drops writes, and
    ``save_session`` answers the outage's 503 if one was made."""
    s.drops_writes = True
    return response


def _on_backend_unavailable(error: BackendUnavailable) -> Response:
    """A write to the read-only session of an outage gets the session's 503 page;
    any other outage (the cache in a view) the generic one."""
    from flask import current_app

    iface = current_app.session_interface
    s = session._get_current_object()  # type: ignore[attr-defined]
    if not (isinstance(iface, StatekitSessionInterface) and isinstance(s, FlaskSession) and s.unavailable):
        return _generic_unavailable(error)
    outages.down(iface.outage_name, error)
    return outage_response(iface.retry_after)


def _cookie_option(app: Flask, name: str, flask_default: Any, default: Any) -> Any:
    """``STATEKIT_SESSION_COOKIE_<name>``; else Flask's ``SESSION_COOKIE_<name>`` when
    the app changed it from Flask's default; else *default* (ours, often stricter)."""
    flask_value = app.config.get(f"SESSION_COOKIE_{name}", flask_default)
    fallback = default if flask_value == flask_default else flask_value
    return _config(app, f"STATEKIT_SESSION_COOKIE_{name}", fallback)


def init_app(app: Flask, state: StateKitState) -> None:
    """Install the session interface. :raises ConfigError: no session URL (the
    extension checks this first and names the switch that keeps Flask's sessions)."""
    url = state.settings.require("session_url")
    # a migrating app keeps its Flask session settings where ours are not given
    flask_lifetime = app.permanent_session_lifetime.total_seconds()
    if flask_lifetime <= 0 and _config(app, "STATEKIT_SESSION_IDLE_TIMEOUT") is None:
        raise ConfigError(f"PERMANENT_SESSION_LIFETIME = {app.config.get('PERMANENT_SESSION_LIFETIME')!r}: "
                          "statekit sessions need a positive lifetime (it bounds the idle timeout in Redis), "
                          "or set STATEKIT_SESSION_IDLE_TIMEOUT")
    store = SessionStore(
        url,
        secret_keys=state.settings.secret_keys,
        key_prefix=state.settings.key_prefix,
        idle_timeout=_config_number(app, "STATEKIT_SESSION_IDLE_TIMEOUT", min(14 * 86400, flask_lifetime)),
        absolute_lifetime=_config_number(app, "STATEKIT_SESSION_ABSOLUTE_LIFETIME", 30 * 86400),
        refresh_interval=_config_number(app, "STATEKIT_SESSION_REFRESH_INTERVAL", 60),
        alias_window=_config_number(app, "STATEKIT_SESSION_ALIAS_WINDOW", 10),
        codec=_config(app, "STATEKIT_SESSION_CODEC", "json"),
        outage_policy=_config(app, "STATEKIT_SESSION_OUTAGE_POLICY", "raise"),
        user_key=_config(app, "STATEKIT_SESSION_USER_KEY", "_user_id") or None,
        session_class=FlaskSession,
        near_cache=_config(app, "STATEKIT_SESSION_NEAR_CACHE", 0),
    )
    samesite = _cookie_option(app, "SAMESITE", None, "Lax")
    secure = _cookie_option(app, "SECURE", False, None)  # None: on unless app.debug
    app.session_interface = iface = StatekitSessionInterface(
        store,
        cookie_name=_config(app, "STATEKIT_SESSION_COOKIE_NAME", app.config["SESSION_COOKIE_NAME"]),
        cookie_domain=_cookie_option(app, "DOMAIN", None, None) or None,
        cookie_path=_config(app, "STATEKIT_SESSION_COOKIE_PATH") or None,
        secure=None if secure is None else flag(secure, "STATEKIT_SESSION_COOKIE_SECURE",
                                                default=not app.debug),
        httponly=flag(_cookie_option(app, "HTTPONLY", True, True), "STATEKIT_SESSION_COOKIE_HTTPONLY",
                      default=True),
        samesite=samesite or None,
        partitioned=flag(_cookie_option(app, "PARTITIONED", False, False),
                         "STATEKIT_SESSION_COOKIE_PARTITIONED", default=False),
        retry_after=int(_config_number(app, "STATEKIT_SESSION_RETRY_AFTER", 5)),
    )
    iface.outage_name = f"session store {parse_url(url).redacted()}"
    from .carryover import carry_over_from_config

    store.carry_over = carry_over_from_config(app)
    state.sessions = store  # type: ignore[attr-defined]
    _connect_flask_login(app)
    app.before_request_funcs.setdefault(None, []).insert(0, _guard)
    handlers = app.error_handler_spec.get(None, {}).get(None, {})
    if BackendUnavailable not in handlers:
        app.register_error_handler(BackendUnavailable, _on_backend_unavailable)
