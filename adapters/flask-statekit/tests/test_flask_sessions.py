"""Flask adapter for server-side sessions, through Flask's test client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session
from flask.testing import FlaskClient

from flask_statekit import StateKit, get_state
from flask_statekit.sessions import FlaskSession, StatekitSessionInterface
from statekit.embedded import RedisServer
from statekit.pytest_plugin import wait_for
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis

SECRET = "flask-sessions-test-secret-0123456789"


def make_app(url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, STATEKIT_SESSION_URL=url, **config)
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
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config")))


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
    cookie = {"tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
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
    client = app.test_client()
    client.post("/set/cart/apple")
    old = cookie_of(client)
    client.post("/login/alice")
    new = cookie_of(client)
    assert new and new != old
    store = get_state(app).sessions
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    other = app.test_client()
    other.set_cookie("session", old or "")
    assert other.get("/get").json == {"cart": "apple", "_user_id": "alice"}


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


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A private Redis with fsync-always AOF: a kill and restart keeps every write."""
    server = RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    yield server
    server.stop()


def test_outage_answers_503_keeps_cookie_and_data(durable_redis: RedisServer) -> None:
    app = make_app(durable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3&retries=0")
    client = app.test_client()
    client.post("/set/cart/apple")
    cookie = cookie_of(client)
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
    app = make_app(durable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3&retries=0")

    @app.post("/slow-set")
    def slow_set() -> Any:
        session["cart"] = "pear"
        durable_redis.kill()  # Redis dies between load and save
        return "ok"

    client = app.test_client()
    client.post("/set/cart/apple")
    cookie = cookie_of(client)
    resp = client.post("/slow-set")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
    assert "Set-Cookie" not in resp.headers
    durable_redis.start()
    assert client.get("/get").json == {"cart": "apple"}
    assert cookie_of(client) == cookie


def test_outage_anonymous_policy_serves_read_only(durable_redis: RedisServer) -> None:
    app = make_app(durable_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.3&retries=0",
                   STATEKIT_SESSION_OUTAGE_POLICY="anonymous")
    client = app.test_client()
    client.post("/set/cart/apple")
    cookie = cookie_of(client)
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
