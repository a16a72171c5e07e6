"""Flask extension for statekit.

::

    from flask import Flask
    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config["STATEKIT_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    statekit = StateKit(app)          # or StateKit() + statekit.init_app(app)

The extension keeps no reference to the app (``app.extensions["statekit"]`` holds the
per-app state), so one ``StateKit`` object can serve several apps (application
factories). Configuration keys are ``STATEKIT_*``; any key not set in ``app.config``
is read from the environment variable of the same name.

Each capability is wired by a submodule with an ``init_app(app, state)`` function and
can be switched off with ``STATEKIT_<FEATURE>_ENABLED = False``.

**Start-up fails loud.** ``StateKit(app)`` raises :class:`~statekit.errors.ConfigError`
when an enabled capability cannot work, instead of failing at the first request:

* ``cache``, ``sessions`` or ``broadcast`` enabled without a Redis URL
  (``STATEKIT_REDIS_URL``, or ``STATEKIT_CACHE_URL`` / ``STATEKIT_SESSION_URL`` /
  ``STATEKIT_BROADCAST_URL``). Switch off what you do not use:
  ``STATEKIT_SESSIONS_ENABLED = False`` keeps Flask's own cookie sessions,
  ``STATEKIT_CACHE_ENABLED = False`` and ``STATEKIT_BROADCAST_ENABLED = False`` the rest;
* ``blobs`` switched on by name (``STATEKIT_BLOBS_ENABLED = True``) without a
  ``STATEKIT_BLOBS_URL``. Unset, blobs are on when a store is configured and off
  otherwise (then :func:`flask_statekit.blobs.blob_store` says what to set);
* a configured backend whose extra is not installed (the message has the
  ``pip install 'statekit[...]'`` line; ``/readyz`` reports it too);
* a ``file://`` blob store whose directory does not exist (add ``?create=1``).

**Outages.** A :class:`~statekit.errors.BackendUnavailable` that reaches Flask (a cache
call in a view, a write to the read-only session) is answered ``503`` with a generic
page and ``Retry-After``: no host, port, URL, bucket or key is ever shown to visitors.
The details go to the ``statekit.outage`` log, once when a backend goes down and once
when it is back (:class:`statekit.lifecycle.OutageLog`), not a traceback per request.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from flask import Flask, Response, current_app

from statekit.config import Settings, flag, number
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import check_extras, outages
from statekit.lifecycle import outage_name as _outage_name

__all__ = ["FEATURES", "UNAVAILABLE_PAGE", "StateKit", "StateKitState", "get_state", "outage_name",
           "unavailable_response"]

#: capability submodules, wired in this order
FEATURES = ("cache", "sessions", "blobs", "broadcast", "lifecycle")

#: capabilities that need a Redis URL -> the :class:`Settings` field that holds it
_REDIS_FEATURES = {"cache": "cache_url", "sessions": "session_url", "broadcast": "broadcast_url"}

#: the body of every 503 statekit answers for an outage other than the session's:
#: nothing about the backend (the log has that)
UNAVAILABLE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>This service is temporarily unavailable. Please try again in a few seconds.</p>"
)


def _config(app: Flask, key: str, default: Any = None) -> Any:
    if key in app.config:
        return app.config[key]
    return os.environ.get(key, default)


def _config_flag(app: Flask, key: str, default: bool) -> bool:
    """The boolean setting *key* (:func:`_config`): a value that is neither true nor
    false is a :class:`~statekit.errors.ConfigError` naming it."""
    return flag(_config(app, key, default), key, default=default)


def _config_number(app: Flask, key: str, default: float) -> float:
    """The setting *key* (:func:`_config`) in seconds: a finite number, not negative, or
    a ``timedelta`` (as Flask's ``PERMANENT_SESSION_LIFETIME``), else a
    :class:`~statekit.errors.ConfigError` naming it."""
    return number(_config(app, key, default), key, unit="seconds")


class StateKitState:
    """What the extension keeps per app, at ``app.extensions["statekit"]``.

    Capabilities add their objects as attributes (``cache``, ``sessions``, ``blobs``,
    ``broadcast``, ``lifecycle``) when they are enabled.
    """

    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        self.features: list[str] = []
        self.config = {k: v for k, v in app.config.items() if k.startswith("STATEKIT_")}

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"statekit feature {name!r} is not enabled for this app "
            f"(enabled: {', '.join(self.features) or 'none'})"
        )


def settings_from_app(app: Flask) -> Settings:
    """Build :class:`statekit.config.Settings` from ``app.config`` (then environment)."""
    redis_url = _config(app, "STATEKIT_REDIS_URL") or None
    keys = _config(app, "STATEKIT_SECRET_KEYS")
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    if not keys:
        fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or ()
        keys = [k for k in [app.config.get("SECRET_KEY"), *fallbacks] if k]
    return Settings(
        redis_url=redis_url,
        cache_url=_config(app, "STATEKIT_CACHE_URL") or redis_url,
        session_url=_config(app, "STATEKIT_SESSION_URL") or redis_url,
        broadcast_url=_config(app, "STATEKIT_BROADCAST_URL") or redis_url,
        blobs_url=_config(app, "STATEKIT_BLOBS_URL") or None,
        secret_keys=tuple(str(k) for k in keys),
        key_prefix=_config(app, "STATEKIT_KEY_PREFIX") or "statekit",
    )


def unavailable_response(retry_after: int = 5) -> Response:
    """The generic 503 (``Retry-After``, never cached)."""
    response = Response(UNAVAILABLE_PAGE, status=503, mimetype="text/html")
    response.headers["Retry-After"] = str(retry_after)
    response.headers["Cache-Control"] = "no-store"
    return response


def outage_name(error: BaseException) -> str:
    """What failed, for the ``statekit.outage`` log (:func:`statekit.lifecycle.outage_name`
    with this app's settings)."""
    state = current_app.extensions.get("statekit")
    return _outage_name(error, state.settings if isinstance(state, StateKitState) else None)


def _on_backend_unavailable(error: BackendUnavailable) -> Response:
    outages.down(outage_name(error), error)
    return unavailable_response()


def _check_start(app: Flask, settings: Settings, enabled: list[str]) -> None:
    """Refuse to start what would fail at its first request (see the module docstring)."""
    missing = [f for f in enabled if f in _REDIS_FEATURES and not getattr(settings, _REDIS_FEATURES[f])]
    if missing:
        switches = ", ".join(f"STATEKIT_{f.upper()}_ENABLED = False" for f in missing)
        raise ConfigError(
            f"StateKit: {', '.join(missing)} enabled but no Redis URL is configured: set "
            f"STATEKIT_REDIS_URL, or switch off what you do not use: {switches}"
            + (" (Flask's own cookie sessions then stay in place)" if "sessions" in missing else "")
        )
    named = _config(app, "STATEKIT_BLOBS_ENABLED") not in (None, "")  # unset: on only with a store
    if "blobs" in enabled and named and not settings.blobs_url:
        from statekit.blobs import no_blob_store

        raise no_blob_store("STATEKIT_BLOBS_ENABLED = False")
    checked: set[str] = set()
    for feature in enabled:
        url = getattr(settings, _REDIS_FEATURES[feature]) if feature in _REDIS_FEATURES else None
        if url and url not in checked:
            checked.add(url)
            check_extras(url)
    if settings.blobs_url and ("blobs" in enabled or "lifecycle" in enabled):
        check_extras(settings.blobs_url, blobs=True)
    if "sessions" in enabled and not settings.secret_keys:
        raise ConfigError("StateKit: sessions need signing keys: set the app's SECRET_KEY (or "
                          "STATEKIT_SECRET_KEYS), or switch them off: STATEKIT_SESSIONS_ENABLED = False")


class StateKit:
    """The Flask extension. See the module docstring."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        for key, value in self.options.items():
            app.config.setdefault(f"STATEKIT_{key.upper()}", value)
        if "statekit" in app.extensions:
            raise ConfigError("StateKit is already initialised for this app")
        state = StateKitState(app, settings_from_app(app))
        enabled = [f for f in FEATURES if _config_flag(app, f"STATEKIT_{f.upper()}_ENABLED", True)]
        _check_start(app, state.settings, enabled)
        app.extensions["statekit"] = state
        for feature in enabled:
            module_name = f"flask_statekit.{feature}"
            if importlib.util.find_spec(module_name) is None:
                continue
            importlib.import_module(module_name).init_app(app, state)
            state.features.append(feature)
        handlers = app.error_handler_spec.get(None, {}).get(None, {})
        if BackendUnavailable not in handlers:  # the app's own (or the sessions') handler wins
            app.register_error_handler(BackendUnavailable, _on_backend_unavailable)


def get_state(app: Flask | None = None) -> StateKitState:
    """The statekit state of *app* (the current app by default)."""
    app = app or current_app
    try:
        state: StateKitState = app.extensions["statekit"]
    except KeyError:
        raise RuntimeError("StateKit(app) has not been initialised for this app") from None
    return state
