"""Review 19: a Flask-Session 0.8 user (Redis backend) switching to statekit's Flask
sessions, checked against what Flask's own session interface and Flask-Session do
with the same app (their installed sources: flask/sessions.py, flask/ctx.py,
flask_session/base.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from flask import Flask, flash, get_flashed_messages, jsonify, request, session
from flask.testing import FlaskClient
from test_flask_sessions import SECRET, make_app
from test_review13_flask_sessions import login_app

from flask_statekit import get_state
from flask_statekit.sessions import StatekitSessionInterface

pytestmark = pytest.mark.redis


def _permanent(app: Flask) -> Flask:
    """The migration guide's stand-in for Flask-Session's ``SESSION_PERMANENT = True``."""

    @app.before_request
    def make_session_permanent() -> None:
        session.permanent = True

    return app


def _flask_session_app(url: str) -> Flask:
    """The app as it ran before the switch: Flask-Session 0.8 on the same Redis."""
    from flask_session import Session

    app = Flask("before")
    app.config.update(SECRET_KEY=SECRET, SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url),
                      SESSION_KEY_PREFIX="before:")  # SESSION_PERMANENT: True by default
    Session(app)
    app.add_url_rule("/peek", "peek", lambda: "ok")
    return app


def test_a_session_holding_only_its_permanence_is_not_stored(redis_url: str) -> None:
    """``session.permanent = True`` in ``before_request`` runs for every request:
    a visitor that stores nothing (a crawler, a health check, a first page view)
    must not cost a stored session and a cookie each, as Flask-Session's
    ``ServerSideSession.__bool__`` (ignoring ``_permanent``) made sure."""
    r = redis.Redis.from_url(redis_url)
    before = _flask_session_app(redis_url)
    for _ in range(3):
        assert "Set-Cookie" not in before.test_client().get("/peek").headers
    assert r.dbsize() == 0  # Flask-Session stored nothing

    app = _permanent(make_app(redis_url))
    for _ in range(3):
        response = app.test_client().get("/peek")
        assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert r.dbsize() == 0, f"stored for visitors who store nothing: {r.keys('*')}"

    client = app.test_client()
    set_cookie = client.post("/set/cart/apple").headers["Set-Cookie"]
    assert "Expires=" in set_cookie  # something to store: stored, permanent
    assert client.get("/get").get_json() == {"_permanent": True, "cart": "apple"}
    assert r.dbsize() == 1


def _flask_cookie_app() -> Flask:
    """Flask's own session interface (signed cookies), the reference for Vary."""
    app = Flask("reference")
    app.config["SECRET_KEY"] = SECRET
    app.add_url_rule("/peek", "peek", lambda: "ok")
    app.add_url_rule("/get", "get", lambda: jsonify(dict(session)))

    @app.post("/set/<key>/<value>")
    def set_(key: str, value: str) -> Any:
        session[key] = value
        return "ok"

    return app


@pytest.mark.parametrize("with_cookie", [False, True], ids=["no-cookie", "cookie"])
def test_vary_cookie_only_when_the_session_is_used(redis_url: str, with_cookie: bool) -> None:
    """Flask adds ``Vary: Cookie`` when the request used the session (Flask 3.1:
    any use of the ``session`` proxy): a view that never touches it stays
    cacheable by a shared cache. statekit's own outage check before each view must
    not count as the app's use of the session."""
    for app in (_flask_cookie_app(), make_app(redis_url)):
        client = app.test_client()
        if with_cookie:
            client.post("/set/cart/apple")
        peek = client.get("/peek")
        assert peek.status_code == 200
        assert "Vary" not in peek.headers, f"{app.name}: {peek.headers.get('Vary')}"
        assert "Cookie" in client.get("/get").headers["Vary"], app.name


def _age_session(r: redis.Redis, client: FlaskClient, app: Flask, seconds: float) -> str:
    """Make the stored session look last seen *seconds* ago: its next request
    writes the TTL refresh (no waiting for ``STATEKIT_SESSION_REFRESH_INTERVAL``).
    Returns its Redis key."""
    store = get_state(app).sessions
    cookie = client.get_cookie("session")
    assert cookie is not None
    sid = store.unsign(cookie.value)
    assert sid is not None
    key = store._key(sid)
    assert r.hset(key, "m:s", repr(time.time() - seconds)) == 0  # m:s existed
    return key


