"""django_statekit.lifecycle: the WSGI wrapper and the Django middleware."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tests_django_urls
from django.http import HttpRequest, HttpResponse
from django.urls import path
from werkzeug.test import Client

from django_statekit import lifecycle
from statekit.lifecycle import DrainState, set_drain_state

views_run: list[str] = []


def write_view(request: HttpRequest) -> HttpResponse:
    views_run.append(request.method or "")
    return HttpResponse("written")


tests_django_urls.urlpatterns.append(path("lifecycle/write", write_view))


@pytest.fixture
def drain() -> Iterator[DrainState]:
    state = DrainState()
    set_drain_state(state)
    lifecycle._lifecycle = None
    views_run.clear()
    yield state
    set_drain_state(None)
    lifecycle._lifecycle = None


def test_wsgi_wrapper_answers_endpoints_before_django(drain: DrainState, django_settings) -> None:
    django_settings.set(ALLOWED_HOSTS=["example.com"])
    c = Client(lifecycle.get_wsgi_application())
    # a probe by IP passes even though ALLOWED_HOSTS would refuse it
    r = c.get("/healthz", headers={"Host": "10.0.0.7"})
    assert r.status_code == 200 and r.json == {"status": "ok", "draining": False}
    assert c.get("/readyz", headers={"Host": "10.0.0.7"}).json == {"status": "ready", "checks": {}}
    r = c.post("/lifecycle/write", headers={"Host": "example.com"})
    assert r.status_code == 200 and r.text == "written"
    drain.start_drain()
    r = c.post("/lifecycle/write", headers={"Host": "example.com"})
    assert r.status_code == 503 and r.headers["X-Statekit-Drain"] == "reject"
    assert r.headers["Retry-After"] == "1"
    assert views_run == ["POST"]
    assert c.get("/readyz").status_code == 503


def test_settings_configure_paths_and_mode(drain: DrainState, django_settings) -> None:
    django_settings.set(STATEKIT_HEALTH_PATH="/-/live", STATEKIT_READY_PATH="/-/ready",
                        STATEKIT_DRAIN_MODE="serve", STATEKIT_RETRY_AFTER=9)
    lc = lifecycle.get_lifecycle()
    assert (lc.health_path, lc.ready_path, lc.mode, lc.retry_after) == ("/-/live", "/-/ready", "serve", 9)

    def empty(environ, start_response):
        start_response("204 No Content", [])
        return []

    c = Client(lifecycle.wrap(empty))
    assert c.get("/-/live").status_code == 200
    assert c.get("/healthz").status_code == 204


def test_django_middleware(drain: DrainState, django_settings) -> None:
    from django.test import Client as DjangoClient

    django_settings.set(MIDDLEWARE=["django_statekit.lifecycle.DrainMiddleware"])
    c = DjangoClient()
    assert c.get("/healthz").json() == {"status": "ok", "draining": False}
    assert c.post("/lifecycle/write").content == b"written"
    assert drain.slot_info(0).completed == 1
    drain.start_drain()
    r = c.post("/lifecycle/write")
    assert r.status_code == 503 and r["X-Statekit-Drain"] == "reject"
    assert c.get("/readyz").status_code == 503
    assert views_run == ["POST"]


def test_drain_middleware_under_the_wsgi_wrapper_counts_once(drain: DrainState, django_settings) -> None:
    django_settings.set(MIDDLEWARE=["django_statekit.lifecycle.DrainMiddleware"])
    c = Client(lifecycle.get_wsgi_application())
    r = c.post("/lifecycle/write")
    assert r.text == "written"
    r.close()  # the wrapper counts a request until its body is closed
    assert drain.totals()["started"] == 1 and drain.totals()["completed"] == 1
