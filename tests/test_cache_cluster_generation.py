"""The namespace generation beside the Cluster work (issue 19): on standalone,
Sentinel and memory:// every operation still checks the generation in the same
atomic step (the cache script answers STALEGEN, nothing applied, and the call is
repeated), so a cache object that has not seen another object's clear() reads and
writes the current generation at once; the key layout there is unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from statekit.cache import Cache


def _exact(url: str) -> Any:
    a, b = Cache(url, prefix="sg"), Cache(url, prefix="sg")
    b.set("k", 1)
    assert a.get("k") == 1
    a.clear()  # b has not seen it: its next write is refused once, then made in the new generation
    b.set("k", 2)
    assert a.get("k") == 2
    a.clear()
    assert b.incr("n") == 1 and a.get("n") == 1
    a.clear()
    assert b.add("x", 5) and a.get("x") == 5
    a.clear()
    b.set_many({"p": 1, "q": 2})
    assert a.get_many(["p", "q"]) == {"p": 1, "q": 2}
    a.clear()
    assert b.get_many(["p"]) == {} and b.get("k") is None and b.ttl("x") is None
    return b


def test_memory_checks_the_generation_in_the_same_step() -> None:
    _exact("memory://generation")


@pytest.mark.redis
def test_redis_checks_the_generation_in_the_same_step(redis_line_url: str, redis_line_server: Any) -> None:
    b = _exact(redis_line_url)
    b.set("layout", 1)
    with redis_line_server.client() as r:  # the single-slot layout, as before issue 19
        assert r.get("sg:{default}:gen") == b"5" and r.get("sg:{default}:5:layout") == b"1"
