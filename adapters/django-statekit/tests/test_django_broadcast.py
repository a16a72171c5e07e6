"""Django adapter for broadcast: views, the context processor, the management command."""

from __future__ import annotations

from typing import Any

import pytest
import tests_django_urls
from django.core.management import call_command
from django.core.management.base import CommandError
from django.http import HttpRequest, JsonResponse
from django.template import engines
from django.test import Client, RequestFactory
from django.urls import path

from django_statekit.broadcast import get_broadcaster, shared, shared_value, shared_values
from statekit.broadcast import Broadcaster, SharedValues
from statekit.errors import ConfigError
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis

PREFIX = "djbc"

#: run by the management command test: computes once, then stops its own scheduler
cli_broadcaster: Broadcaster | None = None


def count_view(request: HttpRequest) -> JsonResponse:
    sv = shared_value("users_count")
    return JsonResponse({"value": shared("users_count"), "version": sv.version, "stale": sv.is_stale})


tests_django_urls.urlpatterns.append(path("broadcast/count", count_view))

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django_statekit.context_processors.shared_values",
    ]},
}]


@pytest.fixture
def configured(django_settings: Any, redis_url: str) -> str:
    django_settings.set(STATEKIT_REDIS_URL=redis_url, STATEKIT_KEY_PREFIX=PREFIX,
                        STATEKIT_BROADCAST_DEFAULTS={"users_count": 0}, TEMPLATES=TEMPLATES)
    return redis_url


def test_views_see_published_values(configured: str) -> None:
    client = Client()
    assert client.get("/broadcast/count").json() == {"value": 0, "version": 0, "stale": True}
    Broadcaster(configured, key_prefix=PREFIX).publish("users_count", 12)
    wait_for(lambda: shared("users_count") == 12)
    assert client.get("/broadcast/count").json() == {"value": 12, "version": 1, "stale": False}


def test_context_processor_exposes_shared_values(configured: str) -> None:
    b = Broadcaster(configured, key_prefix=PREFIX)
    b.publish("users_count", 7)
    b.publish("motd", "hello")
    template = engines["django"].from_string("{{ shared.users_count }} users; {{ shared.motd }}")
    request = RequestFactory().get("/")
    assert template.render({}, request) == "7 users; hello"
    assert isinstance(shared_values(), SharedValues)


def test_settings_change_builds_new_values(configured: str, django_settings: Any) -> None:
    first = shared_values()
    django_settings.set(STATEKIT_BROADCAST_MAX_AGE="30")
    assert shared_values() is not first
    assert shared_value("x").max_age == 30.0


def test_management_command_runs_the_broadcaster(configured: str, django_settings: Any) -> None:
    global cli_broadcaster
    b = cli_broadcaster = Broadcaster(configured, key_prefix=PREFIX)

    @b.every(0.1, name="users_count")
    def users_count() -> int:
        b.stop(0)  # one computation is enough for the test
        return 5

    django_settings.set(STATEKIT_BROADCASTER=f"{__name__}:cli_broadcaster")
    assert get_broadcaster() is b
    call_command("statekit_broadcast")
    wait_for(lambda: b.retained("users_count") == (1, 5))
    wait_for(lambda: shared("users_count") == 5)


def test_management_command_without_broadcaster(configured: str) -> None:
    with pytest.raises(CommandError, match="STATEKIT_BROADCASTER"):
        call_command("statekit_broadcast")
    with pytest.raises(ConfigError):
        get_broadcaster("nope.module:thing")
