"""Shared values in Django views and templates (:mod:`statekit.broadcast`).

::

    # settings.py
    STATEKIT_REDIS_URL = "redis://127.0.0.1:6379/0"      # or STATEKIT_BROADCAST_URL
    STATEKIT_BROADCAST_DEFAULTS = {"users_count": 0}      # optional
    STATEKIT_BROADCASTER = "myproject.jobs:broadcaster"   # for manage.py statekit_broadcast
    TEMPLATES = [{..., "OPTIONS": {"context_processors": [
        ..., "django_statekit.context_processors.shared_values"]}}]

    # views.py
    from django_statekit.broadcast import shared
    def index(request):
        return render(request, "index.html", {"count": shared("users_count")})

    {# any template rendered with a request #}
    {{ shared.users_count }} users online

Values are local copies kept current by one subscriber thread per process; reading
one never does I/O after its first use. The backend is contacted only when a value
is first read. Run the publisher with ``manage.py statekit_broadcast`` (or
``statekit broadcast``, or in the gunicorn master with :mod:`statekit.gunicorn`);
web workers only read.

Settings: ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL``, ``STATEKIT_KEY_PREFIX``,
``STATEKIT_BROADCAST_DEFAULTS`` (dict), ``STATEKIT_BROADCAST_MAX_AGE`` (seconds),
``STATEKIT_BROADCASTER`` (``"package.module:attribute"``). Changing them (e.g. with
``override_settings``) builds a new set of values.
"""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed

from statekit.broadcast import Broadcaster, SharedValue, SharedValues, load_broadcaster
from statekit.config import number
from statekit.errors import ConfigError

from .conf import get_setting, get_settings

__all__ = ["get_broadcaster", "shared", "shared_value", "shared_values"]

_values: SharedValues | None = None


def shared_values() -> SharedValues:
    """This project's :class:`SharedValues` (built from settings on first use)."""
    global _values
    values = _values
    if values is None:  # no lock: building it twice in a race is harmless
        settings = get_settings()
        defaults = get_setting("STATEKIT_BROADCAST_DEFAULTS") or {}
        if not isinstance(defaults, dict):
            raise ConfigError("STATEKIT_BROADCAST_DEFAULTS must be a dict of name -> default value")
        max_age = get_setting("STATEKIT_BROADCAST_MAX_AGE")
        values = _values = SharedValues(
            settings.broadcast_url,
            key_prefix=settings.key_prefix,
            defaults=defaults,
            max_age=(number(max_age, "STATEKIT_BROADCAST_MAX_AGE", positive=True)
                     if max_age not in (None, "") else None),
        )
    return values


def shared(name: str, default: Any = None) -> Any:
    """The current value of the shared value *name*."""
    return shared_values().get(name, default)


def shared_value(name: str) -> SharedValue[Any]:
    """The :class:`SharedValue` *name* itself (``.version``, ``.age``, ``.is_stale``)."""
    return shared_values().value(name)


def get_broadcaster(target: str | None = None) -> Broadcaster:
    """The :class:`Broadcaster` named by *target* or ``STATEKIT_BROADCASTER``.

    :raises ConfigError: neither is set, or the target is not a Broadcaster.
    """
    target = target or get_setting("STATEKIT_BROADCASTER")
    if not target:
        raise ConfigError('set STATEKIT_BROADCASTER = "package.module:broadcaster" or pass --broadcaster')
    return load_broadcaster(str(target))


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _values
    if setting.startswith("STATEKIT_"):
        _values = None


setting_changed.connect(_reset)
