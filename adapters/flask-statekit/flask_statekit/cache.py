"""The cache for Flask apps: ``StateKit(app)`` puts a :class:`statekit.cache.Cache`
at ``app.extensions["statekit"].cache``; :data:`cache` is a proxy to the current
app's one, usable in views::

    from flask_statekit.cache import cache

    @app.get("/report")
    def report():
        return cache.get_or_set("report", build_report, ttl=60)

Configuration (``app.config``, then the environment): ``STATEKIT_CACHE_URL`` (else
``STATEKIT_REDIS_URL``), ``STATEKIT_KEY_PREFIX``, and ``STATEKIT_CACHE_DEFAULT_TTL``,
``STATEKIT_CACHE_NAMESPACE``, ``STATEKIT_CACHE_SERIALIZER``,
``STATEKIT_CACHE_NEAR_CACHE``, ``STATEKIT_CACHE_ON_ERROR``, ``STATEKIT_CACHE_TIMEOUT``,
or ``STATEKIT_CACHE_OPTIONS`` (a dict of :class:`~statekit.cache.Cache` keywords).
The signed-pickle codec uses ``STATEKIT_SECRET_KEYS`` (else ``SECRET_KEY`` and
``SECRET_KEY_FALLBACKS``). Nothing connects until the cache is first used.

Apps on Flask-Caching keep their decorators and set
``CACHE_TYPE = "statekit.compat.cachelib.StatekitCache"``: its codec stores the
``Response`` objects, ``abort()`` exceptions and ``{% cache %}`` fragments
Flask-Caching caches, without pickle (see :mod:`statekit.compat.cachelib`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.local import LocalProxy

from statekit.cache import Cache

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["cache", "get_cache", "init_app"]

_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "DEFAULT_TTL": ("default_ttl", float),
    "NAMESPACE": ("namespace", str),
    "SERIALIZER": ("serializer", str),
    "NEAR_CACHE": ("near_cache", lambda v: v if isinstance(v, (bool, int)) else int(v)),
    "ON_ERROR": ("on_error", str),
    "TIMEOUT": ("timeout", float),
}


def _option(app: Flask, name: str) -> Any:
    key = f"STATEKIT_CACHE_{name}"
    if key in app.config:
        return app.config[key]
    return os.environ.get(key)


def init_app(app: Flask, state: StateKitState) -> None:
    """Create the app's :class:`~statekit.cache.Cache` (lazily connecting)."""
    settings = state.settings
    options: dict[str, Any] = dict(app.config.get("STATEKIT_CACHE_OPTIONS") or {})
    for name, (kwarg, conv) in _OPTIONS.items():
        raw = _option(app, name)
        if raw is not None and kwarg not in options:
            options[kwarg] = conv(raw)
    options.setdefault("prefix", settings.key_prefix)
    if options.get("serializer") == "signed-pickle":
        options.setdefault("secret_keys", settings.secret_keys)
    state.cache = Cache(settings.cache_url, **options)  # type: ignore[attr-defined]


def get_cache(app: Flask | None = None) -> Cache:
    """The cache of *app* (the current app by default)."""
    from . import get_state

    c: Cache = get_state(app).cache
    return c


#: the current app's cache (a proxy; use it inside an app or request context)
cache: Cache = LocalProxy(get_cache)  # type: ignore[assignment]
