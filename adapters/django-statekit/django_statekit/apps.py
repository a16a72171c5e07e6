from __future__ import annotations

from django.apps import AppConfig

__all__ = ["StatekitConfig"]


class StatekitConfig(AppConfig):
    name = "django_statekit"
    label = "statekit"
    verbose_name = "statekit"
