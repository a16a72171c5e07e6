"""Sessions carried over on first contact from Django's db, cached_db and cache engines
(Django's Redis cache and django-redis): after the switch the user is still logged
in, with the same cart, under a new statekit cookie."""

from __future__ import annotations

import logging
import pickle
import threading
from typing import Any

import pytest
import redis
import tests_django_urls
from django.contrib.auth import get_user_model, login
from django.contrib.sessions.models import Session as DbSession
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_statekit.sessions import get_core_store

pytestmark = pytest.mark.redis

DJANGO_MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
                     "django.contrib.auth.middleware.AuthenticationMiddleware"]
MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware", *DJANGO_MIDDLEWARE]
CART = ["apple", "pear"]


def v_login(request: HttpRequest, username: str) -> HttpResponse:
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    request.session["cart"] = CART
    return HttpResponse("ok")


def v_me(request: HttpRequest) -> HttpResponse:
    who = request.user.get_username() if request.user.is_authenticated else "anonymous"
    return JsonResponse({"user": who, "cart": request.session.get("cart")})


def v_data(request: HttpRequest) -> HttpResponse:
    """The session only: no database query (the test database lives in one thread)."""
    return JsonResponse({"auth": "_auth_user_id" in request.session, "cart": request.session.get("cart")})


tests_django_urls.urlpatterns += [
    path("carry/login/<str:username>", v_login),
    path("carry/me", v_me),
    path("carry/data", v_data),
]


@pytest.fixture(scope="module")
def _db() -> None:
    call_command("migrate", run_syncdb=True, verbosity=0)


def old_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


_REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"
OLD_ENGINES = {
    "db": ("django.contrib.sessions.backends.db", None),
    "cached_db": ("django.contrib.sessions.backends.cached_db", _REDIS_CACHE),
    "cache-django": ("django.contrib.sessions.backends.cache", _REDIS_CACHE),
    "cache-django-redis": ("django.contrib.sessions.backends.cache", "django_redis.cache.RedisCache"),
}


def before(django_settings: Any, redis_url: str, kind: str) -> str:
    """Configure the app as before the switch; returns the old engine."""
    engine, backend = OLD_ENGINES[kind]
    caches: dict[str, Any] = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    if backend:
        caches["old"] = {"BACKEND": backend, "LOCATION": old_url(redis_url)}
    django_settings.set(SESSION_ENGINE=engine, MIDDLEWARE=DJANGO_MIDDLEWARE, CACHES=caches,
                        SESSION_CACHE_ALIAS="old" if backend else "default")
    return engine


def switch(django_settings: Any, redis_url: str, engine: str | None, **extra: Any) -> None:
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        MIDDLEWARE=MIDDLEWARE, STATEKIT_SESSION_CARRY_OVER=engine, **extra)


def after(browser: Client) -> Client:
    """The same browser (its cookie jar) against the deployed new version (a test
    client loads its middleware, and so the session engine, once)."""
    client = Client()
    client.cookies = browser.cookies
    return client


def logged_in(kind: str) -> tuple[Client, str]:
    browser = Client()
    assert browser.get("/carry/login/alice").status_code == 200
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}
    return browser, browser.cookies["sessionid"].value


def old_exists(kind: str, redis_url: str, key: str) -> bool:
    if kind in ("db", "cached_db"):
        return DbSession.objects.filter(session_key=key).exists()
    return bool(redis.Redis.from_url(old_url(redis_url)).keys(f"*{key}"))


@pytest.mark.parametrize("kind", list(OLD_ENGINES))
def test_user_stays_logged_in_with_the_same_cart(django_settings: Any, redis_url: str, _db: None,
                                                  kind: str) -> None:
    engine = before(django_settings, redis_url, kind)
    browser, old = logged_in(kind)
    assert old_exists(kind, redis_url, old)
    # the cache engine's sessions are unsigned pickles: read with the opt-in only
    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_PICKLE=kind.startswith("cache"))
    browser = after(browser)
    carried = get_core_store().counters.get("carried_over")  # the store is shared by equal settings
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}
    new = browser.cookies["sessionid"].value
    store = get_core_store()
    assert new != old and store.unsign(new) is not None
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}  # the statekit session
    assert not old_exists(kind, redis_url, old)
    assert store.counters.get("carried_over") == carried + 1
    assert [i.user_id for i in store.list_user_sessions(str(get_user_model().objects.get(
        username="alice").pk))]


def test_old_session_left_to_expire(django_settings: Any, redis_url: str, _db: None) -> None:
    engine = before(django_settings, redis_url, "db")
    browser, old = logged_in("db")
    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_DELETE=False)
    browser = after(browser)
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}
    assert old_exists("db", redis_url, old)


