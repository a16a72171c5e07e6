"""Review 19 follow-ups: every duration a cache or a session store takes is taken as
its ``ttl`` is, a number of seconds or a ``timedelta`` (one check: config.number),
on a real Redis."""

from __future__ import annotations

import datetime as dt

import pytest
from flask import Flask

from statekit.cache import Cache
from statekit.errors import ConfigError
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis


def test_cache_durations_take_a_timedelta(redis_url: str) -> None:
    cache = Cache(redis_url, namespace="r19fu-td", stale_ttl=dt.timedelta(seconds=30),
                  lock_ttl=dt.timedelta(seconds=10), default_ttl=dt.timedelta(minutes=5))
    try:
        assert (cache.stale_ttl, cache.lock_ttl) == (30.0, 10.0)
        assert cache.get_or_set("k", lambda: 1, stale_ttl=dt.timedelta(seconds=5)) == 1
        with cache.lock("job", timeout=dt.timedelta(seconds=20)) as held:
            assert held.timeout == 20.0
        with pytest.raises(ConfigError, match="stale_ttl"):
            Cache(redis_url, stale_ttl=dt.timedelta(days=-1))
    finally:
        cache.close()


def test_session_store_timeouts_take_a_timedelta(redis_url: str) -> None:
    store = SessionStore(redis_url, secret_keys=["k"], idle_timeout=dt.timedelta(days=14),
                         absolute_lifetime=dt.timedelta(days=30))
    try:
        assert (store.idle_timeout, store.absolute_lifetime) == (14 * 86400.0, 30 * 86400.0)
        session = store.create({"a": 1})
        assert dict(store.open(store.sign(session.sid))) == {"a": 1}
    finally:
        store.close()


def _flask(redis_url: str, **config: object) -> Flask:
    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "s", "STATEKIT_SESSION_URL": redis_url, "STATEKIT_CACHE_ENABLED": False,
                       "STATEKIT_BROADCAST_ENABLED": False, **config})
    StateKit(app)
    return app


def test_flask_session_settings_take_a_timedelta(redis_url: str) -> None:
    app = _flask(redis_url, STATEKIT_SESSION_IDLE_TIMEOUT=dt.timedelta(hours=2),
                 STATEKIT_SESSION_ABSOLUTE_LIFETIME=dt.timedelta(days=7))
    store = app.session_interface.store  # type: ignore[attr-defined]
    assert (store.idle_timeout, store.absolute_lifetime) == (7200.0, 7 * 86400.0)


def test_a_zero_permanent_session_lifetime_is_named(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="PERMANENT_SESSION_LIFETIME"):
        _flask(redis_url, PERMANENT_SESSION_LIFETIME=0)
