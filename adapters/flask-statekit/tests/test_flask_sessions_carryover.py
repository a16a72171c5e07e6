"""Sessions carried over on first contact from Flask-Session (Redis) and Flask's own
cookie sessions: the user stays logged in with the same data, under a new statekit
cookie."""

from __future__ import annotations

import logging
import pickle
import threading
import time
import warnings
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session
from flask.testing import FlaskClient

from flask_statekit import StateKit, get_state
from statekit.sessions.carryover import FlaskSessionRedis
from statekit.testing import tampered

pytestmark = pytest.mark.redis

SECRET = "flask-carry-over-secret-0123456789"


def old_url(redis_url: str) -> str:
    """The previous store: another database of the same test server."""
    return redis_url.rsplit("/", 1)[0] + "/1"


def flask_session_app(url: str, *, use_signer: bool = False) -> Flask:
    """The app before the switch: Flask-Session 0.8 on Redis, Flask-Login's key."""
    from flask_session import Session

    app = Flask("before")
    app.config.update(SECRET_KEY=SECRET, SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url),
                      SESSION_USE_SIGNER=use_signer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # SESSION_USE_SIGNER is deprecated in 0.8
        Session(app)
    _views(app)
    return app


def cookie_app() -> Flask:
    """The app before the switch: Flask's own signed cookie sessions."""
    app = Flask("before")
    app.config.update(SECRET_KEY=SECRET)
    _views(app)
    return app


def _views(app: Flask) -> None:
    @app.post("/login/<user>")
    def login(user: str) -> Any:
        session["_user_id"] = user
        session["cart"] = ["apple", "pear"]
        return "ok"

    @app.get("/get")
    def get() -> Any:
        return jsonify({k: v for k, v in session.items() if k != "_permanent"})


def statekit_app(redis_url: str, **config: Any) -> Flask:
    """The app after the switch."""
    app = Flask("after")
    app.config.update({"SECRET_KEY": SECRET, "STATEKIT_SESSION_URL": redis_url,
                       "STATEKIT_CACHE_ENABLED": False, "STATEKIT_BROADCAST_ENABLED": False, **config})
    StateKit(app)
    _views(app)
    return app


def old_cookie(client: FlaskClient) -> str:
    c = client.get_cookie("session")
    assert c is not None and c.value
    return c.value


def logged_in_before(app: Flask) -> str:
    client = app.test_client()
    assert client.post("/login/alice").status_code == 200
    assert client.get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    return old_cookie(client)


def switched(app: Flask, cookie: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client


@pytest.mark.parametrize("use_signer", [False, True], ids=["plain-id", "signed-id"])
def test_flask_session_user_stays_logged_in(redis_url: str, use_signer: bool) -> None:
    """Logged in under Flask-Session with a cart; after the switch the next request
    is still logged in with the same cart, under a new statekit cookie; the old entry
    is deleted; the second request reads the statekit session."""
    url = old_url(redis_url)
    old = logged_in_before(flask_session_app(url, use_signer=use_signer))
    old_redis = redis.Redis.from_url(url)
    assert old_redis.keys("session:*")
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                       STATEKIT_SESSION_CARRY_OVER_URL=url, SESSION_USE_SIGNER=use_signer)
    browser = switched(app, old)
    resp = browser.get("/get")
    assert resp.json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    new = old_cookie(browser)
    store = get_state(app).sessions
    assert new != old and store.unsign(new) is not None
    assert browser.get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    assert old_redis.keys("session:*") == []  # deleted on the old side
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    assert store.counters.get("carried_over") == 1
    # within the alias window the old cookie (a parallel request) leads to the same session
    assert switched(app, old).get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}


