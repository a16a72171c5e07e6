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
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from flask import Flask, current_app

from statekit.config import Settings
from statekit.errors import ConfigError

__all__ = ["FEATURES", "StateKit", "StateKitState", "get_state"]

#: capability submodules, wired in this order
FEATURES = ("cache", "sessions", "blobs", "broadcast", "lifecycle")


def _config(app: Flask, key: str, default: Any = None) -> Any:
    if key in app.config:
        return app.config[key]
    return os.environ.get(key, default)


def _flag(value: Any) -> bool:
    """A boolean setting: ``True``/``False``, or text such as ``1``, ``true``, ``yes``, ``on``
    (any case) from the environment."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


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
        app.extensions["statekit"] = state
        for feature in FEATURES:
            if not _flag(_config(app, f"STATEKIT_{feature.upper()}_ENABLED", True)):
                continue
            module_name = f"flask_statekit.{feature}"
            if importlib.util.find_spec(module_name) is None:
                continue
            importlib.import_module(module_name).init_app(app, state)
            state.features.append(feature)


def get_state(app: Flask | None = None) -> StateKitState:
    """The statekit state of *app* (the current app by default)."""
    app = app or current_app
    try:
        state: StateKitState = app.extensions["statekit"]
    except KeyError:
        raise RuntimeError("StateKit(app) has not been initialised for this app") from None
    return state
