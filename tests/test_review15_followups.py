"""Follow-ups of this session's cache fixes, on a real server.

persist() (797dfef) makes the value stored at that moment permanent. A refresh (or a
get_or_set recompute) already computing when persist runs stores its new value when it
finishes, with its own ttl, as a ``SET`` after ``PERSIST`` does in Redis and as
django-redis' ``persist`` then ``set(timeout=)`` does: persist is not a mark that later
writes inherit. This pins that choice (Cache.persist's docstring says it)."""

from __future__ import annotations

import math
import threading
import uuid

import pytest

from statekit.cache import Cache

pytestmark = [pytest.mark.redis]


def test_a_refresh_in_flight_when_persist_runs_stores_with_its_own_ttl(redis_url: str) -> None:
    cache = Cache(redis_url, prefix="f" + uuid.uuid4().hex[:8])
    started, release = threading.Event(), threading.Event()
    results: list[str] = []
    version = iter(["v1", "v2"])

    @cache.cached(ttl=60, stale_ttl=30)
    def report() -> str:
        value = next(version)
        if value == "v2":
            started.set()
            assert release.wait(30), "the test never released the refresh"
        return value

    assert report() == "v1"
    key = report.key_for()
    worker = threading.Thread(target=lambda: results.append(report.refresh()))
    worker.start()
    try:
        assert started.wait(30), "the refresh never began computing"
        assert cache.persist(key) is True and cache.ttl(key) == math.inf
    finally:
        release.set()
        worker.join(30)
    assert not worker.is_alive() and results == ["v2"]
    assert cache.get(key) == "v2"  # the computed value replaces the persisted one
    left = cache.ttl(key)
    assert left is not None and 0 < left <= 60  # with the function's ttl, as a SET after PERSIST
    stored = cache._be().get_with_ttl(key).ttl_ms
    assert stored is not None and 60_000 < stored <= 90_000  # and its stale window
    cache.close()
