"""Shared values in Flask views and templates (:mod:`statekit.broadcast`).

``StateKit(app)`` puts a :class:`statekit.broadcast.SharedValues` at
``app.extensions["statekit"].broadcast`` and makes it a Jinja global called
``shared``::

    from flask_statekit.broadcast import shared

    @app.get("/")
    def index():
        return render_template("index.html", count=shared("users_count"))

    {# in any template #}
    {{ shared.users_count }} users online

Values are local copies kept current by one subscriber thread per worker process;
reading one never does I/O after its first use. The backend is
``STATEKIT_BROADCAST_URL`` (else ``STATEKIT_REDIS_URL``) and is only contacted when a
value is first read, so apps that never read one are unaffected.

Settings (``app.config``, then the environment where it makes sense):

=================================  ====================================================
``STATEKIT_BROADCAST_DEFAULTS``    dict of default value per name (``app.config`` only)
``STATEKIT_BROADCAST_MAX_AGE``     seconds after which a value ``is_stale``
``STATEKIT_BROADCASTER``           ``"package.module:broadcaster"`` run by
                                   ``flask statekit-broadcast``
=================================  ====================================================

The publisher is not started by the extension (web workers should not compute).
Run it as ``flask statekit-broadcast``, ``statekit broadcast module:broadcaster``, or
in the gunicorn master (:mod:`statekit.gunicorn`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app

from statekit.broadcast import SharedValue, SharedValues, load_broadcaster, serve
from statekit.config import number
from statekit.errors import ConfigError

from . import _config

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["init_app", "shared", "shared_value", "shared_values"]


def init_app(app: Flask, state: StateKitState) -> None:
    """Wire broadcast into *app* (called by ``StateKit.init_app``)."""
    max_age = _config(app, "STATEKIT_BROADCAST_MAX_AGE")
    defaults = app.config.get("STATEKIT_BROADCAST_DEFAULTS") or {}
    if not isinstance(defaults, dict):
        raise ConfigError("STATEKIT_BROADCAST_DEFAULTS must be a dict of name -> default value")
    values = SharedValues(
        state.settings.broadcast_url,
        key_prefix=state.settings.key_prefix,
        defaults=defaults,
        max_age=(number(max_age, "STATEKIT_BROADCAST_MAX_AGE", positive=True)
                 if max_age not in (None, "") else None),
    )
    state.broadcast = values  # type: ignore[attr-defined]
    app.jinja_env.globals["shared"] = values

    @app.cli.command("statekit-broadcast")
    @click.option("--broadcaster", "target", default=None,
                  help="module:attribute of a statekit Broadcaster (default STATEKIT_BROADCASTER)")
    def broadcast_command(target: str | None) -> None:
        """Run a statekit broadcaster's jobs until SIGTERM/SIGINT."""
        target = target or _config(current_app, "STATEKIT_BROADCASTER")
        if not target:
            raise click.UsageError("set STATEKIT_BROADCASTER or pass --broadcaster module:attribute")
        serve(load_broadcaster(target))


def shared_values(app: Flask | None = None) -> SharedValues:
    """The :class:`SharedValues` of *app* (the current app by default)."""
    from . import get_state

    values: SharedValues = get_state(app).broadcast
    return values


def shared(name: str, default: Any = None) -> Any:
    """The current value of the shared value *name* in the current app."""
    return shared_values().get(name, default)


def shared_value(name: str) -> SharedValue[Any]:
    """The :class:`SharedValue` *name* itself (``.version``, ``.age``, ``.is_stale``)."""
    return shared_values().value(name)
