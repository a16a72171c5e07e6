"""A cache heals itself: an entry it cannot decode (another codec wrote it, a
signature fails, the bytes are truncated) is a miss on every read path, counted and
logged once, and get_or_set / cached() replace it. Run on memory:// and the real
Redis, with and without the near cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from statekit import cache as cache_module
from statekit.cache import Cache

Make = Callable[..., Cache]


@pytest.fixture(params=["memory", "redis", "redis-near"])
def make(request: pytest.FixtureRequest) -> Make:
    if request.param == "memory":
        return lambda **kw: Cache("memory://decode", prefix="dec", **kw)
    url = request.getfixturevalue("redis_url")
    if request.param == "redis":
        return lambda **kw: Cache(url, prefix="dec", **kw)

    def near(**kw: Any) -> Cache:
        c = Cache(url, prefix="dec", near_cache=True, **kw)
        assert c.near_ready(10)  # reads go through the near cache's path
        return c

    return near


@pytest.fixture(autouse=True)
def _fresh_log_memory() -> None:
    cache_module._logged.clear()


def _raw(c: Cache) -> Any:
    """The backend under *c* (bytes in, bytes out, no codec)."""
    return c._be()


def test_other_codec_is_a_miss_everywhere(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("msgpack")
    old = make(serializer="msgpack")
    old.set("page", {"title": "old deploy"})
    old.get_or_set("env", lambda: ["computed", "by", "old"])
    old.set("n", 5)  # integers are raw: every codec reads them
    new = make()
    with caplog.at_level(logging.WARNING, logger="statekit.cache"):
        assert new.get("page", "dflt") == "dflt"
        assert new.get("page") is None
        assert new.get("env", "dflt") == "dflt"
        assert new.get_many(["page", "env", "n"]) == {"n": 5}
        assert new.has("n")
    assert new.stats()["undecodable"] == 5
    assert new.stats()["misses"] >= 4
    warnings = [r for r in caplog.records if r.name == "statekit.cache"]
    assert len(warnings) == 2  # once per key, not once per read
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "dec:{default}:page" in warnings[0].getMessage()
    assert "json codec" in warnings[0].getMessage()


def test_get_or_set_and_cached_recompute_and_overwrite(make: Make) -> None:
    pytest.importorskip("msgpack")
    old = make(serializer="msgpack")
    new = make()
    calls: list[int] = []

    @new.cached(ttl=60, key="report")
    def report(n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n}

    old.set(report.key_for(1), {"stale": "codec"})
    old.set("plain", [1, 2])
    old.set("fixed", [3])
    assert new.get_or_set("plain", lambda: ["fresh"]) == ["fresh"]
    assert report(1) == {"n": 1} and calls == [1]
    assert new.get_or_set("fixed", ["constant"]) == ["constant"]  # a non-callable default too
    # healed: the new codec reads its own entries now, without recomputing
    assert new.get("plain") == ["fresh"]
    assert report(1) == {"n": 1} and calls == [1]
    assert new.get("fixed") == ["constant"]
    assert new.get_or_set("plain", lambda: ["again"]) == ["fresh"]
    # one per undecodable read: the recompute's re-read under its lock is not one; a
    # non-callable default reads before and after its refused add (two)
    assert new.stats()["undecodable"] == 4
    assert new.stats()["recomputes"] == 2


def test_tampered_signed_pickle_is_a_miss(make: Make) -> None:
    signed = make(serializer="signed-pickle", secret_keys="k1")
    signed.set("obj", {"x": 1})
    signed.get_or_set("env", lambda: {"y": 2})
    be = _raw(signed)
    for key in ("obj", "env"):
        data = bytearray(be.get(key))
        data[-1] ^= 0x01  # flip one bit of the pickle: the HMAC no longer matches
        be.set(key, bytes(data), None)
    assert signed.get("obj", "dflt") == "dflt"
    assert signed.get_many(["obj", "env"]) == {}
    assert signed.get_or_set("env", lambda: {"y": 3}) == {"y": 3}
    assert signed.get("env") == {"y": 3}
    # a rotated key without the old one in the list: same outcome
    rotated = make(serializer="signed-pickle", secret_keys="k2")
    signed.set("obj", {"x": 1})
    assert rotated.get("obj", "dflt") == "dflt"
    assert rotated.stats()["undecodable"] == 1


@pytest.mark.parametrize("payload", [b"", b"\x02short", b"\x01", b"\x02" + b"\x00" * 16, b"\x01\xff{"])
def test_truncated_or_headerless_bytes(make: Make, payload: bytes) -> None:
    c = make()
    _raw(c).set("cut", payload, None)
    assert c.get("cut", "dflt") == "dflt"
    assert c.get_many(["cut"]) == {}
    if payload[:1] == b"\x02":  # ttl reads the envelope's header: a truncated one is missing
        assert c.ttl("cut") is None and not c.has("cut")
    assert c.get_or_set("cut", lambda: "whole") == "whole"
    assert c.get("cut") == "whole"
    assert c.stats()["undecodable"] >= 2


def test_log_once_per_key_per_process(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("msgpack")
    old, new = make(serializer="msgpack"), make()
    old.set("a", "x")
    old.set("b", "x")
    with caplog.at_level(logging.WARNING, logger="statekit.cache"):
        for _ in range(5):
            new.get("a")
            new.get("b")
        make().get("a")  # another Cache object in the same process: still logged once
    logged = [r.getMessage() for r in caplog.records if r.name == "statekit.cache"]
    assert len(logged) == 2
    assert new.stats()["undecodable"] == 10


def test_prometheus_counter(make: Make) -> None:
    prom = pytest.importorskip("prometheus_client")
    from statekit.metrics import register_prometheus

    registry = prom.CollectorRegistry()
    register_prometheus(registry)
    c = make(namespace="promdecode")
    _raw(c).set("bad", b"\x01\xff", None)
    c.get("bad")
    value = registry.get_sample_value("statekit_cache_undecodable_total",
                                      {"instance": "dec:promdecode"})
    assert value == 1
