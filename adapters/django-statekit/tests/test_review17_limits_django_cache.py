"""Review 17, "a limit holds on every path": a cache's ttl is at most
``statekit.cache.tools.MAX_TTL`` (1e15 s). ``CACHES[...]["TIMEOUT"]`` above it
made a backend whose every ``set``/``add`` without a timeout (and ``get_or_set``, ``touch``)
raised ValueError: the limit held, at each call, never at start. It is now an
``ImproperlyConfigured`` naming TIMEOUT when the backend is made. A TIMEOUT of 0 or
less (Django: expire at once) and None (never) stay valid."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_statekit.cache import StatekitCache
from statekit.cache.tools import MAX_TTL


def test_a_default_timeout_past_the_limit_is_refused_when_made(django_settings: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="TIMEOUT"):
        StatekitCache("memory://review17-timeout", {"TIMEOUT": 10**16})


@pytest.mark.parametrize("timeout", [None, 0, -1, 300, int(MAX_TTL)])
def test_the_timeouts_django_allows_still_work(django_settings: Any, timeout: Any) -> None:
    cache = StatekitCache("memory://review17-timeout", {"TIMEOUT": timeout})
    cache.set("k", 1)
    assert cache.get("k") == (None if timeout is not None and timeout <= 0 else 1)
