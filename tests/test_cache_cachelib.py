"""statekit.compat.cachelib.StatekitCache keeps cachelib's semantics."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from cachelib import BaseCache

from statekit.compat.cachelib import StatekitCache


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cl(request: pytest.FixtureRequest) -> StatekitCache:
    url = "memory://cachelib" if request.param == "memory" else request.getfixturevalue("redis_url")
    return StatekitCache(url, default_timeout=60, key_prefix="app/")


def test_is_a_cachelib_cache(cl: StatekitCache) -> None:
    assert isinstance(cl, BaseCache)


def test_timeouts(cl: StatekitCache) -> None:
    assert cl.set("forever", 1, timeout=0)
    assert cl.cache.ttl("app/forever") == math.inf
    assert cl.set("default", 1)
    left = cl.cache.ttl("app/default")
    assert left is not None and 0 < left <= 60
    assert cl.set("td", 1, timeout=dt.timedelta(seconds=5))
    td_left = cl.cache.ttl("app/td")
    assert td_left is not None and td_left <= 5
    assert cl.set("gone", 1, timeout=-1)
    assert cl.get("gone") is None


def test_api(cl: StatekitCache) -> None:
    assert cl.add("a", 1) and not cl.add("a", 2)
    assert cl.get("a") == 1
    assert cl.set_many({"b": 2, "c": [3]}) == ["b", "c"]
    assert cl.get_many("a", "b", "zz") == [1, 2, None]
    assert cl.get_dict("a", "c") == {"a": 1, "c": [3]}
    assert cl.has("a") and not cl.has("zz")
    assert cl.inc("n") == 1 and cl.inc("n", 5) == 6 and cl.dec("n") == 5
    assert cl.delete("a") and not cl.delete("a")
    assert cl.delete_many("b", "c") == ["b", "c"]
    assert cl.get_many("b", "c") == [None, None]
    cl.set("x", 1)
    assert cl.clear()
    assert cl.get("x") is None


def test_key_prefix_isolates(cl: StatekitCache) -> None:
    other: Any = StatekitCache(cl.cache.url, key_prefix="other/")
    cl.set("k", 1)
    assert other.get("k") is None
