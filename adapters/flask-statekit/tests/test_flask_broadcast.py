"""Flask adapter for broadcast: shared values in views, templates and the CLI."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify, render_template_string

from flask_statekit import StateKit, get_state
from flask_statekit.broadcast import shared, shared_value, shared_values
from statekit.broadcast import Broadcaster, SharedValues
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis

PREFIX = "flaskbc"

#: run by the CLI test: computes once, then stops its own scheduler
cli_broadcaster: Broadcaster | None = None


def make_app(url: str, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(STATEKIT_REDIS_URL=url, STATEKIT_KEY_PREFIX=PREFIX, **config)
    for other in ("CACHE", "SESSIONS", "BLOBS", "LIFECYCLE"):  # this file tests broadcast only
        app.config[f"STATEKIT_{other}_ENABLED"] = False
    StateKit(app)

    @app.get("/count")
    def count() -> Any:
        sv = shared_value("users_count")
        return jsonify(value=shared("users_count"), version=sv.version, stale=sv.is_stale)

    @app.get("/page")
    def page() -> str:
        return render_template_string("{{ shared.users_count }} users; motd={{ shared['motd'] }}")

    return app


def test_views_and_templates_see_published_values(redis_url: str) -> None:
    app = make_app(redis_url, STATEKIT_BROADCAST_DEFAULTS={"users_count": 0})
    assert isinstance(get_state(app).broadcast, SharedValues)
    assert "broadcast" in get_state(app).features
    client = app.test_client()
    assert client.get("/count").json == {"value": 0, "version": 0, "stale": True}
    b = Broadcaster(redis_url, key_prefix=PREFIX)
    b.publish("users_count", 12)
    b.publish("motd", "hi")
    with app.app_context():
        wait_for(lambda: shared_values().get("users_count") == 12)
    assert client.get("/count").json == {"value": 12, "version": 1, "stale": False}
    assert client.get("/page").text == "12 users; motd=hi"


def test_late_app_sees_retained_value_on_first_request(redis_url: str) -> None:
    Broadcaster(redis_url, key_prefix=PREFIX).publish("users_count", 99)
    app = make_app(redis_url, STATEKIT_BROADCAST_MAX_AGE="60")
    assert app.test_client().get("/count").json == {"value": 99, "version": 1, "stale": False}


def test_feature_can_be_disabled(redis_url: str) -> None:
    app = make_app(redis_url, STATEKIT_BROADCAST_ENABLED=False)
    assert "broadcast" not in get_state(app).features
    assert "shared" not in app.jinja_env.globals


def test_cli_command_runs_the_configured_broadcaster(redis_url: str) -> None:
    global cli_broadcaster
    b = cli_broadcaster = Broadcaster(redis_url, key_prefix=PREFIX)

    @b.every(0.1, name="users_count")
    def users_count() -> int:
        b.stop(0)  # one computation is enough for the test
        return 5

    app = make_app(redis_url, STATEKIT_BROADCASTER=f"{__name__}:cli_broadcaster")
    result = app.test_cli_runner().invoke(args=["statekit-broadcast"])
    assert result.exit_code == 0, result.output
    wait_for(lambda: b.retained("users_count") == (1, 5))
    assert app.test_client().get("/count").json["value"] == 5


def test_cli_command_without_broadcaster_is_a_usage_error(redis_url: str) -> None:
    app = make_app(redis_url)
    result = app.test_cli_runner().invoke(args=["statekit-broadcast"])
    assert result.exit_code == 2
    assert "STATEKIT_BROADCASTER" in result.output
