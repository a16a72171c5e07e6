"""Review 15 of the cache and its circuit breaker, on real servers.

Found by this review (each test failed before its fix):

* ``CircuitBreaker.reset()`` closed the breaker without telling anyone: the
  ``breaker_state`` gauge the metrics exporters read stayed 2 (open) until the next
  transition or the cache's ``stats()``;
* a sync half-open trial interrupted (a signal handler's exception, as
  ``KeyboardInterrupt``) on any path but ``get``'s own kept its place until the plan
  it ran in was collected: with the exception kept (a framework's error report),
  every call was refused until another ``breaker_reset`` passed.
"""

from __future__ import annotations

import pytest

from statekit.breaker import OPEN
from statekit.cache import Cache
from statekit.metrics import snapshot

pytestmark = pytest.mark.redis


# -- the breaker's gauge -----------------------------------------------------------------


def test_reset_reports_the_closed_breaker_to_the_gauge(redis_url: str) -> None:
    """An open breaker reset by hand: the exported ``breaker_state`` of the cache and
    of its namespace say closed (0) at once, as for a close by a successful trial."""
    root = Cache(redis_url, prefix="review15gauge", failure_threshold=2)
    users = root.namespace("users")
    try:
        root.breaker.failure()
        root.breaker.failure()
        assert root.breaker.state == OPEN
        exported = snapshot()["cache"]
        assert exported["review15gauge:default"]["breaker_state"] == 2
        assert exported["review15gauge:users"]["breaker_state"] == 2
        root.breaker.reset()
        exported = snapshot()["cache"]
        assert exported["review15gauge:default"]["breaker_state"] == 0  # was: 2
        assert exported["review15gauge:users"]["breaker_state"] == 0  # was: 2
        assert root.set("k", 1) and users.get("k") is None
    finally:
        root.close()