def test_refresh_each_request_off_sends_the_cookie_of_a_changed_permanent_session(redis_url: str) -> None:
    """``SESSION_REFRESH_EACH_REQUEST = False``: Flask and Flask-Session send a
    permanent session's cookie (a new ``Expires``) when the request changed the
    session, and only then. Without it the cookie of an active user still expires
    ``PERMANENT_SESSION_LIFETIME`` after it was first set."""
    r = redis.Redis.from_url(redis_url)
    app = make_app(redis_url, SESSION_REFRESH_EACH_REQUEST=False, PERMANENT_SESSION_LIFETIME=3600)
    client = app.test_client()
    with client.session_transaction() as remembered:  # a "remember me" login
        remembered.permanent = True
        remembered["n"] = "1"
    first = client.get_cookie("session")
    assert first is not None and first.expires is not None
    changed = client.post("/set/n/2")
    assert "Expires=" in changed.headers.get("Set-Cookie", ""), "a changed permanent session: no cookie"
    assert "Set-Cookie" not in client.get("/get").headers  # unchanged: none
    key = _age_session(r, client, app, 120)
    refreshed = client.get("/get")  # the server's TTL refresh alone is no change
    assert float(r.hget(key, "m:s") or 0) > time.time() - 60  # it was written
    assert refreshed.get_json() == {"_permanent": True, "n": "2"} and "Set-Cookie" not in refreshed.headers


OLD_KEY = "flask-sessions-old-key-0123456789abcdef"


def test_a_cookie_signed_with_a_fallback_key_is_signed_again(redis_url: str) -> None:
    """``SECRET_KEY_FALLBACKS`` (Flask 3.1): after ``SECRET_KEY`` changes, a cookie
    signed with the old key still verifies, and Flask's own interface signs it again
    with the new key whenever it sends the cookie (a changed session). A statekit
    cookie is sent again only with a write, so such a write must carry it, or the
    user is signed out when the old key is removed from the fallbacks."""
    old = make_app(redis_url, SECRET_KEY=OLD_KEY).test_client()
    old.post("/set/_user_id/ada")
    old_cookie = old.get_cookie("session")
    assert old_cookie is not None

    app = make_app(redis_url, SECRET_KEY_FALLBACKS=[OLD_KEY])  # SECRET_KEY: the new one
    reader = app.test_client()
    reader.set_cookie("session", old_cookie.value)
    read = reader.get("/get")
    assert read.get_json() == {"_user_id": "ada"} and "Set-Cookie" not in read.headers  # no write
    _age_session(redis.Redis.from_url(redis_url), reader, app, 120)
    assert "Set-Cookie" in reader.get("/get").headers  # the TTL refresh writes: signed again
    resigned = reader.get_cookie("session")
    assert resigned is not None and resigned.value != old_cookie.value

    client = app.test_client()
    client.set_cookie("session", old_cookie.value)
    client.post("/set/cart/apple")
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.value == resigned.value, "still the old key's signature"

    without_old_key = make_app(redis_url).test_client()  # the fallback removed
    without_old_key.set_cookie("session", cookie.value)
    assert without_old_key.get("/get").get_json() == {"_user_id": "ada", "cart": "apple"}


def test_flask_session_regenerate_rotates_the_id(redis_url: str) -> None:
    """Flask-Session 0.8's login call, ``app.session_interface.regenerate(session)``,
    keeps working after the switch: a new id with the data, the old one names
    nothing (no session fixation)."""
    app = make_app(redis_url)

    @app.post("/regenerate")
    def regenerate() -> Any:
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
        session["_user_id"] = "ada"
        return "ok"

    client = app.test_client()
    client.post("/set/cart/apple")
    before = client.get_cookie("session")
    assert before is not None
    assert client.post("/regenerate").status_code == 200
    after = client.get_cookie("session")
    assert after is not None and after.value != before.value
    assert client.get("/get").get_json() == {"cart": "apple", "_user_id": "ada"}
    planted = app.test_client()
    planted.set_cookie("session", before.value)
    assert planted.get("/get").get_json() == {}
    fresh = app.test_client()  # a session not stored yet has no id to rotate away
    assert fresh.post("/regenerate").status_code == 200
    assert fresh.get("/get").get_json() == {"_user_id": "ada"}