@pytest.mark.parametrize("kind", ["db", "cache-django"])
def test_tampered_old_cookie_is_refused(django_settings: Any, redis_url: str, _db: None, kind: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    engine = before(django_settings, redis_url, kind)
    _, old = logged_in(kind)
    switch(django_settings, redis_url, engine)
    carried = get_core_store().counters.get("carried_over")  # the store is shared by equal settings
    tampered = Client()
    tampered.cookies["sessionid"] = old[:-1] + ("a" if old[-1] != "a" else "b")
    get_core_store()._reject_log.clear()  # one line a kind a minute: another test's may have used it
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert tampered.get("/carry/me").json() == {"user": "anonymous", "cart": None}
    assert "rejected session cookie" in caplog.text
    assert old_exists(kind, redis_url, old)
    assert get_core_store().counters.get("carried_over") == carried


def test_tampered_old_db_row_is_refused(django_settings: Any, redis_url: str, _db: None) -> None:
    """The db engine's data is signed: a row changed behind Django's back (here: its
    signed payload altered) is not carried over."""
    engine = before(django_settings, redis_url, "db")
    browser, old = logged_in("db")
    row = DbSession.objects.get(session_key=old)
    row.session_data = row.session_data[:-3] + ("abc" if not row.session_data.endswith("abc") else "xyz")
    row.save()
    switch(django_settings, redis_url, engine)
    browser = after(browser)
    carried = get_core_store().counters.get("carried_over")  # the store is shared by equal settings
    assert browser.get("/carry/me").json() == {"user": "anonymous", "cart": None}
    assert get_core_store().counters.get("carried_over") == carried


class _Evil:
    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('pickle ran code')",))


def test_cache_pickle_naming_code_is_refused(django_settings: Any, redis_url: str, _db: None) -> None:
    """The cache engine's pickle is unsigned: opted in, read as plain data only."""
    engine = before(django_settings, redis_url, "cache-django")
    browser, old = logged_in("cache-django")
    r = redis.Redis.from_url(old_url(redis_url))
    (key,) = r.keys(f"*{old}")
    r.set(key, pickle.dumps({"_auth_user_id": "1", "x": _Evil()}))
    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_PICKLE=True)
    browser = after(browser)
    assert browser.get("/carry/me").json() == {"user": "anonymous", "cart": None}
    assert r.exists(key)


@pytest.mark.parametrize("kind", ["cache-django", "cache-django-redis"])
def test_cache_pickle_needs_the_opt_in(django_settings: Any, redis_url: str, _db: None, kind: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The cache engine's session (plain data, pickled): without
    ``STATEKIT_SESSION_CARRY_OVER_PICKLE`` it is refused like an unknown format (a
    fresh session, counted, logged once naming the setting, the old entry kept); with
    it the same browser is carried over."""
    engine = before(django_settings, redis_url, kind)
    browser, old = logged_in(kind)
    switch(django_settings, redis_url, engine)
    store = get_core_store()
    refused, carried = store.counters.get("carry_over_refused"), store.counters.get("carried_over")
    refused_browser = Client()
    refused_browser.cookies["sessionid"] = old
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        assert refused_browser.get("/carry/me").json() == {"user": "anonymous", "cart": None}
    assert store.counters.get("carry_over_refused") == refused + 1
    assert store.counters.get("carried_over") == carried
    refusals = [r for r in caplog.records if r.name == "statekit.security"]
    assert len(refusals) == 1 and "STATEKIT_SESSION_CARRY_OVER_PICKLE" in refusals[0].getMessage()
    assert old_exists(kind, redis_url, old)
    assert refused_browser.cookies["sessionid"].value in ("", old)  # no new cookie: a fresh, empty session

    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_PICKLE=True)
    store = get_core_store()
    carried = store.counters.get("carried_over")
    browser = after(browser)
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}
    assert browser.cookies["sessionid"].value != old
    assert store.counters.get("carried_over") == carried + 1
    assert not old_exists(kind, redis_url, old)


def test_concurrent_first_requests_end_in_one_session(django_settings: Any, redis_url: str,
                                                      _db: None) -> None:
    """Two requests with the same old cookie, both past the old-store read before
    either stores anything: both end in the same statekit session (same cookie)."""
    engine = before(django_settings, redis_url, "cache-django")
    _, old = logged_in("cache-django")
    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_PICKLE=True)
    carried = get_core_store().counters.get("carried_over")  # the store is shared by equal settings
    carry = get_core_store().carry_over
    assert carry is not None
    both_read = threading.Barrier(2, timeout=30)
    read = carry.previous.read

    def read_together(cookie: str) -> Any:
        data = read(cookie)
        both_read.wait()
        return data

    carry.previous.read = read_together  # type: ignore[method-assign]
    try:
        clients = [Client(), Client()]
        for c in clients:
            c.cookies["sessionid"] = old
        results: list[Any] = [None, None]

        def run(i: int) -> None:
            results[i] = clients[i].get("/carry/data")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        carry.previous.read = read  # type: ignore[method-assign]
    assert [r.json() for r in results] == [{"auth": True, "cart": CART}] * 2
    cookies = {c.cookies["sessionid"].value for c in clients}
    assert len(cookies) == 1 and old not in cookies
    assert get_core_store().counters.get("carried_over") == carried + 1


def test_switched_off_an_old_cookie_is_an_unknown_cookie(django_settings: Any, redis_url: str,
                                                         _db: None) -> None:
    before(django_settings, redis_url, "db")
    browser, _ = logged_in("db")
    switch(django_settings, redis_url, None)
    browser = after(browser)
    assert browser.get("/carry/me").json() == {"user": "anonymous", "cart": None}


def test_an_old_database_that_cannot_be_read_is_a_503_with_the_cookie_kept(
        django_settings: Any, redis_url: str, _db: None) -> None:
    """The db engine's table unusable at the first contact (here: renamed away; a
    database down is an OperationalError too): the outage's 503 with Retry-After, the
    old cookie kept and nothing carried; once the database is back the same browser
    is carried over. Before: a 500 (Django's engine lets the error out)."""
    from django.db import connection

    engine = before(django_settings, redis_url, "db")
    browser, old = logged_in("db")
    switch(django_settings, redis_url, engine)
    browser = after(browser)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_session RENAME TO django_session_away")
    try:
        response = browser.get("/carry/data")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert browser.cookies["sessionid"].value == old
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE django_session_away RENAME TO django_session")
    assert browser.get("/carry/data").json() == {"auth": True, "cart": CART}
    assert browser.cookies["sessionid"].value != old
