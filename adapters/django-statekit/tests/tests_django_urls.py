"""URLconf for the adapter tests; test modules append their own patterns."""

from __future__ import annotations

from typing import Any

urlpatterns: list[Any] = []
