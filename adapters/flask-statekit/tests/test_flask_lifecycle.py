"""flask_statekit.lifecycle: health endpoints and drain wired by StateKit(app)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from flask_statekit import StateKit, get_state
from statekit.lifecycle import DrainState, Lifecycle, set_drain_state
from statekit.pytest_plugin import wait_for

seen: list[str] = []


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="flask-lifecycle-secret-0123456789", STATEKIT_BROADCAST_ENABLED=False,
                      STATEKIT_CACHE_ENABLED=False, STATEKIT_SESSIONS_ENABLED=False)  # no Redis needed
    app.config.update(config)

    @app.before_request
    def note() -> None:
        seen.append("before_request")

    @app.post("/write")
    def write() -> str:
        seen.append("view")
        return "written"

    StateKit(app)
    return app


@pytest.fixture
def drain() -> Iterator[DrainState]:
    state = DrainState()
    set_drain_state(state)
    seen.clear()
    yield state
    set_drain_state(None)


def test_state_lifecycle_and_endpoints(drain: DrainState) -> None:
    app = make_app()
    lc = get_state(app).lifecycle
    assert isinstance(lc, Lifecycle)
    assert "lifecycle" in get_state(app).features
    c = app.test_client()
    assert c.get("/healthz").json == {"status": "ok", "draining": False}
    assert c.get("/readyz").json == {"status": "ready", "checks": {}}
    assert c.post("/write").text == "written"
    assert seen == ["before_request", "view"]


def test_configured_paths_and_mode(drain: DrainState) -> None:
    app = make_app(STATEKIT_HEALTH_PATH="/-/live", STATEKIT_READY_PATH="/-/ready",
                   STATEKIT_DRAIN_MODE="serve", STATEKIT_RETRY_AFTER="7")
    c = app.test_client()
    assert c.get("/-/live").status_code == 200
    assert c.get("/-/ready").status_code == 200
    assert c.get("/healthz").status_code == 404
    assert get_state(app).lifecycle.mode == "serve"
    assert get_state(app).lifecycle.retry_after == 7


def test_draining_rejects_before_flask_runs(drain: DrainState) -> None:
    app = make_app()
    drain.start_drain()
    c = app.test_client()
    r = c.post("/write")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.headers["X-Statekit-Drain"] == "reject"
    assert seen == []  # neither before_request nor the view ran
    assert c.get("/readyz").status_code == 503
    assert c.get("/healthz").status_code == 200


def test_disabled_by_config(drain: DrainState) -> None:
    app = make_app(STATEKIT_LIFECYCLE_ENABLED=False)
    assert app.test_client().get("/healthz").status_code == 404


@pytest.mark.redis
@pytest.mark.s3
def test_readiness_checks_the_apps_redis_and_blob_store(drain: DrainState, redis_url: str, s3_url: str,
                                                        redis_server) -> None:
    app = make_app(STATEKIT_REDIS_URL=redis_url, STATEKIT_BLOBS_URL=s3_url, STATEKIT_READY_BUDGET="0.5")
    lc = get_state(app).lifecycle
    lc.cache_ttl = 0
    c = app.test_client()
    # the first probe may pass the budget while the checks build their clients (boto3
    # takes a while on a loaded machine); they finish in the background
    r = wait_for(lambda: (resp := c.get("/readyz")).status_code == 200 and resp, what="ready")
    assert r.json["checks"] == {"redis": "ok", "blobs": "ok"}
    redis_server.pause()
    try:
        r = c.get("/readyz")
    finally:
        redis_server.resume()
    assert r.status_code == 503 and r.json["checks"]["redis"] != "ok" and r.json["checks"]["blobs"] == "ok"