def test_flask_cookie_hooks_answer_with_the_cookie_sent(redis_url: str) -> None:
    """Flask's ``get_cookie_*`` hooks on the installed interface give the attributes
    of the cookie it sends (an app deleting or reading the session cookie itself
    asks them), and a subclass overriding one (a domain per tenant, a stricter
    SameSite) changes the cookie, as it does Flask's and Flask-Session's."""
    app = make_app(redis_url, STATEKIT_SESSION_COOKIE_NAME="sid", STATEKIT_SESSION_COOKIE_PATH="/app",
                   STATEKIT_SESSION_COOKIE_DOMAIN="example.test", STATEKIT_SESSION_COOKIE_PARTITIONED=True)
    iface = app.session_interface
    assert isinstance(iface, StatekitSessionInterface)
    sent = app.test_client().post("/set/a/b").headers["Set-Cookie"]
    assert sent.startswith("sid=")
    assert {"Domain=example.test", "Path=/app", "Secure", "HttpOnly", "SameSite=Lax", "Partitioned"} <= {
        part.strip() for part in sent.split(";")}
    hooks = (iface.get_cookie_name(app), iface.get_cookie_domain(app), iface.get_cookie_path(app),
             iface.get_cookie_secure(app), iface.get_cookie_httponly(app), iface.get_cookie_samesite(app),
             iface.get_cookie_partitioned(app))
    assert hooks == ("sid", "example.test", "/app", True, True, "Lax", True)

    class PerTenant(StatekitSessionInterface):
        def get_cookie_domain(self, app: Flask) -> str | None:
            return request.host.partition(":")[0]

        def get_cookie_samesite(self, app: Flask) -> str | None:
            return "Strict"

    app.session_interface = PerTenant(iface.store)
    client = app.test_client()
    sent = client.post("/set/a/b", base_url="https://shop.example.test").headers["Set-Cookie"]
    assert "Domain=shop.example.test" in sent and "SameSite=Strict" in sent
    gone = client.post("/logout", base_url="https://shop.example.test").headers["Set-Cookie"]
    assert "Max-Age=0" in gone and "Domain=shop.example.test" in gone and "SameSite=Strict" in gone


def test_a_response_setting_the_cookie_varies_on_it(redis_url: str) -> None:
    """Flask adds ``Vary: Cookie`` to every response that sets or deletes the session
    cookie, used or not: a permanent session's refreshed cookie on a page that never
    touched the session must not be cached and served to other browsers."""
    r = redis.Redis.from_url(redis_url)
    app = make_app(redis_url)
    client = app.test_client()
    with client.session_transaction() as remembered:
        remembered.permanent = True
        remembered["cart"] = "apple"
    _age_session(r, client, app, 120)
    refreshed = client.get("/peek")  # the TTL refresh is due: the cookie goes out again
    assert "Expires=" in refreshed.headers.get("Set-Cookie", "")
    assert "Cookie" in refreshed.headers.get("Vary", ""), "a Set-Cookie without Vary: Cookie"


def _with_flash_views(app: Flask) -> Flask:
    """A message shown once: stored by one request, taken by the next."""

    @app.post("/thanks")
    def thanks() -> Any:
        flash("thanks")
        return "ok"

    app.add_url_rule("/shown", "shown", lambda: jsonify(get_flashed_messages()))
    return app


def test_a_session_emptied_but_for_its_permanence_ends(redis_url: str) -> None:
    """An anonymous visitor's flash message, once shown, leaves the session holding
    only the permanence the hook sets: Flask-Session then deletes the session and
    its cookie (empty and modified), where it would otherwise stay stored, loaded by
    each of the visitor's requests for the idle timeout."""
    r = redis.Redis.from_url(redis_url)
    for app in (_with_flash_views(_flask_session_app(redis_url)),
                _with_flash_views(_permanent(make_app(redis_url)))):
        client = app.test_client()
        assert client.post("/thanks").status_code == 200 and r.dbsize() == 1, app.name
        shown = client.get("/shown")
        assert shown.get_json() == ["thanks"], app.name
        assert "Max-Age=0" in shown.headers.get("Set-Cookie", ""), f"{app.name}: cookie kept"
        assert r.dbsize() == 0, f"{app.name}: {r.keys('*')}"
        assert client.get_cookie("session") is None and client.get("/shown").get_json() == []


def test_flask_login_logout_ends_the_permanent_session(redis_url: str) -> None:
    """Flask-Login's ``logout_user()`` takes its keys out: with the permanence hook
    the session then holds nothing else, and ends (its id names nothing), as
    Flask-Session deleted it, instead of living on under the same id."""
    flask_login = pytest.importorskip("flask_login")
    app = _permanent(login_app(redis_url))

    @app.post("/logout-user")
    def logout_user() -> Any:
        flask_login.logout_user()
        return "ok"

    r = redis.Redis.from_url(redis_url)
    client = app.test_client()
    client.post("/flask-login/7")
    signed_in = client.get_cookie("session")
    assert signed_in is not None and client.get("/who").text == "7"
    out = client.post("/logout-user")
    assert any(c.startswith("session=;") for c in out.headers.getlist("Set-Cookie")), out.headers
    assert r.keys("statekit:session:*") == []
    replayed = app.test_client()
    replayed.set_cookie("session", signed_in.value)
    assert replayed.get("/who").text == "None"
