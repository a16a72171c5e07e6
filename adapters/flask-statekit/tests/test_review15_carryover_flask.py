"""Review 15 (security): cookie confusion in the Flask carry-over. An old cookie is
carried over only when the old app would have accepted it: its SECRET_KEY or one of
SECRET_KEY_FALLBACKS (a rotation before the switch), its salt, its maximum age."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, session
from itsdangerous import Signer, URLSafeTimedSerializer

from flask_statekit import StateKit, get_state

pytestmark = pytest.mark.redis

OLD, NEW = "review15-old-secret-0123456789abcdef", "review15-new-secret-0123456789abcdef"
DATA = {"_user_id": "alice", "cart": ["apple"]}


def _app(redis_url: str, **config: Any) -> Flask:
    app = Flask("after")
    app.config.update({"STATEKIT_SESSION_URL": redis_url, "STATEKIT_CACHE_ENABLED": False,
                       "STATEKIT_BROADCAST_ENABLED": False, **config})
    StateKit(app)

    @app.get("/get")
    def get() -> Any:
        return jsonify(dict(session))

    return app


def _flask_cookie(secret: str, data: dict[str, Any], *, salt: str = "cookie-session") -> str:
    """What Flask's cookie sessions (or, with another salt, something else) signed."""
    app = Flask("before")
    app.secret_key = secret
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    assert serializer is not None
    if salt == "cookie-session":
        return str(serializer.dumps(data))
    return URLSafeTimedSerializer(secret, salt=salt, serializer=serializer.serializer,
                                  signer_kwargs=serializer.signer_kwargs).dumps(data)


def _get(app: Flask, cookie: str) -> Any:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client.get("/get").json


@pytest.mark.parametrize("case", ["current-key", "fallback-key", "another-app", "another-salt",
                                  "itsdangerous-default-salt", "flask-session-id"])
def test_flask_cookie_is_carried_over_only_as_the_old_app_accepted_it(redis_url: str, case: str) -> None:
    cookie = {
        "current-key": lambda: _flask_cookie(NEW, DATA),
        "fallback-key": lambda: _flask_cookie(OLD, DATA),  # signed before the rotation
        "another-app": lambda: _flask_cookie("another-app-secret-0123456789abcd", DATA),
        "another-salt": lambda: _flask_cookie(NEW, DATA, salt="flask-session"),
        "itsdangerous-default-salt": lambda: _flask_cookie(NEW, DATA, salt="itsdangerous"),
        # Flask-Session's signed id, same key: a string, not the session
        "flask-session-id": lambda: Signer(NEW, salt="flask-session",
                                           key_derivation="hmac").sign("a").decode(),
    }[case]()
    app = _app(redis_url, SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD],
               STATEKIT_SESSION_CARRY_OVER="flask-cookie")
    store = get_state(app).sessions
    accepted = case in ("current-key", "fallback-key")
    assert _get(app, cookie) == (DATA if accepted else {})
    assert store.counters.get("carried_over") == int(accepted)
    assert store.counters.get("rejected_cookies") == int(not accepted)


def test_flask_cookie_older_than_the_session_lifetime_is_refused(redis_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    app = _app(redis_url, SECRET_KEY=NEW, STATEKIT_SESSION_CARRY_OVER="flask-cookie",
               PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=1))
    real = itsdangerous.timed.TimestampSigner.get_timestamp
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                        lambda self: real(self) - 3601)
    stale = _flask_cookie(NEW, DATA)
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                        lambda self: real(self) - 3500)
    fresh = _flask_cookie(NEW, DATA)
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", real)
    assert _get(app, stale) == {}
    assert _get(app, fresh) == DATA


@pytest.mark.parametrize("signed_with", [NEW, OLD, "another-app-secret-0123456789abcd"])
def test_flask_session_signed_id_verifies_under_the_key_and_its_fallbacks(redis_url: str,
                                                                          signed_with: str) -> None:
    """Flask-Session's signed id: the current key or a fallback verifies; another
    app's key (the same id, in the same shared Redis) does not, and nothing is read."""
    import msgpack

    old_url = redis_url.rsplit("/", 1)[0] + "/3"
    old = redis.Redis.from_url(old_url)
    try:
        sid = f"review15-{signed_with[:3]}-sid"
        old.set("session:" + sid, msgpack.packb(DATA))
        cookie = Signer(signed_with, salt="flask-session", key_derivation="hmac").sign(sid).decode()
        app = _app(redis_url, SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD], SESSION_USE_SIGNER=True,
                   STATEKIT_SESSION_CARRY_OVER="flask-session", STATEKIT_SESSION_CARRY_OVER_URL=old_url)
        accepted = signed_with != "another-app-secret-0123456789abcd"
        assert _get(app, cookie) == (DATA if accepted else {})
        assert old.exists("session:" + sid) == (not accepted)
        old.delete("session:" + sid)
    finally:
        old.close()
