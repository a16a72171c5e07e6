"""statekit settings from Django settings (then the environment)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings as django_settings

from statekit.config import Settings

__all__ = ["get_setting", "get_settings"]


def get_setting(name: str, default: Any = None) -> Any:
    """``settings.<name>`` if set, else ``os.environ[name]``, else *default*."""
    value = getattr(django_settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return value


def get_settings() -> Settings:
    """:class:`statekit.config.Settings` for this Django project."""
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
