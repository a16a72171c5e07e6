"""Review 15 (security): the Django carry-over attacked through the cookie and the old
store. A pickle bomb a co-tenant of the old Redis plants under a cache-engine key of
its choosing, with the cookie naming it, never runs (opted in to plain-data pickle or
not); a db row is read only as Django's signing would (SECRET_KEY, then
SECRET_KEY_FALLBACKS); the signed-cookie engine, which needs neither store nor id, is
not an engine to carry over from."""

from __future__ import annotations

import os
import pickle
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import tests_django_urls
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_statekit.carryover import DjangoSessions
from django_statekit.sessions import get_core_store
from statekit.errors import ConfigError

pytestmark = pytest.mark.redis

MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware",
              "django.contrib.sessions.middleware.SessionMiddleware"]
OLD_KEY, NEW_KEY = "review15-django-old-secret-0123456789abcdef", "review15-django-new-secret-0123456789abc"


def v_session(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(request.session.items()))


tests_django_urls.urlpatterns += [path("review15/session", v_session)]


class _Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def _db() -> None:
    call_command("migrate", run_syncdb=True, verbosity=0)


def _get(cookie: str) -> Any:
    client = Client()
    client.cookies["sessionid"] = cookie
    return client.get("/review15/session").json()


@pytest.mark.parametrize("opt_in", [False, True], ids=["pickle-off", "pickle-on"])
@pytest.mark.parametrize("backend", ["django.core.cache.backends.redis.RedisCache",
                                     "django_redis.cache.RedisCache"],
                         ids=["django-redis-cache", "django-redis"])
def test_a_planted_pickle_bomb_never_runs(django_settings: Any, redis_url: str, tmp_path: Path,
                                          backend: str, opt_in: bool) -> None:
    old_url = redis_url.rsplit("/", 1)[0] + "/4"
    cookie = "planted" + uuid.uuid4().hex  # the attacker's choice: the cache engine's keys are the cookie
    marker = tmp_path / "pwned"
    old = redis.Redis.from_url(old_url)
    try:
        key = f":1:django.contrib.sessions.cache{cookie}"
        old.set(key, pickle.dumps({"_auth_user_id": "1", "x": _Bomb(marker)}))
        django_settings.set(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                                    "old": {"BACKEND": backend, "LOCATION": old_url}},
                            SESSION_CACHE_ALIAS="old", SESSION_ENGINE="django_statekit.sessions",
                            STATEKIT_SESSION_URL=redis_url, MIDDLEWARE=MIDDLEWARE,
                            STATEKIT_SESSION_CARRY_OVER="django.contrib.sessions.backends.cache",
                            STATEKIT_SESSION_CARRY_OVER_PICKLE=opt_in)
        store = get_core_store()
        refused = store.counters.get("carry_over_refused")
        assert _get(cookie) == {}
        assert not marker.exists()
        assert store.counters.get("carry_over_refused") == refused + 1
        assert old.exists(key)
    finally:
        old.delete(f":1:django.contrib.sessions.cache{cookie}")
        old.close()


@pytest.mark.parametrize("signed_with", [NEW_KEY, OLD_KEY, "another-site-secret-0123456789abcdefgh"])
def test_a_db_row_is_carried_over_under_the_key_or_a_fallback_only(django_settings: Any, redis_url: str,
                                                                   _db: None, signed_with: str) -> None:
    from django.contrib.sessions.backends.db import SessionStore as DbStore

    django_settings.set(SECRET_KEY=signed_with)
    old = DbStore()
    old["cart"] = ["apple"]
    old.create()
    cookie = old.session_key
    assert cookie
    django_settings.set(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY],
                        SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        MIDDLEWARE=MIDDLEWARE,
                        STATEKIT_SESSION_CARRY_OVER="django.contrib.sessions.backends.db")
    accepted = signed_with != "another-site-secret-0123456789abcdefgh"
    assert _get(cookie) == ({"cart": ["apple"]} if accepted else {})
    assert DbStore().exists(cookie) == (not accepted)  # carried over: deleted
    DbStore().delete(cookie)


def test_the_signed_cookie_engine_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="can be carried over from"):
        DjangoSessions("django.contrib.sessions.backends.signed_cookies")


_COMPRESSORS = {"zlib": "django_redis.compressors.zlib.ZlibCompressor",
                "gzip": "django_redis.compressors.gzip.GzipCompressor",
                "lzma": "django_redis.compressors.lzma.LzmaCompressor"}


def _compressed(kind: str, data: bytes) -> bytes:
    import gzip
    import lzma
    import zlib

    return {"zlib": zlib.compress, "gzip": gzip.compress, "lzma": lzma.compress}[kind](data)


