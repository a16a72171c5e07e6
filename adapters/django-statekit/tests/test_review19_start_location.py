"""Django's start check reads ``CACHES[...]["LOCATION"]`` as ``StatekitCache`` reads it
(82c6505 taught the cache django-redis' list form; the start check still passed the list
on as a URL: ``LOCATION: ["redis://..."]`` failed ``django.setup()`` with "backend URL
is empty", and two servers with a URL parse error instead of the cache's message)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_statekit.apps import check_settings

BACKEND = "django_statekit.cache.StatekitCache"


def test_a_location_list_of_one_url_passes_the_start_check(django_settings: Any) -> None:
    django_settings.set(CACHES={"default": {"BACKEND": BACKEND, "LOCATION": ["redis://127.0.0.1:6379/0"]}})
    check_settings()


def test_a_location_of_two_servers_fails_the_start_check_as_the_cache_does(django_settings: Any) -> None:
    django_settings.set(CACHES={"default": {"BACKEND": BACKEND,
                                            "LOCATION": "redis://a:6379/0,redis://b:6379/0"}})
    with pytest.raises(ImproperlyConfigured, match="names 2 servers"):
        check_settings()