def test_flask_session_old_entry_left_to_expire(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``STATEKIT_SESSION_CARRY_OVER_DELETE = False`` leaves the old entry; the old
    cookie is still carried over only once: after the alias window it is spent (a
    logout in statekit is not undone by the old entry)."""
    import statekit.sessions.carryover

    url = old_url(redis_url)
    old = logged_in_before(flask_session_app(url))
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                       STATEKIT_SESSION_CARRY_OVER_URL=url, STATEKIT_SESSION_CARRY_OVER_DELETE=False)
    assert switched(app, old).get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    assert len(redis.Redis.from_url(url).keys("session:*")) == 1
    later = time.time() + 11  # past the 10 s alias window
    monkeypatch.setattr(statekit.sessions.carryover, "now", lambda: later)
    assert switched(app, old).get("/get").json == {}
    assert get_state(app).sessions.counters.get("carried_over") == 1


@pytest.mark.parametrize("use_signer", [False, True], ids=["plain-id", "signed-id"])
def test_flask_session_tampered_cookie_is_refused(redis_url: str, use_signer: bool,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    url = old_url(redis_url)
    old = logged_in_before(flask_session_app(url, use_signer=use_signer))
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                       STATEKIT_SESSION_CARRY_OVER_URL=url, SESSION_USE_SIGNER=use_signer)
    # change the id, not the signature's last character: that one carries unused
    # base64 bits, so changing it can leave the signature valid
    tampered = ("A" if old[0] != "A" else "B") + old[1:]
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        resp = switched(app, tampered).get("/get")
    assert resp.json == {} and "Set-Cookie" not in resp.headers
    assert "rejected session cookie" in caplog.text
    assert len(redis.Redis.from_url(url).keys("session:*")) == 1  # nothing deleted
    assert get_state(app).sessions.counters.get("carried_over") == 0


class _Evil:
    def __reduce__(self) -> Any:
        return (exec, ("raise SystemExit('pickle ran code')",))


@pytest.mark.parametrize("use_signer", [False, True], ids=["plain-id", "signed-id"])
def test_flask_session_pickle_is_refused_unless_signed_and_plain(redis_url: str, use_signer: bool) -> None:
    """Flask-Session before 0.7 pickled: opted in, a pickle is read only when the old
    signer verified the cookie, and as plain data only; one that would run code is refused."""
    url = old_url(redis_url)
    old_redis = redis.Redis.from_url(url)
    store = FlaskSessionRedis(url, secret_keys=[SECRET], use_signer=use_signer)
    signer = store._signers[0]
    plain, evil = "plainsid0000000000000000000000000000000000", "evilsid00000000000000000000000000000000000"
    old_redis.set("session:" + plain, pickle.dumps({"_user_id": "bob", "cart": ["fig"]}))
    old_redis.set("session:" + evil, pickle.dumps({"_user_id": "eve", "x": _Evil()}))
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                       STATEKIT_SESSION_CARRY_OVER_URL=url, SESSION_USE_SIGNER=use_signer,
                       STATEKIT_SESSION_CARRY_OVER_PICKLE=True)

    def cookie(sid: str) -> str:
        return signer.sign(sid).decode() if use_signer else sid

    got = switched(app, cookie(plain)).get("/get").json
    assert got == ({"_user_id": "bob", "cart": ["fig"]} if use_signer else {})
    assert switched(app, cookie(evil)).get("/get").json == {}
    assert old_redis.exists("session:" + evil)


@pytest.mark.parametrize("opt_in", [None, False, "true"], ids=["unset", "off", "on-env-text"])
def test_flask_session_pickle_needs_the_opt_in(redis_url: str, opt_in: Any,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-data pickle of Flask-Session before 0.7 under a signed id: without
    ``STATEKIT_SESSION_CARRY_OVER_PICKLE`` it is refused like an unknown format (a
    fresh session, counted, logged once naming the setting, the old entry kept); with
    it (here from the environment) the user stays logged in."""
    url = old_url(redis_url)
    old_redis = redis.Redis.from_url(url)
    sid = "picklesid000000000000000000000000000000000"
    old_redis.set("session:" + sid, pickle.dumps({"_user_id": "bob", "cart": ["fig"]}))
    cookie = FlaskSessionRedis(url, secret_keys=[SECRET], use_signer=True)._signers[0].sign(sid).decode()
    if opt_in is not None:
        monkeypatch.setenv("STATEKIT_SESSION_CARRY_OVER_PICKLE", str(opt_in))
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                       STATEKIT_SESSION_CARRY_OVER_URL=url, SESSION_USE_SIGNER=True)
    store = get_state(app).sessions
    browser = switched(app, cookie)
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        got = browser.get("/get").json
    if opt_in == "true":
        assert got == {"_user_id": "bob", "cart": ["fig"]}
        assert store.counters.get("carried_over") == 1 and store.counters.get("carry_over_refused") == 0
        assert not old_redis.exists("session:" + sid)
        return
    assert got == {}
    assert store.counters.get("carry_over_refused") == 1 and store.counters.get("carried_over") == 0
    refusals = [r for r in caplog.records if r.name == "statekit.security"]
    assert len(refusals) == 1 and "STATEKIT_SESSION_CARRY_OVER_PICKLE" in refusals[0].getMessage()
    assert old_redis.exists("session:" + sid)
    assert browser.get("/get").json == {}  # a fresh session: no login on the next request either


