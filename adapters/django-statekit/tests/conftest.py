"""Django settings for the adapter tests.

Configured once, before any test module imports Django models. Tests override what
they need (``CACHES``, ``SESSION_ENGINE``, ``STORAGES``) with
``django.test.override_settings`` or the ``settings`` fixture below, pointing at the
private servers from the root conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-statekit-tests-secret-key-0123456789",  # noqa: S106
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django_statekit",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        ROOT_URLCONF="tests_django_urls",
        USE_TZ=True,
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
        }],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


class _Settings:
    """Set Django settings for one test; undone afterwards."""

    def __init__(self) -> None:
        self._overrides: list[Any] = []

    def set(self, **values: Any) -> None:
        from django.test import override_settings

        ov = override_settings(**values)
        ov.enable()
        self._overrides.append(ov)

    def undo(self) -> None:
        while self._overrides:
            self._overrides.pop().disable()


@pytest.fixture
def django_settings() -> Iterator[_Settings]:
    s = _Settings()
    yield s
    s.undo()
