"""Review 14 of the Django session engine and SessionOutageMiddleware: what a 503 of
an outage tells the browser when a new session's first save timed out, on a real
Redis that is paused (SIGSTOP: the write reaches it, the reply is lost) or killed."""

from __future__ import annotations

from typing import Any

import pytest
import tests_django_urls
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from test_django_sessions import configure, outage_url

from django_statekit.sessions import get_core_store
from statekit.embedded import RedisServer
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("fault", ["pause", "kill"])
def test_a_new_sessions_first_save_timing_out_sends_its_cookie_with_the_503(
        django_settings: Any, durable_redis: RedisServer, fault: str) -> None:
    """A new session's first save (SessionMiddleware's) times out: Redis paused, the
    create reached it and its reply was lost; or killed, it did not. The 503 carries
    the new session's cookie when it may be stored (``Session.maybe_stored``): the
    browser's retry continues that session (no second one); killed, none. Without it
    a stored create was orphaned under a key the browser never learned, and the cart
    was lost."""
    configure(django_settings, outage_url(durable_redis))

    def v_first_cart(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = "apple"
        getattr(durable_redis, fault)()  # between the view and SessionMiddleware's save
        return HttpResponse("ok")

    tests_django_urls.urlpatterns.append(path("review14/first-cart", v_first_cart))
    try:
        Client().get("/sessions/set/warm/up")  # a pooled connection: the create is sent on it
        browser = Client(raise_request_exception=False)
        try:
            resp = browser.get("/review14/first-cart")
        finally:
            if fault == "pause":
                durable_redis.resume()
        morsel = resp.cookies.get("sessionid")
        answer = (resp.status_code, resp["Retry-After"], morsel is not None and bool(morsel.value))
        if fault == "kill":
            # the killed server's socket is found closed before the create is sent and
            # the reconnect is refused: certainly not stored, so no cookie names it
            # (review 15: it sent one for a session that did not exist)
            assert answer == (503, "5", False)
            durable_redis.start()
            assert browser.get("/sessions/get").json() == {}  # a fresh session
            return
        assert answer == (503, "5", True)
        assert morsel is not None and morsel["httponly"] and morsel["secure"] and morsel["max-age"]
        store = get_core_store()
        sid = store.unsign(morsel.value)
        assert sid is not None
        wait_for(lambda: store.load(sid) is not None, timeout=30, what="Redis to run the create it took")
        assert browser.get("/sessions/get").json() == {"cart": "apple"}
        assert browser.cookies["sessionid"].value == morsel.value
        with durable_redis.client() as r:  # the warm-up's and this one: no second session
            assert len(r.keys(f"{store.key_prefix}:session:*")) == 2
    finally:
        tests_django_urls.urlpatterns.pop()


@pytest.mark.parametrize("first", ["new", "rotated"])
def test_a_failure_inside_the_view_sends_the_cookie_its_session_needs(
        django_settings: Any, durable_redis: RedisServer, first: str) -> None:
    """``request.session.incr`` times out inside the view (Redis paused): the 503
    carries the cookie the session needs, as at SessionMiddleware's save: a new
    session's (its create, which ``incr`` makes first, may be stored), or the new key
    of a ``cycle_key()`` made before (the data lives there only)."""
    configure(django_settings, outage_url(durable_redis))

    def v_count(request: HttpRequest) -> HttpResponse:
        if first == "rotated":
            request.session.cycle_key()
        durable_redis.pause()
        return HttpResponse(str(request.session.incr("n")))  # type: ignore[attr-defined]

    tests_django_urls.urlpatterns.append(path("review14/count", v_count))
    try:
        browser = Client(raise_request_exception=False)
        browser.get("/sessions/set/cart/apple")  # a pooled connection, and a cart to keep
        if first == "new":
            browser.cookies.clear()
        try:
            resp = browser.get("/review14/count")
        finally:
            durable_redis.resume()
        morsel = browser.cookies.get("sessionid")
        assert resp.status_code == 503 and morsel is not None and morsel.value
        store = get_core_store()
        sid = store.unsign(morsel.value)
        assert sid is not None
        wait_for(lambda: store.load(sid) is not None, timeout=30, what="the session under the cookie's key")
        loaded = store.load(sid)
        assert loaded is not None and loaded.get("cart") == (None if first == "new" else "apple")
    finally:
        tests_django_urls.urlpatterns.pop()
