"""``django_statekit.conf.get_settings`` keeps what it read (Django builds a cache
backend per request under ASGI) and still sees every change: a Django setting changed
through ``override_settings`` and a ``STATEKIT_*`` environment variable."""

from __future__ import annotations

from typing import Any

import pytest

from django_statekit.cache import StatekitCache
from django_statekit.conf import get_settings


def test_a_changed_django_setting_is_seen(django_settings: Any) -> None:
    before = get_settings()
    assert get_settings() is before  # kept
    django_settings.set(STATEKIT_KEY_PREFIX="changed-prefix", STATEKIT_SECRET_KEYS="k1, k2")
    now = get_settings()
    assert (now.key_prefix, now.secret_keys) == ("changed-prefix", ("k1", "k2"))
    cache = StatekitCache("memory://conf", {})
    assert cache.statekit.prefix == "changed-prefix"
    django_settings.undo()
    assert get_settings() == before


def test_a_changed_environment_variable_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings()
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "from-env")
    assert get_settings().key_prefix == "from-env"
    monkeypatch.setenv("STATEKIT_CACHE_URL", "memory://from-env")
    assert get_settings().cache_url == "memory://from-env"
    monkeypatch.delenv("STATEKIT_KEY_PREFIX")
    assert get_settings().key_prefix == "statekit"


def test_a_django_setting_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                    django_settings: Any) -> None:
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "from-env")
    assert get_settings().key_prefix == "from-env"
    django_settings.set(STATEKIT_KEY_PREFIX="from-django")
    assert get_settings().key_prefix == "from-django"


def test_a_replaced_os_environ_is_seen() -> None:
    """``mock.patch("os.environ", ...)`` puts another object in its place: read through it."""
    from unittest import mock

    get_settings()
    with mock.patch("os.environ", {"STATEKIT_KEY_PREFIX": "replaced-env"}):
        assert get_settings().key_prefix == "replaced-env"
    assert get_settings().key_prefix == "statekit"
