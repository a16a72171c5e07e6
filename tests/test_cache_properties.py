"""Property tests: any key and any value the codec accepts round-trip; distinct keys
never collide; argument keys of cached functions are stable."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekit.cache import Cache
from statekit.embedded import RedisServer

keys = st.text(min_size=1, max_size=200).filter(lambda k: len(k) <= 1024)
scalars = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | \
    st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=50)
values = st.recursive(scalars, lambda children: st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=10), children, max_size=5)
                      | st.tuples(children, children), max_leaves=20)


@pytest.fixture(scope="module")
def caches(redis_server: RedisServer) -> dict[str, Cache]:
    if not redis_server.running:
        redis_server.start()
    return {"memory": Cache("memory://props", namespace="props"),
            "redis": Cache(redis_server.url, namespace="props")}


@pytest.mark.redis
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, value=values)
def test_any_key_any_value_roundtrips(caches: dict[str, Cache], key: str, value: Any) -> None:
    for cache in caches.values():
        cache.set(key, value)
        got = cache.get(key, "<missing>")
        assert got == value and type(got) is type(value)
        assert cache.get_many([key]) == {key: value}


@pytest.mark.redis
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=keys, b=keys)
def test_distinct_keys_do_not_collide(caches: dict[str, Cache], a: str, b: str) -> None:
    for cache in caches.values():
        cache.set(a, "a")
        cache.set(b, "b")
        assert cache.get(a) == ("b" if a == b else "a")
        assert cache.get(b) == "b"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=values, y=st.integers())
def test_cached_keys_are_stable(x: Any, y: int) -> None:
    cache = Cache("memory://props-keys")

    @cache.cached(ttl=10)
    def f(x: Any, y: int = 0) -> None:
        return None

    assert f.key_for(x, y) == f.key_for(x, y=y) == f.key_for(x=x, y=y)
    assert f.key_for(x, y) != f.key_for(x, y + 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_fast_encode_writes_the_codecs_bytes(value: Any) -> None:
    from statekit.serializers import JSONSerializer

    cache = Cache("memory://props-encode")
    assert cache._dumps(value) == JSONSerializer().dumps(value)


def test_cached_keys_are_the_same_in_every_process() -> None:
    """Set iteration order depends on the process's string hash seed: the key of a
    call with a set argument must not, or processes never share the entry."""
    import subprocess
    import sys

    code = ("from statekit.cache import Cache\n"
            "f = Cache('memory://seed').cached(ttl=10)(lambda s, d: None)\n"
            "words = [f'w{i}' for i in range(20)]\n"
            "print(f.key_for(set(words), {frozenset(words[:5]): 1, frozenset(words[5:]): 2}))\n")
    keys = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                           capture_output=True, text=True, check=True, timeout=60).stdout
            for seed in range(4)}
    assert len(keys) == 1, keys
