"""Flask adapter for server-side sessions, through Flask's test client."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, Response, jsonify, redirect, request, session
from flask.testing import FlaskClient

from flask_statekit import StateKit, get_state
from flask_statekit.sessions import FlaskSession, StatekitSessionInterface
from statekit.embedded import RedisServer
from statekit.errors import ConfigError
from statekit.pytest_plugin import redis_command_calls, wait_for
from statekit.sessions import SessionStore
from statekit.testing import tampered

pytestmark = pytest.mark.redis

SECRET = "flask-sessions-test-secret-0123456789"


def make_app(url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    # sessions only: the capabilities with no URL here are switched off, or StateKit refuses to start
    app.config.update({"SECRET_KEY": SECRET, "STATEKIT_SESSION_URL": url, "STATEKIT_CACHE_ENABLED": False,
                       "STATEKIT_BROADCAST_ENABLED": False, **config})
    StateKit(app)

    @app.get("/get")
    def get() -> Any:
        return jsonify(dict(session))

    @app.get("/peek")
    def peek() -> Any:
        return "ok"

    @app.post("/set/<key>/<value>")
    def set_(key: str, value: str) -> Any:
        session[key] = value
        return "ok"

    @app.post("/incr/<key>")
    def incr(key: str) -> Any:
        return str(session.incr(key))  # type: ignore[attr-defined]

    @app.post("/login/<user>")
    def login(user: str) -> Any:
        session.rotate()  # type: ignore[attr-defined]
        session["_user_id"] = user
        return "ok"

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return "ok"

    @app.post("/bad")
    def bad() -> Any:
        session["bad"] = object()
        return "not reached"

    return app


@pytest.fixture
def app(redis_url: str) -> Flask:
    return make_app(redis_url)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def cookie_of(client: FlaskClient) -> str | None:
    c = client.get_cookie("session")
    return c.value if c else None


def calls(r: redis.Redis) -> int:
    return sum(redis_command_calls(r).values())


def while_paused(request: Callable[[], Any], loaded: threading.Event, go: threading.Event,
                 during: Callable[[], Any]) -> tuple[Any, Any]:
    """Send *request* from a thread; once its view has loaded the session and set
    *loaded*, run *during* (another request of the same browser), then let the view
    go on (*go*). Returns the paused request's response and *during*'s result."""
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=request()))
    t.start()
    try:
        assert loaded.wait(30)
        done = during()
    finally:
        go.set()
        t.join(30)
    return result["r"], done


def test_interface_installed(app: Flask) -> None:
    assert isinstance(app.session_interface, StatekitSessionInterface)
    assert isinstance(get_state(app).sessions, SessionStore)


def test_set_and_get(client: FlaskClient) -> None:
    r = client.post("/set/color/blue")
    set_cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Secure" in set_cookie
    assert client.get("/get").json == {"color": "blue"}


def test_cookie_options(redis_url: str) -> None:
    app = make_app(redis_url, STATEKIT_SESSION_COOKIE_PARTITIONED=True,
                   STATEKIT_SESSION_COOKIE_DOMAIN="example.test", STATEKIT_SESSION_COOKIE_PATH="/app",
                   STATEKIT_SESSION_COOKIE_NAME="sid")
    r = app.test_client().post("/set/a/b")
    sc = r.headers["Set-Cookie"]
    assert sc.startswith("sid=") and "Partitioned" in sc and "Secure" in sc
    assert "Domain=example.test" in sc and "Path=/app" in sc
    debug = make_app(redis_url, DEBUG=True).test_client().post("/set/a/b").headers["Set-Cookie"]
    assert "Secure" not in debug and "HttpOnly" in debug


def test_unmodified_request_sets_no_cookie_and_writes_nothing(client: FlaskClient, redis_url: str) -> None:
    client.post("/set/a/1")
    client.get("/get")  # warm
    r = redis.Redis.from_url(redis_url)
    r.config_resetstat()
    resp = client.get("/get")
    assert resp.json == {"a": "1"} and "Set-Cookie" not in resp.headers
    assert calls(r) == 1
    assert "Cookie" in resp.headers["Vary"]


def test_no_cookie_no_session_no_redis(client: FlaskClient, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.config_resetstat()
    resp = client.get("/peek")
    assert "Set-Cookie" not in resp.headers and calls(r) == 0


@pytest.mark.parametrize("mangle", ["tampered", "truncated", "foreign", "oversized"])
def test_bad_cookies_fresh_session_zero_redis_calls(client: FlaskClient, redis_url: str, mangle: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    client.post("/set/secret/x")
    good = cookie_of(client)
    assert good
    foreign = SessionStore("memory://", secret_keys=["another-app-key"])
    cookie = {"tampered": tampered(good),
              "truncated": good[:20],
              "foreign": foreign.sign(foreign.new().sid),
              "oversized": good + "A" * 1000}[mangle]
    client.set_cookie("session", cookie)
    r = redis.Redis.from_url(redis_url)
    r.config_resetstat()
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        resp = client.get("/get")
    assert resp.json == {} and calls(r) == 0
    assert "rejected session cookie" in caplog.text


def test_incr(client: FlaskClient) -> None:
    assert client.post("/incr/n").text == "1"
    assert client.post("/incr/n").text == "2"
    assert client.get("/get").json == {"n": 2}


def test_login_rotates_and_old_cookie_is_short_alias(redis_url: str) -> None:
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    client, old = _with_cart(app)
    client.post("/login/alice")
    new = cookie_of(client)
    assert new and new != old
    store = get_state(app).sessions
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    other = app.test_client()
    other.set_cookie("session", old or "")
    assert other.get("/get").json == {}  # the old id is a tombstone: never the logged-in state


def test_login_fixation_the_planted_cookie_stays_anonymous(redis_url: str) -> None:
    """Session fixation: an attacker plants a pre-login cookie in the victim's
    browser, the victim logs in (``session.rotate()``), and the attacker's next
    requests with that cookie are anonymous, within the alias window too; what the
    attacker then writes within the window is not stored, and gets no cookie (the
    browser that logged in would lose its new cookie to it)."""
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    attacker = app.test_client()
    attacker.post("/set/theme/dark")
    planted = cookie_of(attacker)
    assert planted
    victim = app.test_client()
    victim.set_cookie("session", planted)
    victim.post("/login/victim")
    assert cookie_of(victim) not in (None, planted)
    assert victim.get("/get").json == {"theme": "dark", "_user_id": "victim"}
    assert attacker.get("/get").json == {}
    resp = attacker.post("/set/probe/1")
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers and cookie_of(attacker) == planted
    assert attacker.get("/get").json == {}
    assert victim.get("/get").json == {"theme": "dark", "_user_id": "victim"}
    assert [i.user_id for i in get_state(app).sessions.list_user_sessions("victim")] == ["victim"]


@pytest.mark.parametrize("url", ["/set/csrf/t1", "/incr/n", "/logout"])
def test_request_loaded_after_the_login_sends_no_cookie(redis_url: str, url: str) -> None:
    """One browser sends a request with its pre-login cookie while the login is under
    way; the server runs the login first (the old id is a tombstone now), then that
    request, which writes (a CSRF token, a counter) or clears the session. It is
    anonymous, and it must send no cookie, neither a fresh session's nor a deletion:
    the browser holds the new, logged-in cookie by then and would be logged out."""
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    browser = app.test_client()
    browser.post("/set/cart/apple")
    old = cookie_of(browser)
    assert old
    browser.post("/login/alice")
    assert cookie_of(browser) not in (None, old)
    sent_before = app.test_client()  # the same browser's request, with the cookie it had then
    sent_before.set_cookie("session", old)
    resp = sent_before.post(url)
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    assert browser.get("/get").json == {"cart": "apple", "_user_id": "alice"}


def test_login_fixation_an_in_flight_write_then_rotate_stays_out(redis_url: str) -> None:
    """Session fixation through the alias: the attacker's request with the planted
    cookie loads it before the victim's login, then (after the login) increments a
    counter, which follows the alias into the victim's session, then rotates (a
    step-up, its own login). The rotation must not take the victim's logged-in
    session over: the attacker's new cookie is not the victim, and the victim stays
    logged in."""
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    loaded, go = threading.Event(), threading.Event()

    @app.post("/slow-incr-rotate")
    def slow_incr_rotate() -> Any:
        session.get("theme")
        loaded.set()
        assert go.wait(30)
        session.incr("hits")  # type: ignore[attr-defined]
        session.rotate()  # type: ignore[attr-defined]
        return "ok"

    attacker = app.test_client()
    attacker.post("/set/theme/dark")
    planted = cookie_of(attacker)
    assert planted
    victim = app.test_client()
    victim.set_cookie("session", planted)
    paused, login = while_paused(lambda: attacker.post("/slow-incr-rotate"), loaded, go,
                                 lambda: victim.post("/login/victim"))
    assert login.status_code == 200
    assert paused.status_code == 200
    assert cookie_of(attacker) not in (None, planted, cookie_of(victim))
    assert "_user_id" not in attacker.get("/get").json  # never the victim's logged-in session
    assert victim.get("/get").json.get("_user_id") == "victim"  # and the victim stays logged in


def test_logout_destroys_and_deletes_cookie(app: Flask, client: FlaskClient) -> None:
    client.post("/set/a/1")
    old = cookie_of(client)
    resp = client.post("/logout")
    assert "session=;" in resp.headers["Set-Cookie"]
    other = app.test_client()
    other.set_cookie("session", old or "")
    assert other.get("/get").json == {}


def test_revoke_user_logs_out_everywhere(app: Flask) -> None:
    a, b = app.test_client(), app.test_client()
    a.post("/login/bob")
    b.post("/login/bob")
    get_state(app).sessions.revoke_user("bob")
    assert a.get("/get").json == {} and b.get("/get").json == {}


def test_unserializable_value_fails_at_assignment(app: Flask) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False
    with app.test_request_context("/"):
        s = app.session_interface.open_session(app, __import__("flask").request)
        assert isinstance(s, FlaskSession)
        with pytest.raises(TypeError, match="'bad'.*object"):
            s["bad"] = object()
    assert app.test_client().post("/bad").status_code == 500


# -- outages -----------------------------------------------------------------------


def outage_url(server: RedisServer) -> str:
    """*server*'s URL for the outage tests: no retries, 2 s timeouts: a healthy server
    answers within them on a loaded machine (0.3 s now and then fired on one), and a
    stopped one fails for sure (paused: after 2 s; killed: refused at once)."""
    return server.url + "?socket_timeout=2&socket_connect_timeout=2&retries=0"


def _with_cart(app: Flask) -> tuple[FlaskClient, str | None]:
    """A client whose session holds a cart, and its session cookie."""
    client = app.test_client()
    client.post("/set/cart/apple")
    return client, cookie_of(client)


def test_outage_answers_503_keeps_cookie_and_data(durable_redis: RedisServer) -> None:
    app = make_app(outage_url(durable_redis))
    client, cookie = _with_cart(app)
    durable_redis.kill()
    for resp in (client.get("/get"), client.post("/set/cart/pear")):
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "5"
        assert "Set-Cookie" not in resp.headers
        assert cookie_of(client) == cookie
    durable_redis.start()
    assert client.get("/get").json == {"cart": "apple"}
    assert cookie_of(client) == cookie


def test_outage_during_save_answers_503(durable_redis: RedisServer) -> None:
    app = make_app(outage_url(durable_redis))

    @app.post("/slow-set")
    def slow_set() -> Any:
        session["cart"] = "pear"
        durable_redis.kill()  # Redis dies between load and save
        return "ok"

    client, cookie = _with_cart(app)
    resp = client.post("/slow-set")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert "Set-Cookie" not in resp.headers
    durable_redis.start()
    assert client.get("/get").json == {"cart": "apple"}
    assert cookie_of(client) == cookie


def test_outage_after_rotation_sends_the_new_cookie(durable_redis: RedisServer) -> None:
    """Redis dies between ``session.rotate()`` and the save: the 503 still carries the
    new id, since the data already moved there and the old id dies with its alias."""
    app = make_app(outage_url(durable_redis),
                   STATEKIT_SESSION_ALIAS_WINDOW=1)

    @app.post("/login-then-outage")
    def login_then_outage() -> Any:
        session.rotate()  # type: ignore[attr-defined]
        durable_redis.kill()
        session["_user_id"] = "alice"
        return "ok"

    client, old = _with_cart(app)
    resp = client.post("/login-then-outage")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    new = cookie_of(client)
    assert new and new != old
    durable_redis.start()
    stale = app.test_client()
    stale.set_cookie("session", old or "")
    wait_for(lambda: stale.get("/get").json == {}, timeout=30, what="the old id's alias to expire")
    assert client.get("/get").json == {"cart": "apple"}  # not logged in, but nothing lost


def test_outage_during_save_drops_headers_of_the_replaced_body(durable_redis: RedisServer) -> None:
    """The 503 page replaces the body, so headers describing the old body go (an
    ``after_request`` compression's ``Content-Encoding: gzip`` would make the plain
    page undecodable; a redirect's ``Location`` no longer applies)."""
    import gzip

    app = make_app(outage_url(durable_redis))

    @app.post("/write-and-redirect")
    def write_and_redirect() -> Any:
        session["cart"] = "pear"
        durable_redis.kill()
        return redirect("/elsewhere")

    @app.after_request
    def compress(response: Response) -> Response:
        if request.path != "/write-and-redirect":
            return response
        response.set_data(gzip.compress(response.get_data()))
        response.headers["Content-Encoding"] = "gzip"
        response.headers["ETag"] = '"abc"'
        return response

    client = app.test_client()
    client.post("/set/cart/apple")
    resp = client.post("/write-and-redirect")
    assert resp.status_code == 503
    assert not {"Content-Encoding", "ETag", "Location"} & set(resp.headers.keys())
    assert resp.text.startswith("<!doctype html>") and "Service Unavailable" in resp.text
    assert int(resp.headers["Content-Length"]) == len(resp.data)
    durable_redis.start()
    assert client.get("/get").json == {"cart": "apple"}


def test_outage_anonymous_policy_serves_read_only(durable_redis: RedisServer) -> None:
    app = make_app(outage_url(durable_redis),
                   STATEKIT_SESSION_OUTAGE_POLICY="anonymous")
    client, cookie = _with_cart(app)
    durable_redis.kill()
    resp = client.get("/get")
    assert resp.status_code == 200 and resp.json == {} and "Set-Cookie" not in resp.headers
    resp = client.post("/set/cart/pear")
    assert resp.status_code == 503 and "Retry-After" in resp.headers
    durable_redis.start()
    assert client.get("/get").json == {"cart": "apple"} and cookie_of(client) == cookie


def test_near_cache_sends_a_version_token_after_changes(redis_url: str) -> None:
    """With ``STATEKIT_SESSION_NEAR_CACHE`` a change sends ``session_v`` (the new
    version, so the browser's next request reads at least that); reads send nothing;
    logout deletes it with the session cookie; unchanged reads are served locally."""
    app = make_app(redis_url, STATEKIT_SESSION_NEAR_CACHE="on", STATEKIT_SESSION_COOKIE_SECURE=False)
    client = app.test_client()
    store = get_state(app).sessions  # type: ignore[attr-defined]
    assert store.near_cache
    client.post("/set/a/1")  # creates the session: its cookie, no token needed yet
    resp = client.post("/set/a/2")
    token = client.get_cookie("session_v")
    assert token is not None and int(token.value) >= 2
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Lax" in resp.headers["Set-Cookie"]
    for _ in range(3):
        resp = client.get("/get")
        assert resp.json == {"a": "2"}
        assert "Set-Cookie" not in resp.headers
    wait_for(lambda: client.get("/get").json == {"a": "2"} and store.engine.near_hits > 0, timeout=10,
             what="a read served from the near cache")
    client.post("/incr/n")
    assert int(client.get_cookie("session_v").value) == int(token.value) + 1  # type: ignore[union-attr]
    resp = client.post("/logout")
    assert client.get_cookie("session") is None and client.get_cookie("session_v") is None
    store.engine.listener.stop()


def test_without_near_cache_no_token_is_sent(client: FlaskClient) -> None:
    client.post("/set/a/1")
    client.post("/set/a/2")
    assert client.get_cookie("session_v") is None


# -- Flask's session contract ---------------------------------------------------------


def test_feature_switch_accepts_true_from_the_environment(redis_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``STATEKIT_SESSIONS_ENABLED=True`` (or yes/on) in the environment keeps sessions
    on; only false-like values switch a feature off."""
    monkeypatch.setenv("STATEKIT_SESSIONS_ENABLED", "True")
    monkeypatch.setenv("STATEKIT_BLOBS_ENABLED", "off")
    app = make_app(redis_url)
    assert isinstance(app.session_interface, StatekitSessionInterface)
    assert "sessions" in get_state(app).features and "blobs" not in get_state(app).features


def test_secure_follows_debug_set_after_init(redis_url: str) -> None:
    """``app.run(debug=True)`` turns debug on after ``StateKit(app)``: the default
    Secure flag follows it; an explicit setting wins either way."""
    app = make_app(redis_url)
    app.debug = True
    assert "Secure" not in app.test_client().post("/set/a/b").headers["Set-Cookie"]
    app.debug = False
    assert "Secure" in app.test_client().post("/set/a/b").headers["Set-Cookie"]
    forced = make_app(redis_url, STATEKIT_SESSION_COOKIE_SECURE=True)
    forced.debug = True
    assert "Secure" in forced.test_client().post("/set/a/b").headers["Set-Cookie"]


def test_old_cookie_in_flight_during_login_is_not_sent_back(redis_url: str) -> None:
    """A request sent with the pre-login cookie that loaded the session before the
    login and saves after it completes without error: its write lands in the new
    session, the old id does not come back, and the old cookie is not set again (it
    would replace the new one in the browser: the user is logged out). Permanent
    sessions with ``SESSION_REFRESH_EACH_REQUEST`` (Flask's default) re-send the cookie."""
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    loaded, go = threading.Event(), threading.Event()

    @app.post("/remember")
    def remember() -> Any:
        session.permanent = True
        session["cart"] = "apple"
        return "ok"

    @app.post("/slow-set/<key>/<value>")
    def slow_set(key: str, value: str) -> Any:
        seen = session.get("_user_id")
        loaded.set()
        assert go.wait(30)
        session[key] = value
        return f"user={seen}"

    browser = app.test_client()
    browser.post("/remember")
    old = cookie_of(browser)
    assert old
    in_flight = app.test_client()
    in_flight.set_cookie("session", old)
    write, _ = while_paused(lambda: in_flight.post("/slow-set/color/blue"), loaded, go,
                            lambda: browser.post("/login/alice"))
    new = cookie_of(browser)
    assert new and new != old
    assert write.status_code == 200 and write.text == "user=None"
    assert not any(old in h for h in write.headers.getlist("Set-Cookie"))
    resp = browser.get("/get")  # the new cookie is refreshed with the server's TTL refresh only
    assert resp.json == {"_permanent": True, "cart": "apple", "_user_id": "alice", "color": "blue"}
    assert not any(old in h for h in resp.headers.getlist("Set-Cookie"))
    late = app.test_client()
    late.set_cookie("session", old)
    assert late.get("/get").json == {}  # the old id was not brought back


def test_request_in_flight_at_login_emptying_the_session_keeps_the_browser_logged_in(redis_url: str) -> None:
    """A request sent with the pre-login cookie loads a session holding one key (a
    flash message), the login completes in another request, then the first one pops
    that key: the session it loaded is empty now. That is no logout of the new,
    logged-in session: the popped key goes, the rest stays, no cookie is deleted."""
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30)
    loaded, go = threading.Event(), threading.Event()

    @app.post("/slow-pop/<key>")
    def slow_pop(key: str) -> Any:
        seen = session.get(key)
        loaded.set()
        assert go.wait(30)
        session.pop(key, None)
        return f"{key}={seen}"

    browser = app.test_client()
    browser.post("/set/notice/hello")
    old = cookie_of(browser)
    assert old
    resp, login = while_paused(lambda: browser.post("/slow-pop/notice"), loaded, go,
                               lambda: browser.post("/login/alice"))
    assert login.status_code == 200
    assert resp.status_code == 200 and resp.text == "notice=hello" and "Set-Cookie" not in resp.headers
    assert cookie_of(browser) not in (None, old)
    assert browser.get("/get").json == {"_user_id": "alice"}


@pytest.mark.parametrize("refresh_due", [False, True], ids=["no-refresh", "refresh-due"])
def test_read_only_request_in_flight_at_login_keeps_the_browser_logged_in(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, refresh_due: bool) -> None:
    """A login page firing parallel requests: one browser (one cookie jar) sends a
    read-only request with its pre-login cookie, the session loads, the login
    completes in another request, then the read-only request answers. With a
    permanent session and ``SESSION_REFRESH_EACH_REQUEST`` (Flask's defaults) it must
    not send the old cookie back (the browser would be logged out), whether or not
    its TTL refresh is due (a refresh writes through the alias and learns of the
    rotation)."""
    import statekit.sessions

    clock = [time.time()]
    monkeypatch.setattr(statekit.sessions, "now", lambda: clock[0])
    app = make_app(redis_url, STATEKIT_SESSION_ALIAS_WINDOW=30, STATEKIT_SESSION_REFRESH_INTERVAL=60)
    assert app.config["SESSION_REFRESH_EACH_REQUEST"]
    loaded, go = threading.Event(), threading.Event()

    @app.post("/remember")
    def remember() -> Any:
        session.permanent = True
        session["cart"] = "apple"
        return "ok"

    @app.get("/slow-get")
    def slow_get() -> Any:
        seen = session.get("_user_id")
        loaded.set()
        assert go.wait(30)
        return f"user={seen}"

    browser = app.test_client()
    browser.post("/remember")
    old = cookie_of(browser)
    assert old
    clock[0] += 61 if refresh_due else 1
    poll, login = while_paused(lambda: browser.get("/slow-get"), loaded, go,
                               lambda: browser.post("/login/alice"))
    assert login.status_code == 200
    new = cookie_of(browser)
    assert new and new != old
    assert poll.status_code == 200 and poll.text == "user=None"
    assert "Set-Cookie" not in poll.headers
    assert browser.get("/get").json == {"_permanent": True, "cart": "apple", "_user_id": "alice"}
    assert cookie_of(browser) == new


def test_unchanged_permanent_session_cookie_is_refreshed_with_the_ttl(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SESSION_REFRESH_EACH_REQUEST``: an unchanged permanent session's cookie is
    sent again (a later ``Expires``) only with the server's TTL refresh, at most once
    per ``STATEKIT_SESSION_REFRESH_INTERVAL``, so the cookie's expiry tracks the TTL."""
    import statekit.sessions

    clock = [time.time()]
    monkeypatch.setattr(statekit.sessions, "now", lambda: clock[0])
    app = make_app(redis_url, STATEKIT_SESSION_REFRESH_INTERVAL=60)

    @app.post("/remember")
    def remember() -> Any:
        session.permanent = True
        session["cart"] = "apple"
        return "ok"

    client = app.test_client()
    assert "Expires=" in client.post("/remember").headers["Set-Cookie"]
    r = redis.Redis.from_url(redis_url)
    key = get_state(app).sessions._key(get_state(app).sessions.unsign(cookie_of(client)) or "")
    clock[0] += 30
    r.config_resetstat()
    resp = client.get("/get")
    assert resp.json == {"_permanent": True, "cart": "apple"} and "Set-Cookie" not in resp.headers
    assert calls(r) == 1  # the load only
    seen = float(r.hget(key, "m:s") or 0)
    clock[0] += 31  # 61 s after the last write: the TTL refresh is due
    resp = client.get("/get")
    assert resp.headers["Set-Cookie"].startswith(f"session={cookie_of(client)};")
    assert "Expires=" in resp.headers["Set-Cookie"]
    assert float(r.hget(key, "m:s") or 0) > seen  # the server-side expiry moved with it


def test_permanent_change_resends_cookie_without_refresh_each_request(redis_url: str) -> None:
    """With ``SESSION_REFRESH_EACH_REQUEST = False`` Flask still sends the cookie when
    ``session.permanent`` changes, so it gains (or loses) its ``Expires``."""
    app = make_app(redis_url, SESSION_REFRESH_EACH_REQUEST=False)

    @app.post("/permanent/<int:on>")
    def permanent(on: int) -> Any:
        session.permanent = bool(on)
        return "ok"

    client = app.test_client()
    assert "Expires" not in client.post("/set/a/1").headers["Set-Cookie"]
    resp = client.post("/permanent/1")
    assert "Expires=" in resp.headers["Set-Cookie"] and client.get_cookie("session").expires  # type: ignore[union-attr]
    assert "Set-Cookie" not in client.get("/get").headers  # unchanged, no refresh
    assert "Expires=" in client.post("/set/a/2").headers["Set-Cookie"]  # changed: sent, as Flask sends it
    resp = client.post("/permanent/0")
    assert "Expires" not in resp.headers["Set-Cookie"] and client.get_cookie("session").expires is None  # type: ignore[union-attr]
    assert client.get("/get").json == {"_permanent": False, "a": "2"}


def test_flask_session_settings_apply_where_ours_are_not_given(redis_url: str) -> None:
    """A migrating app keeps its Flask cookie settings and a short
    ``PERMANENT_SESSION_LIFETIME`` (Flask-Session's server-side lifetime); Flask's
    defaults leave ours (Lax, Secure) in place, and STATEKIT_ settings win."""
    import datetime as dt

    app = make_app(redis_url, SESSION_COOKIE_DOMAIN="example.com", SESSION_COOKIE_SAMESITE="Strict",
                   SESSION_COOKIE_HTTPONLY=False, PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=1))
    header = app.test_client().post("/set/a/b", base_url="https://example.com").headers["Set-Cookie"]
    assert "Domain=example.com" in header and "SameSite=Strict" in header and "HttpOnly" not in header
    assert app.extensions["statekit"].sessions.idle_timeout == 3600
    plain = make_app(redis_url)
    header = plain.test_client().post("/set/a/b").headers["Set-Cookie"]
    assert "SameSite=Lax" in header and "Secure" in header and "HttpOnly" in header
    assert plain.extensions["statekit"].sessions.idle_timeout == 14 * 86400
    ours = make_app(redis_url, SESSION_COOKIE_SAMESITE="Strict", STATEKIT_SESSION_COOKIE_SAMESITE="None",
                    STATEKIT_SESSION_IDLE_TIMEOUT=60, PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=1))
    assert "SameSite=None" in ours.test_client().post("/set/a/b").headers["Set-Cookie"]
    assert ours.extensions["statekit"].sessions.idle_timeout == 60


def test_static_files_do_not_load_the_session(durable_redis: RedisServer, tmp_path: Path) -> None:
    """Flask's static route never uses the session: it costs no Redis call, and it
    is served while Redis is away (the default policy answers 503 elsewhere)."""
    (tmp_path / "site.css").write_text("body{}")
    app = make_app(outage_url(durable_redis))
    app.static_folder = str(tmp_path)
    app.static_url_path = "/static"  # as registered (setting the folder renamed it)
    client, cookie = _with_cart(app)
    with durable_redis.client() as r:
        r.config_resetstat()
        with client.get("/static/site.css") as resp:
            assert resp.data == b"body{}"
        assert redis_command_calls(r) == {}
    durable_redis.kill()
    with client.get("/static/site.css") as resp:
        assert resp.status_code == 200 and resp.data == b"body{}" and "Set-Cookie" not in resp.headers
    assert client.get("/get").status_code == 503
    durable_redis.start()
    assert client.get("/get").get_json() == {"cart": "apple"} and cookie_of(client) == cookie


def test_flash_after_destroy_reaches_the_next_request(redis_url: str) -> None:
    """``session.destroy()`` then ``flash(...)``: the old session is gone for good,
    and the message goes out in a fresh session under a new id."""
    from flask import flash, get_flashed_messages

    app = make_app(redis_url)

    @app.post("/sign-out")
    def sign_out() -> Any:
        session.destroy()  # type: ignore[attr-defined]
        flash("signed out")
        return "ok"

    @app.get("/messages")
    def messages() -> Any:
        return jsonify(messages=get_flashed_messages(), user=session.get("_user_id"))

    client, old = _with_cart(app)
    client.post("/set/_user_id/ada")
    client.post("/sign-out")
    new = cookie_of(client)
    assert new and new != old
    assert client.get("/messages").json == {"messages": ["signed out"], "user": None}
    stale = app.test_client()
    stale.set_cookie("session", old or "")
    assert stale.get("/get").json == {}


def test_outage_is_logged_once_per_change_of_state(durable_redis: RedisServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Redis stopped: many failing requests, one WARNING naming the store (the page
    names nothing); Redis back: one line saying so. No traceback per request."""
    from statekit.lifecycle import outages

    outages.reset()
    app = make_app(outage_url(durable_redis))
    client, _cookie = _with_cart(app)
    caplog.set_level("INFO")
    durable_redis.kill()
    for _ in range(3):
        for resp in (client.get("/get"), client.post("/set/cart/pear")):
            assert resp.status_code == 503
            assert str(durable_redis.port) not in resp.get_data(as_text=True)
    durable_redis.start()
    for _ in range(2):
        assert client.get("/get").json == {"cart": "apple"}
    lines = [r for r in caplog.records if r.name == "statekit.outage"]
    assert [r.levelname for r in lines] == ["WARNING", "WARNING"]
    down = lines[0].getMessage()
    assert "unavailable" in down and f"127.0.0.1:{durable_redis.port}" in down
    assert "available again" in lines[1].getMessage()
    assert [r for r in caplog.records if r.exc_info] == []


def test_no_redis_url_fails_start_and_the_switch_keeps_flask_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sessions enabled without a URL: StateKit(app) refuses to start, naming the
    setting and the switch, instead of silently leaving Flask's cookie sessions in
    place (where ``session.rotate()`` answers 500). With the switch off, Flask's
    cookie sessions are what the app gets, knowingly."""
    from flask.sessions import SecureCookieSessionInterface

    for name in ("REDIS", "SESSION", "CACHE", "BROADCAST"):
        monkeypatch.delenv(f"STATEKIT_{name}_URL", raising=False)
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, STATEKIT_BLOBS_ENABLED=False)
    with pytest.raises(ConfigError) as e:
        StateKit(app)
    assert "sessions" in str(e.value) and "STATEKIT_REDIS_URL" in str(e.value)
    assert "STATEKIT_SESSIONS_ENABLED = False" in str(e.value) and "cookie sessions" in str(e.value)
    assert "statekit" not in app.extensions  # nothing half-installed

    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, STATEKIT_SESSIONS_ENABLED=False, STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_BROADCAST_ENABLED=False, STATEKIT_BLOBS_ENABLED=False)
    StateKit(app)
    assert type(app.session_interface) is SecureCookieSessionInterface
    assert get_state(app).features == ["lifecycle"]

    @app.post("/remember")
    def remember() -> str:
        session["seen"] = "yes"
        return "ok"

    client = app.test_client()
    assert client.post("/remember").status_code == 200
    assert client.get_cookie("session") is not None  # Flask's signed cookie holds the data


def test_sessions_without_a_secret_key_refuse_to_start_naming_the_switch(redis_url: str) -> None:
    """No SECRET_KEY: the error names the key to set and the switch that turns sessions
    off, as Starlette's does (it said only "sessions need secret_keys")."""
    app = Flask(__name__)
    app.config.update(STATEKIT_SESSION_URL=redis_url, STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_BROADCAST_ENABLED=False, STATEKIT_BLOBS_ENABLED=False)
    with pytest.raises(ConfigError, match=r"SECRET_KEY.*STATEKIT_SESSIONS_ENABLED = False"):
        StateKit(app)
    assert "statekit" not in app.extensions
