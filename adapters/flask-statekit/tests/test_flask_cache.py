"""Flask: StateKit(app) exposes the cache; Flask-Caching runs on statekit's cachelib class."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify

from flask_statekit import StateKit, get_state
from flask_statekit.cache import cache
from statekit.cache import Cache
from statekit.errors import ConfigError

pytestmark = pytest.mark.redis

ONLY_CACHE = {f"STATEKIT_{f}_ENABLED": False for f in ("SESSIONS", "BLOBS", "BROADCAST", "LIFECYCLE")}


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s" * 32, **ONLY_CACHE, **config)
    StateKit(app)
    calls: list[int] = []

    @app.get("/count")
    def count() -> Any:
        return jsonify(hits=cache.incr("hits"))

    @app.get("/report")
    def report() -> Any:
        def build() -> dict[str, int]:
            calls.append(1)
            return {"rows": len(calls)}

        return jsonify(cache.get_or_set("report", build, ttl=60))

    return app


def test_state_cache_and_proxy_in_views(redis_url: str) -> None:
    app = make_app(STATEKIT_REDIS_URL=redis_url, STATEKIT_CACHE_NEAR_CACHE=100,
                   STATEKIT_CACHE_DEFAULT_TTL="120", STATEKIT_KEY_PREFIX="flaskapp")
    state = get_state(app)
    assert isinstance(state.cache, Cache)
    assert app.extensions["statekit"].cache is state.cache
    assert state.cache.near_size == 100 and state.cache.default_ttl == 120.0
    client = app.test_client()
    assert [client.get("/count").json["hits"] for _ in range(3)] == [1, 2, 3]
    assert client.get("/report").json == {"rows": 1}
    assert client.get("/report").json == {"rows": 1}
    other_worker = make_app(STATEKIT_REDIS_URL=redis_url, STATEKIT_KEY_PREFIX="flaskapp")
    assert other_worker.test_client().get("/count").json["hits"] == 4
    with app.app_context():
        assert cache.get("hits") == 4


def test_two_apps_two_caches(redis_url: str) -> None:
    a = make_app(STATEKIT_CACHE_URL=redis_url, STATEKIT_CACHE_NAMESPACE="a")
    b = make_app(STATEKIT_CACHE_URL="memory://flask-b")
    with a.app_context():
        cache.set("k", "a")
    with b.app_context():
        assert cache.get("k") is None
        cache.set("k", "b")
    with a.app_context():
        assert cache.get("k") == "a"


def test_signed_pickle_uses_the_secret_key(redis_url: str) -> None:
    app = make_app(STATEKIT_REDIS_URL=redis_url, STATEKIT_CACHE_SERIALIZER="signed-pickle")
    with app.app_context():
        cache.set("c", complex(1, 1))
        assert cache.get("c") == complex(1, 1)


def test_unconfigured_cache_fails_at_init_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """No URL: StateKit(app) refuses to start (naming the setting and the switch)
    instead of a 500 at the first cache call; switched off, there is no cache."""
    monkeypatch.delenv("STATEKIT_REDIS_URL", raising=False)
    monkeypatch.delenv("STATEKIT_CACHE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"cache enabled but no Redis URL.*STATEKIT_REDIS_URL.*"
                                          r"STATEKIT_CACHE_ENABLED = False"):
        make_app()
    app = make_app(STATEKIT_CACHE_ENABLED=False)
    with app.app_context(), pytest.raises(AttributeError, match="'cache' is not enabled"):
        cache.get("k")


def test_cache_outage_is_a_generic_503_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Redis away during a cache call in a view: a 503 with no address in the page, and
    one WARNING with the details instead of a traceback per request."""
    import socket

    from flask_statekit import UNAVAILABLE_PAGE
    from statekit.lifecycle import outages

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outages.reset()
    app = make_app(STATEKIT_REDIS_URL=f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2&retries=0")
    client = app.test_client()
    caplog.set_level("WARNING")
    for _ in range(4):
        resp = client.get("/count")
        assert resp.status_code == 503 and resp.get_data(as_text=True) == UNAVAILABLE_PAGE
        assert str(port) not in resp.get_data(as_text=True)
    outage_lines = [r for r in caplog.records if r.name == "statekit.outage"]
    assert len(outage_lines) == 1 and str(port) in outage_lines[0].getMessage()
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback per request


def test_flask_caching_with_statekit_cachelib(redis_url: str) -> None:
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="statekit.compat.cachelib.StatekitCache",
        CACHE_DEFAULT_TIMEOUT=60,
        CACHE_OPTIONS={"url": redis_url, "namespace": "flask-caching"},
    )
    fc = FlaskCache(app)
    calls: list[str] = []

    @app.get("/page")
    @fc.cached(timeout=30)
    def page() -> str:
        calls.append("page")
        return f"page {len(calls)}"

    @fc.memoize(timeout=30)
    def square(x: int) -> int:
        calls.append("square")
        return x * x

    client = app.test_client()
    assert client.get("/page").text == "page 1"
    assert client.get("/page").text == "page 1"
    with app.app_context():
        assert square(4) == 16
        assert square(4) == 16
        assert calls == ["page", "square"]
        fc.delete_memoized(square, 4)
        assert square(4) == 16
        assert calls.count("square") == 2
        fc.set("plain", {"a": 1})
        assert fc.get("plain") == {"a": 1}
        assert fc.get_many("plain", "nope") == [{"a": 1}, None]
        fc.clear()
        assert fc.get("plain") is None


def test_flask_caching_caches_responses_aborts_and_fragments(redis_url: str) -> None:
    """The documented Flask-Caching configuration (statekit's JSON codec): views that
    return a Response (jsonify) or abort() and {% cache %} fragments are cached, once,
    and come back with their status, headers and body (they were never cached before,
    silently, and fragments rendered twice)."""
    from flask import abort, make_response, render_template_string
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    app.config.update(CACHE_TYPE="statekit.compat.cachelib.StatekitCache",
                      CACHE_OPTIONS={"url": redis_url})
    fc = FlaskCache(app)
    calls: list[str] = []

    @app.get("/api")
    @fc.cached(timeout=60)
    def api() -> Any:
        calls.append("api")
        return jsonify(n=len(calls)), 201

    @app.get("/page")
    @fc.cached(timeout=60)
    def page() -> Any:
        calls.append("page")
        response = make_response("<p>page</p>")
        response.headers["X-Built"] = str(len(calls))
        return response

    @app.get("/gone")
    @fc.cached(timeout=60)
    def gone() -> Any:
        calls.append("gone")
        abort(410, description="moved away")

    @app.errorhandler(410)
    def handled(e: Any) -> Any:
        return f"handled: {e.description}", 410

    @app.get("/fragment")
    def fragment() -> str:
        def rendered() -> str:
            calls.append("fragment")
            return "expensive"

        return render_template_string(
            "{% cache 60, 'side' %}<b>{{ build() }}</b>{% endcache %}|{{ '<i>' }}", build=rendered)

    client = app.test_client()
    for _ in range(3):
        got = client.get("/api")
        assert got.status_code == 201 and got.json == {"n": 1} and got.mimetype == "application/json"
        got = client.get("/page")
        assert got.text == "<p>page</p>" and got.headers["X-Built"] == str(calls.index("page") + 1)
        got = client.get("/gone")
        assert got.status_code == 410 and got.text == "handled: moved away"
        got = client.get("/fragment")
        assert got.text == "<b>expensive</b>|&lt;i&gt;"  # the fragment is not escaped again
    assert sorted(calls) == ["api", "fragment", "gone", "page"]
