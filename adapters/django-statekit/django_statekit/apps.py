"""The app config: checks statekit's settings when Django starts.

A project that uses statekit's session engine, cache or storage without the URL it
needs, without the extra its backend needs, or with a ``file://`` store whose
directory does not exist, fails at start (``django.setup()``, so ``runserver``, any
management command and every WSGI worker) with a :class:`~statekit.errors.ConfigError`
naming the setting or the ``pip install`` line, instead of answering 500 at the
first request that uses it; so does ``STORAGES["staticfiles"]`` on ``BlobStorage``,
an upload store ``collectstatic`` cannot use. To keep Django's own sessions, leave
``SESSION_ENGINE`` at Django's (``db``, ``cache``, ``signed_cookies``).
"""

from __future__ import annotations

import logging

from django.apps import AppConfig

__all__ = ["StatekitConfig", "check_settings"]

_SESSIONS = "django_statekit.sessions"
_CACHE = "django_statekit.cache.StatekitCache"
_STORAGE = "django_statekit.storage.BlobStorage"
_MIDDLEWARE = "django_statekit.middleware.SessionOutageMiddleware"


def check_settings() -> None:
    """Raise :class:`~statekit.errors.ConfigError` for what would fail at the first
    request (see the module docstring). Builds nothing that connects."""
    from django.conf import settings

    from statekit.errors import ConfigError
    from statekit.lifecycle import check_extras

    from .conf import get_settings

    s = get_settings()
    if getattr(settings, "SESSION_ENGINE", "") == _SESSIONS:
        if not s.session_url:
            raise ConfigError(
                f"SESSION_ENGINE = {_SESSIONS!r} needs a Redis URL: set STATEKIT_REDIS_URL (or "
                "STATEKIT_SESSION_URL), or keep one of Django's session engines")
        check_extras(s.session_url)
        from .conf import get_number
        from .middleware import _secure

        _secure()  # a boolean and a number read per response: checked here, not at the first 503
        get_number("STATEKIT_SESSION_RETRY_AFTER", 5)
    for alias, conf in (getattr(settings, "CACHES", None) or {}).items():
        if conf.get("BACKEND") != _CACHE:
            continue
        from .cache import _one_url  # LOCATION read as the cache reads it (a list, several servers)

        url = _one_url(conf.get("LOCATION")) or s.cache_url
        if not url:
            raise ConfigError(f"CACHES[{alias!r}] uses {_CACHE} without a URL: set its LOCATION, "
                              "or STATEKIT_REDIS_URL (or STATEKIT_CACHE_URL)")
        check_extras(url)
    for alias, conf in (getattr(settings, "STORAGES", None) or {}).items():
        if conf.get("BACKEND") != _STORAGE:
            continue
        if alias == "staticfiles":
            raise ConfigError(
                f"STORAGES['staticfiles'] uses {_STORAGE}, an upload store: its names are generated "
                "keys, so collectstatic would store each file where {% static %} never looks (and it "
                "refuses scripts it cannot sniff); keep Django's StaticFilesStorage (or "
                "ManifestStaticFilesStorage, WhiteNoise, django-storages' S3StaticStorage) for static files")
        url = (conf.get("OPTIONS") or {}).get("url") or s.blobs_url
        if not url:
            raise ConfigError(f"STORAGES[{alias!r}] uses {_STORAGE} without a URL: set "
                              "OPTIONS['url'] or STATEKIT_BLOBS_URL")
        check_extras(url, blobs=True)
        _check_file_root(url)
        _check_storage_options(alias, conf.get("OPTIONS") or {}, url)


def _check_storage_options(alias: str, options: dict[str, object], url: str) -> None:
    """``BlobStorage``'s *options* as its constructor takes them (``max_size``,
    ``expires``: nothing is opened), and on S3 an ``expires`` its links may last (a
    longer one made every ``url()`` a ValueError)."""
    from statekit.blobs.s3 import presign_seconds
    from statekit.config import parse_url
    from statekit.errors import ConfigError

    from .storage import BlobStorage

    try:
        storage = BlobStorage(**options)  # type: ignore[arg-type]
    except TypeError as e:  # an option it does not take: django-storages' location, bucket_name...
        raise ConfigError(f"STORAGES[{alias!r}] OPTIONS: {e} (BlobStorage takes url, max_size, "
                          "allowed_types, expires, store; django-storages' options map to the "
                          "s3:// URL: docs/migration.md, django-storages)") from None
    except ValueError as e:  # ConfigError included
        raise ConfigError(f"STORAGES[{alias!r}] OPTIONS: {e}") from None
    if parse_url(url).kind == "s3":
        try:
            presign_seconds(storage.expires)
        except ValueError as e:
            raise ConfigError(f"STORAGES[{alias!r}] OPTIONS: expires={storage.expires}: {e}") from None


def _check_file_root(url: str) -> None:
    """A ``file://`` store's directory exists (or ``?create=1`` makes it): what
    :class:`~statekit.blobs.local.LocalBlobStore` checks, without opening the store."""
    from statekit.blobs.local import LocalBackend as LocalBlobStore
    from statekit.config import parse_url

    if parse_url(url).kind == "file":
        LocalBlobStore(url).close()


class _OutageTracebacks(logging.Filter):
    """Drops ``django.request``'s traceback for a session-store outage that
    :class:`~django_statekit.middleware.SessionOutageMiddleware` answers with a 503
    (a failed save inside ``SessionMiddleware``): ``statekit.outage`` logs the outage
    once, with its reason, instead of a traceback per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        from django.conf import settings

        from statekit.errors import BackendUnavailable

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BackendUnavailable):
            return _MIDDLEWARE not in getattr(settings, "MIDDLEWARE", ())
        return True


class StatekitConfig(AppConfig):
    name = "django_statekit"
    label = "statekit"
    verbose_name = "statekit"

    def ready(self) -> None:
        check_settings()
        logger = logging.getLogger("django.request")
        if not any(isinstance(f, _OutageTracebacks) for f in logger.filters):
            logger.addFilter(_OutageTracebacks())
