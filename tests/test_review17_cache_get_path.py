"""The sync ``Cache.get`` on standalone Redis runs the read plan's first try itself (one
``MGET`` of the namespace's generation counter and the value, no generators; ~1 us of
CPU less a call) and hands a generation mismatch (a clear) to the plan: what it reads
and sends is unchanged. Pinned here on a real server: one command a hit, a clear made
elsewhere is seen at the next read (one more ``MGET``), a namespace cleared at every
read gives up after five ``MGET`` in all, as the plan did, and the reply errors keep
their types."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from statekit.cache import Cache
from statekit.errors import BackendUnavailable

pytestmark = pytest.mark.redis


@pytest.fixture
def cache(redis_url: str) -> Iterator[Cache]:
    c = Cache(redis_url, namespace=f"review17-get-{uuid.uuid4().hex}")
    yield c
    c.close()


def _sent(cache: Cache, before: Any = None) -> list[tuple[Any, ...]]:
    """Record the commands the cache's transport sends (calling *before* first)."""
    transport = cache._be().transport  # type: ignore[attr-defined]
    sent: list[tuple[Any, ...]] = []
    command = transport.command

    def recording(*args: Any) -> Any:
        sent.append(args)
        if before is not None:
            before(args)
        return command(*args)

    transport.command = recording
    return sent


def test_a_hit_is_one_mget_of_the_counter_and_the_value(cache: Cache) -> None:
    cache.set("k", {"a": 1})
    sent = _sent(cache)
    assert cache.get("k") == {"a": 1} and cache.get("missing", "d") == "d"
    gen_key = cache.base + "gen"
    assert [args[:2] for args in sent] == [(b"MGET", gen_key)] * 2
    assert sent[0][2] == cache.base + "0:k"
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_a_clear_elsewhere_is_seen_at_the_next_read(cache: Cache, redis_url: str) -> None:
    other = Cache(redis_url, namespace=cache.namespace_name)
    try:
        cache.set("k", "old")
        assert cache.get("k") == "old"
        other.clear()
        other.set("k", "new")
        sent = _sent(cache)
        assert cache.get("k") == "new"
        # the first MGET read the old generation's name and the new counter; the
        # second, the new generation's name
        assert [args[2] for args in sent] == [cache.base + "0:k", cache.base + "1:k"]
        sent.clear()
        assert cache.get("k") == "new" and len(sent) == 1
    finally:
        other.close()


def test_a_namespace_cleared_at_every_read_gives_up_after_five_reads(cache: Cache, redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    cache.set("k", "v")
    sent = _sent(cache, before=lambda args: raw.incr(cache.base + "gen"))
    with pytest.raises(BackendUnavailable, match="was cleared 5 times during one read"):
        cache.get("k")
    assert len(sent) == 5 and all(args[0] == b"MGET" for args in sent)
    assert cache.stats()["errors"] == 1
    raw.close()

