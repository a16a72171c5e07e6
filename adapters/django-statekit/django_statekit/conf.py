"""statekit settings from Django settings (then the environment)."""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from statekit.config import Settings, number

__all__ = ["get_setting", "get_settings"]

#: the environment variables :func:`get_settings` may read (a change to one is seen)
_ENV = ("STATEKIT_REDIS_URL", "STATEKIT_CACHE_URL", "STATEKIT_SESSION_URL", "STATEKIT_BROADCAST_URL",
        "STATEKIT_BLOBS_URL", "STATEKIT_SECRET_KEYS", "STATEKIT_KEY_PREFIX")
#: os.environ's own table and its keys for those names (a lookup in it costs no
#: exception for an unset name, as ``os.environ.get`` does: ~1.3 µs each), used while
#: ``os.environ`` is still that object (``mock.patch("os.environ", ...)`` replaces it)
_environ_object = os.environ
_environ: Any = getattr(os.environ, "_data", None)
_env_keys: tuple[Any, ...] = ()
if _environ is not None and callable(getattr(os.environ, "encodekey", None)):
    _env_keys = tuple(map(os.environ.encodekey, _ENV))  # type: ignore[attr-defined]
else:  # pragma: no cover - another os.environ
    _environ = None
#: (settings epoch, environment values, the Settings read with them)
_kept: tuple[int, tuple[str | None, ...], Settings] | None = None
_epoch = 0
_epoch_lock = threading.Lock()


def get_setting(name: str, default: Any = None) -> Any:
    """``settings.<name>`` if set, else ``os.environ[name]``, else *default*."""
    value = getattr(django_settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return value


def get_number(name: str, default: float) -> float:
    """The setting *name* (:func:`get_setting`) in seconds: finite and not negative, or
    a ``timedelta``, else a ``ConfigError`` naming it (:func:`statekit.config.number`)."""
    return number(get_setting(name, default), name, unit="seconds")


def get_settings() -> Settings:
    """:class:`statekit.config.Settings` for this Django project.

    Read once and kept until a Django setting changes (Django's ``setting_changed``
    signal: ``override_settings``, pytest-django's ``settings``) or one of the
    ``STATEKIT_*`` environment variables does. Under ASGI Django builds a cache
    backend per request, and reading these settings each time cost ~60 µs of it.
    (A setting assigned directly at run time, which Django advises against and
    signals nothing for, is not seen.)"""
    global _kept
    environ = os.environ
    if environ is _environ_object and _environ is not None:
        env = tuple(map(_environ.get, _env_keys))
    else:
        env = tuple(map(environ.get, _ENV))
    kept = _kept
    if kept is not None and kept[0] == _epoch and kept[1] == env:
        return kept[2]
    epoch = _epoch
    found = _read()
    with _epoch_lock:
        if epoch == _epoch:  # no setting changed while it was read
            _kept = (epoch, env, found)
    return found


def _read() -> Settings:
    redis_url = get_setting("STATEKIT_REDIS_URL") or None
    keys = get_setting("STATEKIT_SECRET_KEYS")
    if isinstance(keys, str):
        keys = [k.strip() for k in keys.split(",") if k.strip()]
    if not keys:
        secret = getattr(django_settings, "SECRET_KEY", "")
        fallbacks = getattr(django_settings, "SECRET_KEY_FALLBACKS", [])
        keys = [k for k in [secret, *fallbacks] if k]
    return Settings(
        redis_url=redis_url,
        cache_url=get_setting("STATEKIT_CACHE_URL") or redis_url,
        session_url=get_setting("STATEKIT_SESSION_URL") or redis_url,
        broadcast_url=get_setting("STATEKIT_BROADCAST_URL") or redis_url,
        blobs_url=get_setting("STATEKIT_BLOBS_URL") or None,
        secret_keys=tuple(str(k) for k in keys),
        key_prefix=get_setting("STATEKIT_KEY_PREFIX") or "statekit",
    )


def _setting_changed(**kwargs: Any) -> None:
    global _epoch, _kept
    with _epoch_lock:
        _epoch += 1
        _kept = None


setting_changed.connect(_setting_changed, dispatch_uid="django_statekit.conf")