def _django_redis_old(django_settings: Any, redis_url: str, kind: str, *, opt_in: bool) -> redis.Redis:
    old_url = redis_url.rsplit("/", 1)[0] + "/4"
    django_settings.set(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                                "old": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": old_url,
                                        "OPTIONS": {"COMPRESSOR": _COMPRESSORS[kind]}}},
                        SESSION_CACHE_ALIAS="old", SESSION_ENGINE="django_statekit.sessions",
                        STATEKIT_SESSION_URL=redis_url, MIDDLEWARE=MIDDLEWARE,
                        STATEKIT_SESSION_CARRY_OVER="django.contrib.sessions.backends.cache",
                        STATEKIT_SESSION_CARRY_OVER_PICKLE=opt_in)
    return redis.Redis.from_url(old_url)


@pytest.mark.parametrize("kind", list(_COMPRESSORS))
def test_a_decompression_bomb_under_an_old_key_is_refused_within_bounded_memory(
        django_settings: Any, redis_url: str, kind: str) -> None:
    """django-redis's compressors decompress without a limit: 130 KB of zlib under the
    key an attacker's cookie names were 128 MB in memory before anything looked at
    them (1 MB: 1 GB), on every request with that cookie, opted in to pickle or not.
    The old session is decompressed to MAX_SESSION_BYTES (1 MB) at most; beyond is a refusal."""
    cookie = "bomb" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _django_redis_old(django_settings, redis_url, kind, opt_in=False)
    try:
        old.set(key, _compressed(kind, bytes(128 * 2**20)))
        store = get_core_store()
        refused = store.counters.get("carry_over_refused")
        tracemalloc.start()
        try:
            assert _get(cookie) == {}
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert store.counters.get("carry_over_refused") == refused + 1
        assert peak < 64 * 2**20, peak
    finally:
        old.delete(key)
        old.close()


@pytest.mark.parametrize("kind", list(_COMPRESSORS))
def test_a_compressed_old_session_is_carried_over(django_settings: Any, redis_url: str, kind: str) -> None:
    cookie = "zipped" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = _django_redis_old(django_settings, redis_url, kind, opt_in=True)
    try:
        session = {"cart": ["apple"] * 100, "_auth_user_id": "1"}  # above every min_length: compressed
        old.set(key, _compressed(kind, pickle.dumps(session)))
        assert _get(cookie) == session
        assert not old.exists(key)
    finally:
        old.delete(key)
        old.close()


class AppPickleSerializer:
    """An app's own django-redis serializer (``OPTIONS["SERIALIZER"]``) that pickles,
    not django-redis's PickleSerializer: the carry-over cannot tell what it does."""

    def __init__(self, options: Any) -> None:
        pass

    def dumps(self, value: Any) -> bytes:
        return b"app" + pickle.dumps(value)

    def loads(self, value: bytes) -> Any:
        return pickle.loads(value[3:])  # noqa: S301 - the kind of serializer under test


@pytest.mark.parametrize("serializer", [f"{__name__}.AppPickleSerializer",
                                        "django_redis.serializers.json.JSONSerializer",
                                        "django_redis.serializers.msgpack.MSGPackSerializer"],
                         ids=["app-pickle", "json", "msgpack"])
def test_only_django_redis_own_serializers_are_read(django_settings: Any, redis_url: str,
                                                    tmp_path: Path, serializer: str) -> None:
    """django-redis's JSON and msgpack serializers are read by their own code; a
    serializer of another kind (here an app's own, pickling) is refused at start, as
    an unsupported cache is: the carry-over cannot know it does not unpickle. It read
    a bomb planted under the key the cookie names, and ran it."""
    from django_redis.serializers.json import JSONSerializer

    old_url = redis_url.rsplit("/", 1)[0] + "/4"
    marker = tmp_path / "pwned"
    cookie = "serialized" + uuid.uuid4().hex
    key = f":1:django.contrib.sessions.cache{cookie}"
    old = redis.Redis.from_url(old_url)
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
              "old": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": old_url,
                      "OPTIONS": {"SERIALIZER": serializer}}}
    try:
        if serializer.endswith("AppPickleSerializer"):
            old.set(key, AppPickleSerializer(None).dumps({"x": _Bomb(marker)}))
            django_settings.set(CACHES=caches)
            try:
                previous = DjangoSessions("django.contrib.sessions.backends.cache", cache_alias="old")
            except ConfigError as e:
                assert "AppPickleSerializer" in str(e)
            else:
                previous.read(cookie)
                pytest.fail(f"not refused at start; the planted pickle ran: {marker.exists()}")
            assert not marker.exists()
            return
        old.set(key, JSONSerializer(None).dumps({"cart": ["apple"]}) if serializer.endswith("JSONSerializer")
                else __import__("msgpack").packb({"cart": ["apple"]}))
        django_settings.set(CACHES=caches, SESSION_CACHE_ALIAS="old",
                            SESSION_ENGINE="django_statekit.sessions",
                            STATEKIT_SESSION_URL=redis_url, MIDDLEWARE=MIDDLEWARE,
                            STATEKIT_SESSION_CARRY_OVER="django.contrib.sessions.backends.cache")
        assert _get(cookie) == {"cart": ["apple"]}
    finally:
        old.delete(key)
        old.close()
