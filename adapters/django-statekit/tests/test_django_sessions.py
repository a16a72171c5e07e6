"""Django session engine (django_statekit.sessions) and the outage middleware."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis
import tests_django_urls
from django.contrib.auth import get_user_model, login, logout
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from django_statekit.sessions import SessionStore, get_core_store
from statekit.embedded import RedisServer
from statekit.errors import ConfigError
from statekit.pytest_plugin import redis_command_calls, wait_for
from statekit.testing import tampered

pytestmark = pytest.mark.redis

MIDDLEWARE = [
    "django_statekit.middleware.SessionOutageMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def v_get(request: HttpRequest) -> HttpResponse:
    return JsonResponse({k: v for k, v in request.session.items() if not k.startswith("_auth")})


def v_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    request.session[key] = value
    return HttpResponse("ok")


def v_incr(request: HttpRequest, key: str) -> HttpResponse:
    return HttpResponse(str(request.session.incr(key)))  # type: ignore[attr-defined]


def v_login(request: HttpRequest, username: str) -> HttpResponse:
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponse("ok")


def v_logout(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("ok")


def v_whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.user.get_username() if request.user.is_authenticated else "anonymous")


tests_django_urls.urlpatterns += [
    path("sessions/get", v_get),
    path("sessions/set/<str:key>/<str:value>", v_set),
    path("sessions/incr/<str:key>", v_incr),
    path("sessions/login/<str:username>", v_login),
    path("sessions/whoami", v_whoami),
    path("sessions/logout", v_logout),
]


@pytest.fixture(scope="module")
def _db() -> None:
    call_command("migrate", run_syncdb=True, verbosity=0)


def configure(django_settings: Any, url: str, **extra: Any) -> None:
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=url,
                        MIDDLEWARE=MIDDLEWARE, **extra)


@pytest.fixture
def engine(django_settings: Any, redis_url: str) -> str:
    configure(django_settings, redis_url)
    return redis_url


def calls(r: redis.Redis) -> int:
    return sum(redis_command_calls(r).values())


def test_is_a_full_session_base(engine: str) -> None:
    s = SessionStore()
    assert isinstance(s, SessionBase)
    s["a"] = 1
    s.set_expiry(600)
    s.save()
    key = s.session_key
    assert key and s.exists(key)
    again = SessionStore(key)
    assert again["a"] == 1 and again.get_expiry_age() == 600
    again.cycle_key()
    assert again.session_key != key and again["a"] == 1
    again.save()
    assert SessionStore(again.session_key)["a"] == 1
    again.flush()
    assert again.session_key is None and not SessionStore.exists(again, str(key))
    assert SessionStore.clear_expired() is None


def test_set_expiry_sets_redis_ttl(engine: str) -> None:
    s = SessionStore()
    s["a"] = 1
    s.set_expiry(300)
    s.save()
    r = redis.Redis.from_url(engine)
    core = get_core_store()
    sid = core.unsign(s.session_key)
    assert sid is not None
    assert 0 < r.pttl(core._key(sid)) <= 300_000


def test_concurrent_saves_keep_both_keys(engine: str) -> None:
    s = SessionStore()
    s["base"] = 0
    s.save()
    a, b = SessionStore(s.session_key), SessionStore(s.session_key)
    a["a"], b["b"] = 1, 2
    a.save()
    b.save()
    assert dict(SessionStore(s.session_key).items()) == {"base": 0, "a": 1, "b": 2}


def test_flushed_session_is_not_resurrected(engine: str) -> None:
    s = SessionStore()
    s["a"] = 1
    s.save()
    inflight = SessionStore(s.session_key)
    inflight["a"]  # noqa: B018 - load before the flush
    s.flush()
    inflight["b"] = 2
    with pytest.raises(UpdateError):
        inflight.save()


def test_client_set_get_and_cookie(engine: str) -> None:
    c = Client()
    resp = c.get("/sessions/set/color/blue")
    morsel = resp.cookies["sessionid"]
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax"
    assert c.get("/sessions/get").json() == {"color": "blue"}
    assert c.get("/sessions/incr/n").content == b"1"
    assert c.get("/sessions/incr/n").content == b"2"


def test_cookie_not_secure_in_debug(engine: str, django_settings: Any) -> None:
    django_settings.set(DEBUG=True)
    morsel = Client().get("/sessions/set/color/blue").cookies["sessionid"]
    assert not morsel["secure"] and morsel["httponly"]


def test_unmodified_request_is_one_redis_call(engine: str) -> None:
    c = Client()
    c.get("/sessions/set/a/1")
    c.get("/sessions/get")
    r = redis.Redis.from_url(engine)
    r.config_resetstat()
    resp = c.get("/sessions/get")
    assert resp.json() == {"a": "1"} and "sessionid" not in resp.cookies
    assert calls(r) == 1


@pytest.mark.parametrize("mangle", ["tampered", "truncated", "foreign", "oversized"])
def test_bad_cookies_fresh_session_no_redis(engine: str, mangle: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    c = Client()
    c.get("/sessions/set/secret/x")
    good = c.cookies["sessionid"].value
    foreign = get_core_store().__class__("memory://", secret_keys=["not-our-key"])
    c.cookies["sessionid"] = {
        "tampered": tampered(good),
        "truncated": good[:30],
        "foreign": foreign.sign(foreign.new().sid),
        "oversized": good * 10,
    }[mangle]
    r = redis.Redis.from_url(engine)
    r.config_resetstat()
    get_core_store()._reject_log.clear()  # one line per kind per minute: the other cases logged theirs
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        resp = c.get("/sessions/get")
    assert resp.json() == {} and calls(r) == 0
    assert "rejected session cookie" in caplog.text


def test_any_key_of_eight_characters_is_a_session_key(engine: str) -> None:
    """Django's contract (``test_session_key_valid_string_saved``): a key of 8 or more
    characters is kept as the ``session_key``. Unsigned, it names no session: it
    loads empty without a Redis call and is replaced by a signed key on save."""
    r = redis.Redis.from_url(engine)
    s = SessionStore("12345678")
    assert s.session_key == "12345678"
    assert SessionStore("1234567").session_key is None
    r.config_resetstat()
    assert s.get("a") is None and calls(r) == 0
    assert s.session_key is None  # dropped at load, as Django's engines drop an unknown key
    s["a"] = 1
    s.save()
    assert s.session_key and s.session_key != "12345678" and SessionStore(s.session_key)["a"] == 1


def test_login_cycles_key_and_old_key_is_short_alias(engine: str, _db: None) -> None:
    c = Client()
    c.get("/sessions/set/cart/apple")
    old = c.cookies["sessionid"].value
    c.get("/sessions/login/alice")
    new = c.cookies["sessionid"].value
    assert new != old
    assert c.get("/sessions/whoami").content == b"alice"
    assert c.get("/sessions/get").json() == {"cart": "apple"}
    store = get_core_store()
    [info] = store.list_user_sessions(str(get_user_model().objects.get(username="alice").pk))
    assert info.handle == store._handle(str(store.unsign(new)))
    assert not SessionStore().exists(old)  # as Django's own engines after cycle_key()


@pytest.mark.parametrize("session_engine", ["django_statekit.sessions",
                                            "django.contrib.sessions.backends.cache"])
def test_login_fixation_the_planted_cookie_stays_anonymous(django_settings: Any, redis_url: str, _db: None,
                                                          session_engine: str) -> None:
    """Session fixation with Django's real ``login()``: an attacker plants a pre-login
    cookie in the victim's browser, the victim logs in, and the attacker's next
    request with that cookie is anonymous (never the victim), as with Django's own
    cache engine. Within the alias window too: the old id is only a tombstone."""
    configure(django_settings, redis_url)
    django_settings.set(SESSION_ENGINE=session_engine)
    attacker = Client()
    attacker.get("/sessions/set/theme/dark")
    planted = attacker.cookies["sessionid"].value
    victim = Client()
    victim.cookies["sessionid"] = planted
    assert victim.get("/sessions/login/victim").status_code == 200
    assert victim.cookies["sessionid"].value != planted
    assert victim.get("/sessions/whoami").content == b"victim"
    assert attacker.get("/sessions/whoami").content == b"anonymous"
    resp = attacker.get("/sessions/get")
    assert resp.json() == {}
    resp = attacker.get("/sessions/set/probe/1")
    assert resp.status_code == 200
    if session_engine == "django_statekit.sessions":
        # within the alias window no cookie, kept or deleted, for the planted one (the
        # browser that logged in would lose its new cookie to it)
        assert "sessionid" not in resp.cookies and attacker.cookies["sessionid"].value == planted
    else:  # Django's engine deleted the planted cookie before: a session of its own
        assert attacker.cookies["sessionid"].value not in (planted, victim.cookies["sessionid"].value)
    assert attacker.get("/sessions/whoami").content == b"anonymous"
    assert victim.get("/sessions/get").json() == {"theme": "dark"}  # the attacker's write stayed out
    assert victim.get("/sessions/whoami").content == b"victim"


def test_revoke_user_logs_out_everywhere(engine: str, _db: None) -> None:
    a, b = Client(), Client()
    a.get("/sessions/login/bob")
    b.get("/sessions/login/bob")
    pk = get_user_model().objects.get(username="bob").pk
    assert get_core_store().revoke_user(str(pk)) == 2
    assert a.get("/sessions/whoami").content == b"anonymous"
    assert b.get("/sessions/whoami").content == b"anonymous"


# -- outages -----------------------------------------------------------------------


def outage_url(server: RedisServer) -> str:
    """*server*'s URL for the outage tests: no retries, 2 s timeouts: a healthy server
    answers within them on a loaded machine (0.3 s now and then fired on one), and a
    stopped one fails for sure (paused: after 2 s; killed: refused at once)."""
    return server.url + "?socket_timeout=2&socket_connect_timeout=2&retries=0"


def test_outage_503_cookie_untouched_data_intact(django_settings: Any, durable_redis: RedisServer) -> None:
    configure(django_settings, outage_url(durable_redis))
    c = Client(raise_request_exception=False)
    c.get("/sessions/set/cart/apple")
    cookie = c.cookies["sessionid"].value
    durable_redis.kill()
    for url in ("/sessions/get", "/sessions/set/cart/pear", "/sessions/incr/n"):
        resp = c.get(url)
        assert resp.status_code == 503, url
        assert resp["Retry-After"] == "5"
        assert "sessionid" not in resp.cookies
        assert c.cookies["sessionid"].value == cookie
    durable_redis.start()
    assert c.get("/sessions/get").json() == {"cart": "apple"}
    assert c.cookies["sessionid"].value == cookie


def test_outage_during_save_is_503(django_settings: Any, durable_redis: RedisServer) -> None:
    configure(django_settings, outage_url(durable_redis))

    def v_set_then_die(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = "pear"
        durable_redis.kill()
        return HttpResponse("ok")

    tests_django_urls.urlpatterns.append(path("sessions/set-then-die", v_set_then_die))
    try:
        c = Client(raise_request_exception=False)
        c.get("/sessions/set/cart/apple")
        cookie = c.cookies["sessionid"].value
        resp = c.get("/sessions/set-then-die")
        assert resp.status_code == 503 and resp["Retry-After"] == "5" and "sessionid" not in resp.cookies
        durable_redis.start()
        assert c.get("/sessions/get").json() == {"cart": "apple"}
        assert c.cookies["sessionid"].value == cookie
    finally:
        tests_django_urls.urlpatterns.pop()


def _anonymous_outage(django_settings: Any, durable_redis: RedisServer, first: str) -> tuple[Client, str]:
    """A client whose session *first* made, then Redis stopped (``anonymous`` policy):
    the client and its session cookie."""
    configure(django_settings, outage_url(durable_redis), STATEKIT_SESSION_OUTAGE_POLICY="anonymous")
    c = Client(raise_request_exception=False)
    c.get(first)
    cookie = c.cookies["sessionid"].value
    durable_redis.kill()
    return c, cookie


def test_outage_anonymous_policy(django_settings: Any, durable_redis: RedisServer) -> None:
    c, cookie = _anonymous_outage(django_settings, durable_redis, "/sessions/set/cart/apple")
    resp = c.get("/sessions/get")
    assert resp.status_code == 200 and resp.json() == {} and "sessionid" not in resp.cookies
    resp = c.get("/sessions/set/cart/pear")
    assert resp.status_code == 503 and "Retry-After" in resp
    durable_redis.start()
    assert c.get("/sessions/get").json() == {"cart": "apple"}
    assert c.cookies["sessionid"].value == cookie


def test_near_cache_version_token_through_the_middleware(django_settings: Any, redis_url: str) -> None:
    """With ``STATEKIT_SESSION_NEAR_CACHE`` the middleware sends ``sessionid_v`` after
    a change (the browser's next request then reads at least that version), nothing
    on reads, and unchanged reads come from the near cache."""
    configure(django_settings, redis_url, STATEKIT_SESSION_NEAR_CACHE="on",
              STATEKIT_SESSION_COOKIE_SECURE=False)
    client = Client()
    client.post("/sessions/set/a/1")
    client.post("/sessions/set/a/2")
    token = client.cookies["sessionid_v"].value
    assert int(token) >= 2
    core = get_core_store()
    assert core.near_cache
    resp = client.get("/sessions/get")
    assert resp.json() == {"a": "2"} and "sessionid_v" not in resp.cookies
    wait_for(lambda: client.get("/sessions/get").json() == {"a": "2"} and core.engine.near_hits > 0,
             timeout=10, what="a read served from the near cache")
    client.post("/sessions/incr/n")
    assert int(client.cookies["sessionid_v"].value) == int(token) + 1
    core.engine.listener.stop()


def test_near_cache_without_the_middleware_is_a_config_error(django_settings: Any, redis_url: str) -> None:
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        STATEKIT_SESSION_NEAR_CACHE=True,
                        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"])
    with pytest.raises(ConfigError, match="SessionOutageMiddleware"):
        get_core_store()


def test_set_expiry_to_a_datetime_ends_the_session_then(engine: str) -> None:
    """``set_expiry(datetime)`` is absolute in Django: the session ends at that moment
    whatever the Redis TTL says, while an integer expiry slides."""
    import datetime as dt

    from django.utils import timezone

    s = SessionStore()
    s["a"] = 1
    s.set_expiry(timezone.now() + dt.timedelta(seconds=1))
    s.save()
    key = s.session_key
    assert SessionStore(key)["a"] == 1
    # enforced at load from the stored data, not only by the Redis TTL: give the key
    # a TTL that outlives the date (as a clock-skewed Redis, or a refresh, would)
    core = get_core_store()
    sid = core.unsign(key)
    assert sid is not None
    redis.Redis.from_url(engine).pexpire(core._key(sid), 60_000)
    time.sleep(1.2)
    gone = SessionStore(key)
    assert gone.get("a") is None and gone.session_key is None
    sliding = SessionStore()
    sliding["b"] = 2
    sliding.set_expiry(600)
    sliding.save()
    assert SessionStore(sliding.session_key)["b"] == 2


def test_clear_empties_the_stored_session_under_the_same_key(engine: str) -> None:
    """Django's ``clear()`` skips the load; the save must still empty the stored
    session under its own key, not leave it intact and move the cookie elsewhere."""
    s = SessionStore()
    s["_auth_user_id"] = "1"
    s["cart"] = "apple"
    s.save()
    key = s.session_key
    again = SessionStore(key)
    again.clear()
    again["theme"] = "dark"
    again.save()
    assert again.session_key == key
    assert dict(SessionStore(key).items()) == {"theme": "dark"}


def test_logout_in_an_anonymous_outage_is_503_and_keeps_the_cookie(
        django_settings: Any, durable_redis: RedisServer, _db: None) -> None:
    """A logout needs the store (the session must be destroyed there): during an
    outage it is a 503 that leaves the cookie alone, not a deleted cookie over a
    session that stays valid in Redis."""
    c, cookie = _anonymous_outage(django_settings, durable_redis, "/sessions/login/carol")
    resp = c.get("/sessions/logout")
    assert resp.status_code == 503 and "Retry-After" in resp
    assert "sessionid" not in resp.cookies and c.cookies["sessionid"].value == cookie
    durable_redis.start()
    assert c.get("/sessions/whoami").content == b"carol"
    c.get("/sessions/logout")
    assert c.get("/sessions/whoami").content == b"anonymous"
    assert get_core_store().unsign(cookie) is not None and not SessionStore().exists(cookie)


def test_async_flush_and_cycle_key_match_the_sync_ones(engine: str) -> None:
    """``alogin``/``alogout`` (Django 5) call ``acycle_key``/``aflush``: a write after
    ``aflush`` starts a new session (not a 400 on the destroyed one), and
    ``acycle_key`` rotates atomically, the old id no longer naming the session."""
    import asyncio

    async def flow() -> tuple[SessionStore, str, str]:
        s = SessionStore()
        await s.aset("_auth_user_id", "1")
        await s.asave()
        old = str(s.session_key)
        await s.aflush()
        await s.aset("_auth_user_id", "2")
        await s.asave()
        flushed_then_saved = str(s.session_key)
        await s.acycle_key()
        await s.asave()
        return s, old, flushed_then_saved

    s, old, before_cycle = asyncio.run(flow())
    assert not s.exists(old) and before_cycle != old
    assert s.session_key != before_cycle
    assert SessionStore(s.session_key)["_auth_user_id"] == "2"
    assert SessionStore(before_cycle).get("_auth_user_id") is None  # a tombstone: not the new state
    assert not s.exists(before_cycle)


def test_djangos_session_contract(engine: str) -> None:
    """What Django's own backends do (its ``SessionTestsMixin``): a saved session
    exists even when empty, ``exists()`` of no key is false, ``create()`` stores the
    current data under a new key, and an expiry already past ends the session at
    ``save()`` instead of failing it."""
    import datetime as dt

    empty = SessionStore()
    empty.save()
    assert empty.session_key and empty.exists(empty.session_key)
    assert not empty.exists("") and not empty.exists(None)  # type: ignore[arg-type]
    made = SessionStore()
    made["a"] = 1
    made.create()
    assert dict(SessionStore(made.session_key).items()) == {"a": 1}
    past = SessionStore()
    past["foo"] = "bar"
    past.save()
    past.set_expiry(-dt.timedelta(seconds=10))
    past.save()  # no UpdateError
    assert "foo" not in SessionStore(past.session_key) and not past.exists(str(past.session_key))


def test_test_client_session_property(engine: str) -> None:
    """Django's documented test pattern: ``client.session`` stores a session and
    sets the cookie; a later ``client.session`` edits that same session."""
    c = Client()
    c.session  # noqa: B018 - creates the session and sets the cookie
    s = c.session
    s["color"] = "green"
    s.save()
    assert c.get("/sessions/get").json() == {"color": "green"}


@pytest.mark.parametrize("every_request", [False, True], ids=["on-save", "every-request"])
def test_idle_timeout_counts_from_the_last_save(django_settings: Any, redis_url: str,
                                                monkeypatch: pytest.MonkeyPatch, every_request: bool) -> None:
    """As in Django's own backends, ``SESSION_COOKIE_AGE`` runs from the last save; with
    ``SESSION_SAVE_EVERY_REQUEST`` a read saves too (a TTL refresh), so it slides."""
    import statekit.sessions

    configure(django_settings, redis_url, SESSION_COOKIE_AGE=100, STATEKIT_SESSION_REFRESH_INTERVAL=1,
              SESSION_SAVE_EVERY_REQUEST=every_request)
    clock = [time.time()]
    monkeypatch.setattr(statekit.sessions, "now", lambda: clock[0])
    c = Client()
    c.get("/sessions/set/a/1")
    clock[0] += 60
    assert c.get("/sessions/get").json() == {"a": "1"}  # a read, 60 s after the write
    clock[0] += 70  # 130 s after the write, 70 s after the read
    assert c.get("/sessions/get").json() == ({"a": "1"} if every_request else {})


_loaded, _go = threading.Event(), threading.Event()


def v_slow_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    """Loads the session, waits until the test lets it go on, then writes."""
    seen = request.session.get("cart")
    _loaded.set()
    assert _go.wait(30)
    request.session[key] = value
    return HttpResponse(f"cart={seen}")


tests_django_urls.urlpatterns += [path("sessions/slow-set/<str:key>/<str:value>", v_slow_set)]


def test_old_cookie_in_flight_during_login_is_not_sent_back(engine: str, _db: None) -> None:
    """A request sent with the pre-login cookie that loaded the session before the
    login and saves after it completes without error: its write lands in the new,
    logged-in session, the old id does not come back, and the old cookie is not
    set again (the browser would drop its new one: logged out)."""
    c = Client()
    c.get("/sessions/set/cart/apple")
    old = c.cookies["sessionid"].value
    in_flight = Client()
    in_flight.cookies["sessionid"] = old
    _loaded.clear()
    _go.clear()
    result: dict[str, HttpResponse] = {}
    t = threading.Thread(target=lambda: result.update(r=in_flight.get("/sessions/slow-set/color/green")))
    t.start()
    try:
        assert _loaded.wait(30)
        c.get("/sessions/login/dave")
    finally:
        _go.set()
        t.join(30)
    assert c.cookies["sessionid"].value != old
    resp = result["r"]
    assert resp.status_code == 200 and resp.content == b"cart=apple" and "sessionid" not in resp.cookies
    assert c.get("/sessions/get").json() == {"cart": "apple", "color": "green"}  # the write landed
    assert c.get("/sessions/whoami").content == b"dave"
    assert not SessionStore().exists(old)  # not brought back
    late = Client()
    late.cookies["sessionid"] = old
    assert late.get("/sessions/whoami").content == b"anonymous"


def v_slow_read(request: HttpRequest, mode: str) -> HttpResponse:
    """Loads the session, waits until the test lets it go on, then answers without a
    change (``read``) or assigns a value it already holds (``same``: modified, nothing
    to store)."""
    seen = request.session.get("cart")
    _loaded.set()
    assert _go.wait(30)
    if mode == "same":
        request.session["cart"] = seen
    return HttpResponse(f"cart={seen}")


tests_django_urls.urlpatterns += [path("sessions/slow-read/<str:mode>", v_slow_read)]


@pytest.mark.parametrize("mode", ["read", "same"])
@pytest.mark.parametrize("every_request", [True, False], ids=["save-every-request", "save-on-change"])
def test_read_only_request_in_flight_at_login_keeps_the_browser_logged_in(
        django_settings: Any, redis_url: str, _db: None, every_request: bool, mode: str) -> None:
    """A login page firing parallel requests: one browser (one cookie jar) sends a
    request with its pre-login cookie that loads the session, the login completes in
    another request, then the first one answers without changing anything (a read,
    or an assignment of the value already there). Its save (every request with
    ``SESSION_SAVE_EVERY_REQUEST``; a modified session without) must not send the old
    cookie back: the browser stays logged in."""
    configure(django_settings, redis_url, SESSION_SAVE_EVERY_REQUEST=every_request,
              STATEKIT_SESSION_ALIAS_WINDOW=30)
    browser = Client()
    browser.get("/sessions/set/cart/apple")
    old = browser.cookies["sessionid"].value
    _loaded.clear()
    _go.clear()
    result: dict[str, HttpResponse] = {}
    t = threading.Thread(target=lambda: result.update(r=browser.get(f"/sessions/slow-read/{mode}")))
    t.start()
    try:
        assert _loaded.wait(30)
        assert browser.get("/sessions/login/erin").status_code == 200
    finally:
        _go.set()
        t.join(30)
    new = browser.cookies["sessionid"].value
    assert new != old
    resp = result["r"]
    assert resp.status_code == 200 and resp.content == b"cart=apple" and "sessionid" not in resp.cookies
    assert browser.cookies["sessionid"].value == new
    assert browser.get("/sessions/whoami").content == b"erin"
    assert browser.get("/sessions/get").json() == {"cart": "apple"}
    assert not SessionStore().exists(old)


def test_outage_is_logged_once_per_change_of_state(django_settings: Any, durable_redis: RedisServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Redis stopped: failing loads and saves answer 503 with a page that names
    nothing; the log gets one WARNING with the address, one when Redis is back, and
    no traceback or ``django.request`` line per request."""
    from statekit.lifecycle import outages

    outages.reset()
    configure(django_settings, outage_url(durable_redis))

    def v_set_then_die(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = "pear"
        durable_redis.kill()
        return HttpResponse("ok")

    tests_django_urls.urlpatterns.append(path("sessions/set-then-die-logged", v_set_then_die))
    try:
        c = Client(raise_request_exception=False)
        c.get("/sessions/set/cart/apple")
        caplog.set_level("INFO")
        assert c.get("/sessions/set-then-die-logged").status_code == 503  # the save fails
        for _ in range(3):
            for url in ("/sessions/get", "/sessions/set/cart/plum"):  # the load fails
                resp = c.get(url)
                assert resp.status_code == 503
                assert str(durable_redis.port) not in resp.content.decode()
        durable_redis.start()
        for _ in range(2):
            assert c.get("/sessions/get").json() == {"cart": "apple"}
    finally:
        tests_django_urls.urlpatterns.pop()
    lines = [r for r in caplog.records if r.name == "statekit.outage"]
    assert [r.levelname for r in lines] == ["WARNING", "WARNING"]
    down = lines[0].getMessage()
    assert "unavailable" in down and f"127.0.0.1:{durable_redis.port}" in down
    assert "available again" in lines[1].getMessage()
    assert [r for r in caplog.records if r.exc_info or r.name == "django.request"] == []


@pytest.mark.parametrize("url", ["/sessions/whoami", "/sessions/set/csrf/t1", "/sessions/incr/n"])
def test_request_loaded_after_the_login_keeps_the_browser_logged_in(engine: str, _db: None, url: str) -> None:
    """One browser sends a request with its pre-login cookie while the login is under
    way; the server runs the login first (the old id is a tombstone now), then that
    request: it is anonymous, and it must send no session cookie: neither the deletion
    SessionMiddleware makes for an empty session, nor a fresh session's cookie after
    a write, or the browser, which holds the new cookie by then, is logged out."""
    browser = Client()
    browser.get("/sessions/set/cart/apple")
    old = browser.cookies["sessionid"].value
    assert browser.get("/sessions/login/frank").status_code == 200
    assert browser.cookies["sessionid"].value != old
    sent_before = Client()  # the same browser's request, sent with the cookie it had then
    sent_before.cookies["sessionid"] = old
    resp = sent_before.get(url)
    assert resp.status_code == 200 and resp.content in (b"anonymous", b"ok", b"1")
    assert "sessionid" not in resp.cookies  # the browser's new cookie stays
    assert browser.get("/sessions/whoami").content == b"frank"


def test_outage_after_login_sends_the_new_cookie(django_settings: Any, durable_redis: RedisServer,
                                                 _db: None) -> None:
    """Redis dies between ``login()`` (the session's data moved to a new key) and
    SessionMiddleware's save: the 503 still carries the new key, since the old one is
    a tombstone now; once Redis is back the browser still has its cart."""
    configure(django_settings, outage_url(durable_redis))

    def v_login_then_die(request: HttpRequest) -> HttpResponse:
        user, _ = get_user_model().objects.get_or_create(username="gina")
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        durable_redis.kill()
        return HttpResponse("ok")

    tests_django_urls.urlpatterns.append(path("sessions/login-then-die", v_login_then_die))
    try:
        c = Client(raise_request_exception=False)
        c.get("/sessions/set/cart/apple")
        old = c.cookies["sessionid"].value
        resp = c.get("/sessions/login-then-die")
        assert resp.status_code == 503 and resp["Retry-After"] == "5"
        assert c.cookies["sessionid"].value not in ("", old)
        durable_redis.start()
        assert c.get("/sessions/get").json() == {"cart": "apple"}  # nothing lost
    finally:
        tests_django_urls.urlpatterns.pop()
