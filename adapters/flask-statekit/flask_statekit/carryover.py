"""Keep users logged in across the switch to statekit sessions: the previous session
store is read on a user's first request (see :mod:`statekit.sessions.carryover`).

========================================  ==============================================
``STATEKIT_SESSION_CARRY_OVER``           off (default); ``flask-cookie`` (Flask's own
                                          signed cookie sessions) or ``flask-session``
                                          (Flask-Session's Redis layout)
``STATEKIT_SESSION_CARRY_OVER_URL``       ``flask-session``: the old Redis (default: the
                                          client in Flask-Session's ``SESSION_REDIS``)
``STATEKIT_SESSION_CARRY_OVER_DELETE``    delete the old entry once carried over (on)
``STATEKIT_SESSION_CARRY_OVER_PICKLE``    ``flask-session``: read the pickled values of
                                          Flask-Session before 0.7, as plain data only
                                          (off)
========================================  ==============================================

``flask-cookie`` verifies the old cookie as Flask did (``SECRET_KEY``, then
``SECRET_KEY_FALLBACKS``; ``PERMANENT_SESSION_LIFETIME`` as its maximum age): a tampered
or expired cookie gives a fresh session, as before. Nothing is deleted on the old side
(the statekit cookie replaces the old one when the names match). ``flask-session``
reads Flask-Session's settings: ``SESSION_KEY_PREFIX`` (``"session:"``) and
``SESSION_USE_SIGNER``.

Flask-Session before 0.7 stored a pickle, unsigned (``SESSION_USE_SIGNER`` signs only
the id in the cookie). Such a value is refused unless ``STATEKIT_SESSION_CARRY_OVER_PICKLE``
is on: the user gets a fresh session (counted in ``carry_over_refused``, logged to
``statekit.security`` with the setting to turn on). On, it is read under a signed id
only, and as plain data only (:func:`statekit.sessions.carryover.loads_plain_pickle`:
any pickle naming a class or function is refused, never run); the old app unpickled
the same bytes with full pickle, so this adds no trust in the old store. It is the one,
opt-in, exception to "no unsigned pickle on a read path": switch it off with the
carry-over. Flask-Session 0.8's msgpack and JSON values need no opt-in, and come back
as Flask-Session gave them to the views (an aware datetime as a datetime in UTC). A stored
session of more than 1 MB (:data:`statekit.sessions.carryover.MAX_SESSION_BYTES`) is
refused like an unknown format, before it is decoded.

Once the old sessions have expired
(``PERMANENT_SESSION_LIFETIME`` after the switch), set ``STATEKIT_SESSION_CARRY_OVER``
back to off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature

from statekit.errors import ConfigError
from statekit.sessions.carryover import CarryOver, FlaskSessionRedis, PreviousStore

from . import _config, _config_flag

__all__ = ["FlaskCookieSessions", "carry_over_from_config"]


class FlaskCookieSessions:
    """Flask's default sessions: the data itself, signed, in the cookie."""

    name = "Flask cookie sessions"

    def __init__(self, app: Flask) -> None:
        self.app = app

    def read(self, cookie: str) -> Mapping[str, Any] | None:
        serializer = SecureCookieSessionInterface().get_signing_serializer(self.app)
        if serializer is None:  # no SECRET_KEY: Flask had no cookie sessions either
            return None
        max_age = int(self.app.permanent_session_lifetime.total_seconds())
        try:
            data = serializer.loads(cookie, max_age=max_age)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and data else None

    def forget(self, cookie: str) -> None:
        """Nothing is stored on the server: the new cookie replaces this one."""


def _secret_keys(app: Flask) -> list[str | bytes]:
    keys: list[str | bytes] = [app.secret_key] if app.secret_key else []
    return keys + list(app.config.get("SECRET_KEY_FALLBACKS") or [])


def carry_over_from_config(app: Flask) -> CarryOver | None:
    """The :class:`~statekit.sessions.carryover.CarryOver` the settings ask for, or
    ``None`` (off). :raises ConfigError: an unknown kind, or no old Redis."""
    kind = str(_config(app, "STATEKIT_SESSION_CARRY_OVER", "") or "").strip().lower()
    if kind in ("", "0", "off", "false", "no", "none"):
        return None
    previous: PreviousStore
    if kind == "flask-cookie":
        previous = FlaskCookieSessions(app)
    elif kind == "flask-session":
        url = _config(app, "STATEKIT_SESSION_CARRY_OVER_URL")
        client = None if url else app.config.get("SESSION_REDIS")
        if not url and client is None:
            raise ConfigError("STATEKIT_SESSION_CARRY_OVER = 'flask-session' needs the old Redis: "
                              "STATEKIT_SESSION_CARRY_OVER_URL (or Flask-Session's SESSION_REDIS)")
        previous = FlaskSessionRedis(
            url or None, client=client, key_prefix=app.config.get("SESSION_KEY_PREFIX", "session:"),
            secret_keys=_secret_keys(app), use_signer=bool(app.config.get("SESSION_USE_SIGNER", False)),
            plain_pickle=_config_flag(app, "STATEKIT_SESSION_CARRY_OVER_PICKLE", False))
    else:
        raise ConfigError(f"STATEKIT_SESSION_CARRY_OVER={kind!r} must be off, 'flask-cookie' or "
                          "'flask-session'")
    return CarryOver(previous, delete=_config_flag(app, "STATEKIT_SESSION_CARRY_OVER_DELETE", True),
                     claim_ttl=max(1.0, app.permanent_session_lifetime.total_seconds()))
