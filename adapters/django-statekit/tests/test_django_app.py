from __future__ import annotations

from django.apps import apps

from django_statekit.conf import get_settings


def test_app_is_installed() -> None:
    assert apps.get_app_config("statekit").name == "django_statekit"


def test_settings_default_to_secret_key(django_settings) -> None:
    django_settings.set(STATEKIT_REDIS_URL="redis://127.0.0.1:6399/2")
    s = get_settings()
    assert s.secret_keys == ("django-statekit-tests-secret-key-0123456789",)
    assert s.cache_url == "redis://127.0.0.1:6399/2"
