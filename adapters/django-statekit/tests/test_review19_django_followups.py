"""Review 19 follow-ups for the Django adapter: django-redis settings left behind, a
cache with no server named (real Redis)."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_statekit import cache as cache_module
from django_statekit.cache import StatekitCache

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_warned_ignore_exceptions", set())


def test_django_redis_ignore_exceptions_left_in_settings_warns_once(redis_url: str) -> None:
    """``DJANGO_REDIS_IGNORE_EXCEPTIONS = True`` made django-redis answer a miss in an
    outage; StatekitCache does not read it: one warning at creation naming
    ``OPTIONS['on_error'] = 'miss'``, none with it, none again."""
    with override_settings(DJANGO_REDIS_IGNORE_EXCEPTIONS=True):
        named = r"DJANGO_REDIS_IGNORE_EXCEPTIONS.*OPTIONS\['on_error'\] = 'miss'"
        with pytest.warns(UserWarning, match=named):
            cache = StatekitCache(redis_url, {"OPTIONS": {"namespace": "r19fu"}})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            StatekitCache(redis_url, {"OPTIONS": {"namespace": "r19fu"}})  # once
            StatekitCache(redis_url, {"OPTIONS": {"namespace": "r19fu2", "on_error": "miss"}})
        assert cache.set("k", 1) is None and cache.get("k") == 1  # warned, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StatekitCache(redis_url, {"OPTIONS": {"namespace": "r19fu3"}})  # the setting off: nothing


def test_no_location_and_no_url_is_refused_at_creation_naming_location(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATEKIT_CACHE_URL", "STATEKIT_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    with override_settings(STATEKIT_CACHE_URL=None, STATEKIT_REDIS_URL=None):
        with pytest.raises(ImproperlyConfigured, match=r"CACHES\[alias\]\['LOCATION'\]"):
            StatekitCache(None, {})


def test_session_seconds_settings_take_a_timedelta() -> None:
    """As a cache's ttl: ``STATEKIT_SESSION_ABSOLUTE_LIFETIME = timedelta(days=7)``."""
    from django_statekit.conf import get_number

    with override_settings(STATEKIT_SESSION_ABSOLUTE_LIFETIME=dt.timedelta(days=7)):
        assert get_number("STATEKIT_SESSION_ABSOLUTE_LIFETIME", 30 * 86400) == 7 * 86400.0
