"""The module-level default cache (``from statekit import cache; cache.get(...)``),
metrics export, and thread safety of one Cache shared by many threads."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

import statekit.cache as cache_module
from statekit.cache import Cache
from statekit.errors import ConfigError
from statekit.pytest_plugin import run_threads


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cache_module, "_default", None)
    yield
    monkeypatch.setattr(cache_module, "_default", None)


def test_importing_connects_to_nothing() -> None:
    code = ("import sys; import statekit.cache; from statekit import cache; "
            "print(cache.Cache.__name__, 'redis' in sys.modules, 'socket' in sys.modules and "
            "any(t.name.startswith('statekit') for t in __import__('threading').enumerate()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "STATEKIT_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.stdout.split() == ["Cache", "False", "False"]


def test_default_cache_from_env(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKIT_CACHE_URL", "memory://default-cache")
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", "envprefix")
    from statekit import cache

    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    assert cache.get_default().base == "envprefix:{default}:"

    @cache.cached(ttl=10)
    def f(x: int) -> int:
        return x * 2

    assert f(2) == 4
    assert "get" in dir(cache)
    with pytest.raises(AttributeError):
        cache.no_such_thing  # noqa: B018


def test_default_cache_unconfigured(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKIT_CACHE_URL", raising=False)
    monkeypatch.delenv("STATEKIT_REDIS_URL", raising=False)
    from statekit import cache

    with pytest.raises(ConfigError, match="STATEKIT_CACHE_URL or STATEKIT_REDIS_URL"):
        cache.get("k")


def test_configure(fresh_default: None) -> None:
    configured = cache_module.configure("memory://configured", default_ttl=5)
    assert cache_module.get_default() is configured
    cache_module.set("a", 1)
    assert configured.get("a") == 1


def test_bad_options() -> None:
    with pytest.raises(ConfigError):
        Cache("s3://bucket")
    with pytest.raises(ConfigError):
        Cache("memory://", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Cache("memory://", namespace="has{brace}")
    with pytest.raises(ConfigError):
        Cache("redis://127.0.0.1:1/0", prefix="bad prefix").get("k")


def test_prometheus_export() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from statekit.metrics import register_prometheus

    c = Cache("memory://prom", prefix="promtest")
    c.get("missing")
    c.set("k", 1)
    c.get("k")
    registry = CollectorRegistry()
    register_prometheus(registry)
    text = generate_latest(registry).decode()
    assert 'statekit_cache_hits_total{instance="promtest:default"} 1.0' in text
    assert 'statekit_cache_misses_total{instance="promtest:default"} 1.0' in text


@pytest.mark.redis
def test_one_cache_many_threads(redis_url: str) -> None:
    c = Cache(redis_url)

    def work(i: int) -> None:
        for j in range(100):
            c.incr("counter")
            c.set(f"t{i}", j)
            assert c.get(f"t{i}") == j
            assert c.get_many([f"t{i}", "counter"])[f"t{i}"] == j

    run_threads(work, 8)  # raises the first error a thread hit
    assert c.get("counter") == 800


def test_the_default_cache_hands_on_every_public_method(fresh_default: None, redis_url: str) -> None:
    """``statekit.cache.NAME`` reaches the default cache for every public method of
    :class:`Cache` but its configuration and ``close`` (``persist`` and ``replace``,
    added later, raised AttributeError: a newcomer's trial)."""
    import math

    from statekit import cache

    public = {n for n in dir(Cache) if not n.startswith("_")}
    assert public - cache_module._PROXIED == {"base", "close", "prefix"}
    cache.configure(redis_url, namespace="default-proxy")
    try:
        cache.get_or_set("report", lambda: {"rows": 3}, ttl=30)
        assert cache.persist("report") is True and cache.ttl("report") == math.inf
        cache.set("x", 1, ttl=30)
        assert cache.replace("x", 2) is True and cache.get("x") == 2
    finally:
        cache.get_default().close()