@pytest.mark.parametrize("kind", ["flask-session", "flask-cookie"])
def test_concurrent_first_requests_end_in_one_session(redis_url: str, kind: str) -> None:
    """Two requests with the same old cookie, both past the old-store read before
    either stores anything: both end in the same statekit session (same cookie)."""
    url = old_url(redis_url)
    old = logged_in_before(flask_session_app(url) if kind == "flask-session" else cookie_app())
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER=kind, STATEKIT_SESSION_CARRY_OVER_URL=url)
    carry = get_state(app).sessions.carry_over
    assert carry is not None
    both_read = threading.Barrier(2, timeout=30)
    read = carry.previous.read

    def read_together(cookie: str) -> Any:
        data = read(cookie)
        both_read.wait()
        return data

    carry.previous.read = read_together  # type: ignore[method-assign]
    clients = [switched(app, old), switched(app, old)]
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        results[i] = clients[i].get("/get")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.json for r in results] == [{"_user_id": "alice", "cart": ["apple", "pear"]}] * 2
    cookies = {old_cookie(c) for c in clients}
    assert len(cookies) == 1 and old not in cookies
    store = get_state(app).sessions
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]
    assert store.counters.get("carried_over") == 1


def test_flask_cookie_user_stays_logged_in(redis_url: str) -> None:
    old = logged_in_before(cookie_app())
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-cookie")
    browser = switched(app, old)
    assert browser.get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    new = old_cookie(browser)
    store = get_state(app).sessions
    assert new != old and store.unsign(new) is not None
    assert browser.get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
    assert store.counters.get("carried_over") == 1
    assert [i.user_id for i in store.list_user_sessions("alice")] == ["alice"]


def test_flask_cookie_tampered_or_foreign_cookie_is_refused(redis_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    old = logged_in_before(cookie_app())
    app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-cookie")
    foreign = Flask("foreign")
    foreign.config.update(SECRET_KEY="another-secret-key-0123456789")
    _views(foreign)
    with caplog.at_level(logging.WARNING, logger="statekit.security"):
        for cookie in (tampered(old), logged_in_before(foreign)):
            resp = switched(app, cookie).get("/get")
            assert resp.json == {} and "Set-Cookie" not in resp.headers
    assert caplog.text.count("rejected session cookie") == 1  # one line per kind per minute
    assert get_state(app).sessions.counters.get("rejected_cookies") == 2
    assert get_state(app).sessions.counters.get("carried_over") == 0


def test_switched_off_an_old_cookie_is_an_unknown_cookie(redis_url: str) -> None:
    old = logged_in_before(cookie_app())
    assert switched(statekit_app(redis_url), old).get("/get").json == {}


def test_old_store_down_at_the_delete_keeps_the_user_logged_in(redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The old Redis stops taking writes right after the carry-over read (a real
    ``CLIENT PAUSE WRITE`` on a server of its own): the delete of the old entry fails,
    but the session is already carried over and claimed. The request is answered with
    it and its new cookie; a 503 would lose that cookie, and the retry, once the
    alias window is over, would find the old cookie spent: logged out. The old store's
    timeout is 2 s (its read must be answered on a loaded machine: 0.3 s could fire on
    it) and the pause 30 s, ended once the request is answered: the delete's timeout
    fires for sure."""
    from statekit.embedded import RedisServer

    with RedisServer() as old_server:
        url = old_server.url
        old = logged_in_before(flask_session_app(url))
        app = statekit_app(redis_url, STATEKIT_SESSION_CARRY_OVER="flask-session",
                           STATEKIT_SESSION_CARRY_OVER_URL=url + "?socket_timeout=2")
        carry = get_state(app).sessions.carry_over
        assert carry is not None
        read = carry.previous.read
        admin = redis.Redis.from_url(url)

        def read_then_pause(cookie: str) -> Any:
            data = read(cookie)
            admin.execute_command("CLIENT", "PAUSE", 30000, "WRITE")
            return data

        monkeypatch.setattr(carry.previous, "read", read_then_pause)
        browser = switched(app, old)
        try:
            resp = browser.get("/get")
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert resp.status_code == 200
        assert resp.json == {"_user_id": "alice", "cart": ["apple", "pear"]}
        new = old_cookie(browser)
        assert new != old and get_state(app).sessions.unsign(new) is not None
        import statekit.sessions.carryover

        later = time.time() + 11  # past the alias window: the browser uses its new cookie
        monkeypatch.setattr(statekit.sessions.carryover, "now", lambda: later)
        assert browser.get("/get").json == {"_user_id": "alice", "cart": ["apple", "pear"]}
