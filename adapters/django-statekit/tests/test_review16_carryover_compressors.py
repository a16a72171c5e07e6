"""Review 16: django-redis's lz4 and zstd compressors under the carry-over. Like its
zlib, gzip and lzma ones (test_review15_carryover_django), their ``decompress`` has no
limit: a value of a few KB under the key an attacker's cookie names is a session of
100 MB or more. The carry-over decompresses an old session to MAX_SESSION_BYTES (1 MB)
at most, with bounded memory and time, and still carries over what django-redis wrote."""

from __future__ import annotations

import pickle
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import tests_django_urls
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_statekit.sessions import get_core_store
from statekit.sessions.carryover import MAX_SESSION_BYTES

pytestmark = pytest.mark.redis

MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware",
              "django.contrib.sessions.middleware.SessionMiddleware"]

_COMPRESSORS = {"lz4": "django_redis.compressors.lz4.Lz4Compressor",
                "zstd": "django_redis.compressors.zstd.ZStdCompressor"}
_SERIALIZERS = {"pickle": "django_redis.serializers.pickle.PickleSerializer",
                "json": "django_redis.serializers.json.JSONSerializer"}


def v_session(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(request.session.items()))


tests_django_urls.urlpatterns += [path("review16/session", v_session)]


def _compressed(kind: str, data: bytes) -> bytes:
    """*data* as django-redis's compressor *kind* writes it (lz4: lz4.frame; zstd: pyzstd)."""
    from django_redis.compressors.lz4 import Lz4Compressor  # type: ignore[import-untyped]
    from django_redis.compressors.zstd import ZStdCompressor  # type: ignore[import-untyped]

    compressor = {"lz4": Lz4Compressor, "zstd": ZStdCompressor}[kind]({})
    out: bytes = compressor.compress(data)
    assert out != data  # compressed: above min_length
    return out


def _django_redis_old(django_settings: Any, redis_url: str, kind: str, serializer: str) -> redis.Redis:
    old_url = redis_url.rsplit("/", 1)[0] + "/4"
    django_settings.set(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                                "old": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": old_url,
                                        "OPTIONS": {"COMPRESSOR": _COMPRESSORS[kind],
                                                    "SERIALIZER": _SERIALIZERS[serializer]}}},
                        SESSION_CACHE_ALIAS="old", SESSION_ENGINE="django_statekit.sessions",
                        STATEKIT_SESSION_URL=redis_url, MIDDLEWARE=MIDDLEWARE,
                        STATEKIT_SESSION_CARRY_OVER="django.contrib.sessions.backends.cache",
                        STATEKIT_SESSION_CARRY_OVER_PICKLE=serializer == "pickle")
    return redis.Redis.from_url(old_url)


def _get(cookie: str) -> Any:
    client = Client()
    client.cookies["sessionid"] = cookie
    return client.get("/review16/session").json()


def _padded(dumps: Any, size: int) -> dict[str, Any]:
    """A session *dumps* writes in exactly *size* bytes."""
    data, n = {"_auth_user_id": "1", "pad": ""}, 0
    for _ in range(4):  # a pickle's string and frame headers grow with the string
        n += size - len(dumps(data))
        data["pad"] = "x" * n
        if len(dumps(data)) == size:
            return data
    raise AssertionError(f"no session of {size} bytes")


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_rss_reset() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM, by ``5`` to clear_refs); False if it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    """This process's peak RSS since the last reset, in bytes (VmHWM)."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.parametrize("serializer", list(_SERIALIZERS))
@pytest.mark.parametrize("kind", list(_COMPRESSORS))
def test_a_decompression_bomb_is_refused_quickly_within_bounded_memory(
        django_settings: Any, redis_url: str, kind: str, serializer: str) -> None:
    """100 MB of zeros, compressed (lz4: 420 KB, zstd: 3 KB: both under the 1 MB a
    stored value may have), under the key the cookie names: a fresh session counted in
    carry_over_refused. django-redis's own decompress made the 100 MB before anything
    looked at them; now at most MAX_SESSION_BYTES + 1 are decompressed."""
    cookie = "bomb" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _django_redis_old(django_settings, redis_url, kind, serializer)
    try:
        bomb = _compressed(kind, bytes(100 * 2**20))
        assert len(bomb) < MAX_SESSION_BYTES
        old.set(key, bomb)
        del bomb
        store = get_core_store()
        refused = store.counters.get("carry_over_refused")
        rss_measured = _peak_rss_reset()
        rss_before = _peak_rss() if rss_measured else 0
        tracemalloc.start()
        try:
            t0 = time.monotonic()
            assert _get(cookie) == {}
            elapsed = time.monotonic() - t0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert store.counters.get("carry_over_refused") == refused + 1
        assert peak < 16 * 2**20, f"{peak} bytes allocated at the peak"
        if rss_measured:
            grown = _peak_rss() - rss_before
            assert grown < 48 * 2**20, f"the peak RSS grew by {grown} bytes"
        assert elapsed < 5, f"{elapsed:.2f} s"  # a few ms here; generous for a loaded machine
        assert old.exists(key)  # refused: not deleted
    finally:
        old.delete(key)
        old.close()


@pytest.mark.parametrize("serializer", list(_SERIALIZERS))
@pytest.mark.parametrize("kind", list(_COMPRESSORS))
def test_a_compressed_old_session_is_carried_over(django_settings: Any, redis_url: str, kind: str,
                                                  serializer: str) -> None:
    """What django-redis wrote with the compressor is carried over, up to 1 MB decompressed."""
    from django_redis.serializers.json import JSONSerializer

    old = _django_redis_old(django_settings, redis_url, kind, serializer)
    keys = []
    try:
        session = {"cart": ["apple"] * 100, "_auth_user_id": "1"}
        dumps = pickle.dumps if serializer == "pickle" else JSONSerializer({}).dumps
        for data in (session, _padded(dumps, MAX_SESSION_BYTES)):
            cookie = "zipped" + uuid.uuid4().hex  # one a session: a carried-over cookie is spent
            keys.append(key := f":1:django.contrib.sessions.cache{cookie}")
            old.set(key, _compressed(kind, dumps(data)))
            assert _get(cookie) == data
            assert not old.exists(key)
    finally:
        old.delete(*keys)
        old.close()


@pytest.mark.parametrize("kind", list(_COMPRESSORS))
def test_one_byte_over_the_bound_is_refused(django_settings: Any, redis_url: str, kind: str) -> None:
    """A session of MAX_SESSION_BYTES + 1 decompressed is refused, like one stored so."""
    cookie = "over" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _django_redis_old(django_settings, redis_url, kind, "pickle")
    try:
        data = _padded(pickle.dumps, MAX_SESSION_BYTES + 1)
        old.set(key, _compressed(kind, pickle.dumps(data)))
        store = get_core_store()
        refused = store.counters.get("carry_over_refused")
        assert _get(cookie) == {}
        assert store.counters.get("carry_over_refused") == refused + 1
        assert old.exists(key)
    finally:
        old.delete(key)
        old.close()
