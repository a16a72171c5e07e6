"""Review 17: the Django adapter reads ``STATEKIT_BROADCAST_MAX_AGE`` through
``config.number`` (the one numeric check of settings), as Flask and Starlette do:
``float(value)`` made ``"soon"`` a bare ValueError at the first template that read a
shared value, and ``"inf"`` a max_age no value ever reaches."""

from __future__ import annotations

from typing import Any

import pytest

from django_statekit.broadcast import shared_value, shared_values
from statekit.errors import ConfigError


@pytest.mark.parametrize("value", ["soon", "inf", "-1"])
def test_a_bad_broadcast_max_age_is_a_config_error_naming_it(django_settings: Any, value: str) -> None:
    django_settings.set(STATEKIT_BROADCAST_URL="memory://review17-django-max-age",
                        STATEKIT_BROADCAST_MAX_AGE=value)
    with pytest.raises(ConfigError, match="STATEKIT_BROADCAST_MAX_AGE"):
        shared_values()


def test_a_number_as_text_is_read(django_settings: Any) -> None:
    django_settings.set(STATEKIT_BROADCAST_URL="memory://review17-django-max-age",
                        STATEKIT_BROADCAST_MAX_AGE="30")
    assert shared_value("x").max_age == 30.0
