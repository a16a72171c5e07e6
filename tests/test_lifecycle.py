"""statekit.lifecycle: drain state, health endpoints, the draining middleware."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from statekit.config import Settings
from statekit.errors import ConfigError
from statekit.lifecycle import (
    READY,
    DrainState,
    Lifecycle,
    LifecycleMiddleware,
    get_drain_state,
    set_drain_state,
)

calls: list[str] = []


@Request.application
def app(request: Request) -> Response:
    calls.append(request.path)
    return Response("hello " + request.path)


@pytest.fixture
def drain() -> Iterator[DrainState]:
    state = DrainState()
    set_drain_state(state)
    calls.clear()
    yield state
    set_drain_state(None)


def client(lc: Lifecycle | None = None) -> Client:
    return Client(LifecycleMiddleware(app, lc or Lifecycle()))


def test_serves_and_counts_when_not_draining(drain: DrainState) -> None:
    r = client().get("/x")
    assert r.status_code == 200 and r.text == "hello /x"
    assert "Connection" not in r.headers
    assert drain.slot_info(0).in_flight == 1  # until the server closes the response
    r.close()
    info = drain.slot_info(0)
    assert (info.started, info.completed, info.in_flight, info.rejected) == (1, 1, 0, 0)


def test_health_endpoints(drain: DrainState) -> None:
    c = client()
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok", "draining": False}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json == {"status": "ready", "checks": {}}
    assert calls == []  # the app never saw them
    assert drain.slot_info(0).started == 0


def test_paths_are_configurable(drain: DrainState) -> None:
    c = client(Lifecycle(health_path="/-/live", ready_path="/-/ready"))
    assert c.get("/-/live").json["status"] == "ok"
    assert c.get("/-/ready").json["status"] == "ready"
    assert c.get("/healthz").text == "hello /healthz"


def test_reject_mode_answers_503_before_the_app(drain: DrainState) -> None:
    drain.start_drain(serve_for=60)
    c = client(Lifecycle(retry_after=3))
    r = c.post("/write", data=b"x")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "3"
    assert r.headers["Connection"] == "close"
    assert r.headers["X-Statekit-Drain"] == "reject"
    assert calls == []
    assert c.get("/readyz").status_code == 503
    assert c.get("/readyz").json == {"status": "draining"}
    live = c.get("/healthz")
    assert live.status_code == 200 and live.json["draining"] is True
    assert drain.slot_info(0).rejected == 1


def test_serve_mode_serves_until_pre_stop_ends(drain: DrainState) -> None:
    drain.mode = "serve"
    drain.start_drain(serve_for=0.3)
    c = client()
    r = c.get("/a")
    assert r.status_code == 200 and r.headers["Connection"] == "close"
    assert c.get("/readyz").status_code == 503
    time.sleep(0.35)
    assert c.get("/b").status_code == 503
    assert calls == ["/a"]


def test_lifecycle_mode_overrides_drain_state(drain: DrainState) -> None:
    drain.start_drain(serve_for=60)  # drain state says reject
    r = client(Lifecycle(mode="serve")).get("/a")
    assert r.status_code == 200 and r.headers["Connection"] == "close"


def test_wsgiref_gets_no_hop_by_hop_header(drain: DrainState) -> None:
    drain.start_drain()
    r = client().get("/a", environ_overrides={"SERVER_SOFTWARE": "WSGIServer/0.2"})
    assert r.status_code == 503 and "Connection" not in r.headers


def test_app_exception_still_counts_finished(drain: DrainState) -> None:
    def boom(environ, start_response):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Client(LifecycleMiddleware(boom)).get("/")
    info = drain.slot_info(0)
    assert info.in_flight == 0 and info.completed == 1


def test_streaming_response_counts_in_flight_until_closed(drain: DrainState) -> None:
    def stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        yield b"b"

    mw = LifecycleMiddleware(stream)
    it = mw({"PATH_INFO": "/s", "REQUEST_METHOD": "GET"}, lambda s, h, e=None: lambda b: None)
    assert drain.slot_info(0).in_flight == 1
    assert b"".join(it) == b"ab"
    it.close()  # type: ignore[attr-defined]
    it.close()  # type: ignore[attr-defined]
    assert drain.slot_info(0).in_flight == 0 and drain.slot_info(0).completed == 1


def test_drain_state_is_shared_across_fork() -> None:
    state = DrainState(slots=3)
    pid = os.fork()
    if pid == 0:  # child: a worker in slot 2
        try:
            state.bind(2)
            state.mark_ready()
            state.request_started()
            state.request_started()
            state.request_finished()
            while not state.draining:
                time.sleep(0.01)
            state.request_rejected()
            state.mark_exited()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while state.slot_info(2).state != READY and time.monotonic() < deadline:
        time.sleep(0.01)
    state.start_drain()
    _, status = os.waitpid(pid, 0)
    assert status == 0
    info = state.slot_info(2)
    assert info.pid == pid and info.ready_at > 0
    assert (info.in_flight, info.started, info.completed, info.rejected) == (1, 2, 1, 1)
    assert state.totals() == {"in_flight": 1, "started": 2, "completed": 1, "rejected": 1}


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="drain mode"):
        DrainState(mode="nope")
    with pytest.raises(ConfigError, match="drain mode"):
        Lifecycle(mode="later")
    with pytest.raises(ConfigError, match="must start with"):
        Lifecycle(ready_path="readyz")
    with pytest.raises(ConfigError, match="budget"):
        Lifecycle(budget=0)


def test_default_drain_state_is_process_local() -> None:
    set_drain_state(None)
    a = get_drain_state()
    assert get_drain_state() is a and not a.draining
    set_drain_state(None)


def test_custom_check_failure_makes_unready(drain: DrainState) -> None:
    def bad(timeout: float) -> None:
        raise OSError("disk gone")

    lc = Lifecycle(checks={"disk": bad}, cache_ttl=0)
    r = client(lc).get("/readyz")
    assert r.status_code == 503
    assert r.json == {"status": "unavailable", "checks": {"disk": "OSError: disk gone"}}


def test_slow_check_fails_within_budget(drain: DrainState) -> None:
    def slow(timeout: float) -> None:
        time.sleep(timeout * 4)

    lc = Lifecycle(checks={"slow": slow}, budget=0.1, cache_ttl=0)
    status, body = lc.readiness()
    assert status == 503 and "no answer within 0.1s" in body["checks"]["slow"]


def test_readiness_is_cached(drain: DrainState) -> None:
    n: list[int] = []
    lc = Lifecycle(checks={"count": lambda t: n.append(1)}, cache_ttl=60)
    assert lc.readiness()[0] == lc.readiness()[0] == 200
    assert len(n) == 1


@pytest.mark.redis
@pytest.mark.s3
def test_readiness_checks_redis_and_s3(drain: DrainState, redis_url: str, s3_url: str) -> None:
    # budget: a first check builds its clients (boto3's takes ~0.8 s on a loaded 2-core machine)
    lc = Lifecycle(Settings(redis_url=redis_url, blobs_url=s3_url), cache_ttl=0, budget=10)
    assert sorted(lc.checks) == ["blobs", "redis"]
    r = client(lc).get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json == {"status": "ready", "checks": {"blobs": "ok", "redis": "ok"}}


@pytest.mark.redis
def test_readiness_fails_when_redis_hangs(drain: DrainState, redis_server, redis_url: str) -> None:
    lc = Lifecycle(Settings(redis_url=redis_url), budget=0.3, cache_ttl=0)
    assert lc.readiness()[0] == 200
    redis_server.pause()
    try:
        status, body = lc.readiness()
    finally:
        redis_server.resume()
    assert status == 503 and body["checks"]["redis"] != "ok"
    assert lc.readiness()[0] == 200


def test_file_blob_store_check(drain: DrainState, tmp_path) -> None:
    lc = Lifecycle(Settings(blobs_url=f"file://{tmp_path}"), cache_ttl=0)
    assert lc.readiness()[0] == 200
    lc = Lifecycle(Settings(blobs_url=f"file://{tmp_path}/missing"), cache_ttl=0)
    status, body = lc.readiness()
    assert status == 503 and "not a writable directory" in body["checks"]["blobs"]


def test_json_bodies_are_json(drain: DrainState) -> None:
    r = client().get("/readyz")
    assert json.loads(r.data) == {"status": "ready", "checks": {}}
    assert r.headers["Cache-Control"] == "no-store"


def test_file_wrapper_responses_keep_the_sendfile_path(drain: DrainState) -> None:
    class FileWrapper:
        def __init__(self, f, blksize=8192):
            self.f = f
            self.closed = False

        def __iter__(self):
            return iter([b"file"])

        def close(self):
            self.closed = True

    def app_(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](None)

    mw = LifecycleMiddleware(app_)
    env = {"PATH_INFO": "/f", "REQUEST_METHOD": "GET", "wsgi.file_wrapper": FileWrapper}
    result = mw(env, lambda s, h, e=None: lambda b: None)
    assert isinstance(result, FileWrapper)  # not wrapped: the server can still sendfile
    assert drain.slot_info(0).in_flight == 1
    result.close()
    result.close()
    assert result.closed is True
    assert drain.slot_info(0).in_flight == 0 and drain.slot_info(0).completed == 1


def test_outage_log_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    from statekit.lifecycle import OutageLog

    log = OutageLog()
    caplog.set_level("INFO", logger="statekit.outage")
    for _ in range(5):
        log.down("cache redis://10.0.0.5:6379/0", ConnectionError("refused"))
    log.down("blob store s3://b", "timeout")
    assert log.is_down() and log.is_down("blob store s3://b")
    log.up("cache redis://10.0.0.5:6379/0")
    log.up("cache redis://10.0.0.5:6379/0")
    log.all_up()
    assert not log.is_down()
    messages = [r.getMessage() for r in caplog.records if r.name == "statekit.outage"]
    assert len(messages) == 4 and all(r.levelname == "WARNING" for r in caplog.records)
    assert "cache redis://10.0.0.5:6379/0 unavailable (ConnectionError: refused)" in messages[0]
    assert "blob store s3://b unavailable (timeout)" in messages[1]
    assert "available again" in messages[2] and "blob store s3://b available again" in messages[3]


def test_a_passing_readiness_check_ends_logged_outages(drain: DrainState, tmp_path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from statekit.lifecycle import outages

    outages.reset()
    outages.down("blob store file://x", "gone")
    caplog.set_level("WARNING", logger="statekit.outage")
    assert Lifecycle(Settings(blobs_url=f"file://{tmp_path}"), cache_ttl=0).readiness()[0] == 200
    assert not outages.is_down()
    last = caplog.records[-1].getMessage()
    assert last.startswith("statekit: blob store file://x available again")
