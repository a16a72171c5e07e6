"""Review (issues 17/18): an entry the cache cannot decode is a miss, counted and
logged (``Cache._entry``), whatever is wrong with it: here a deeply nested plain-JSON
payload, which the C scanner fast path (``_CacheCore._loads``) lets out as a raw
RecursionError where the codec itself says SerializationError."""

from __future__ import annotations

import pytest
import redis

from statekit.cache import Cache

pytestmark = pytest.mark.redis


def test_a_deeply_nested_entry_is_a_miss(redis_url: str) -> None:
    cache = Cache(redis_url, namespace="review10-deep")
    try:
        cache.set("k", [1])
        with redis.Redis.from_url(redis_url) as raw:
            names = [n for n in raw.scan_iter(match="*review10-deep*k") if not n.endswith(b"gen")]
            assert len(names) == 1, names
            raw.set(names[0], b"\x01" + b"[" * 100_000 + b"]" * 100_000)
        assert cache.get("k", "default") == "default"
        assert cache.counters.get("undecodable") == 1
    finally:
        cache.close()
