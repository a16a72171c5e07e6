"""Django app for statekit.

Add ``"django_statekit"`` to ``INSTALLED_APPS`` and point Django's pluggable parts at
statekit::

    CACHES = {"default": {"BACKEND": "django_statekit.cache.StatekitCache",
                          "LOCATION": "redis://127.0.0.1:6379/0"}}
    SESSION_ENGINE = "django_statekit.sessions"
    STORAGES = {"default": {"BACKEND": "django_statekit.storage.BlobStorage"}, ...}

Settings (all optional, each also read from the environment variable of the same
name): ``STATEKIT_REDIS_URL``, ``STATEKIT_BLOBS_URL``, ``STATEKIT_SECRET_KEYS``
(defaults to ``SECRET_KEY`` + ``SECRET_KEY_FALLBACKS``), ``STATEKIT_KEY_PREFIX``.
"""

from __future__ import annotations

__all__: list[str] = []
