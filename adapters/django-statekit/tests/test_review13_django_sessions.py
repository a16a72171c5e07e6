"""Review 13 of the Django session engine, as django.contrib.sessions' users use it:
what Django's own engines store and when."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import tests_django_urls
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path

pytestmark = pytest.mark.redis

MIDDLEWARE = [
    "django_statekit.middleware.SessionOutageMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
]


def v_new_cart(request: HttpRequest) -> HttpResponse:
    request.session["cart"] = []
    request.session["color"] = "red"
    return HttpResponse("ok")


def v_append(request: HttpRequest, item: str) -> HttpResponse:
    request.session["cart"].append(item)  # in place: Django's `modified` stays False
    return HttpResponse("ok")


def v_get(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(request.session.items()))


_threads: dict[str, int] = {}


async def v_async_read(request: HttpRequest) -> HttpResponse:
    _threads["view"] = threading.get_ident()
    return HttpResponse(str(await request.session.aget("cart")))


async def v_async_set(request: HttpRequest, value: str) -> HttpResponse:
    await request.session.aset("cart", value)
    return HttpResponse("ok")


def v_form(request: HttpRequest) -> HttpResponse:
    """A page with a form (a CSRF token) and a message: what a login page renders."""
    from django.contrib import messages
    from django.middleware.csrf import get_token

    messages.info(request, "Please sign in", fail_silently=True)
    return HttpResponse(f"<form><input name=csrfmiddlewaretoken value={get_token(request)}></form>")


_pause: dict[str, asyncio.Event] = {}


async def v_async_slow_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    """Loads the session, waits until the test lets it go on, then sets *key*."""
    seen = await request.session.aget("color")
    _pause["loaded"].set()
    await _pause["go"].wait()
    await request.session.aset(key, value)
    return HttpResponse(str(seen))


def v_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    request.session[key] = value
    return HttpResponse("ok")


tests_django_urls.urlpatterns += [
    path("r13/async-slow-set/<str:key>/<str:value>", v_async_slow_set),
    path("r13/set/<str:key>/<str:value>", v_set),
    path("r13/form", v_form),
    path("r13/async-read", v_async_read),
    path("r13/async-set/<str:value>", v_async_set),
    path("r13/new-cart", v_new_cart),
    path("r13/append/<str:item>", v_append),
    path("r13/get", v_get),
]


@pytest.mark.parametrize("engine", ["django_statekit.sessions", "django.contrib.sessions.backends.cache"])
def test_save_every_request_stores_in_place_changes_as_django_does(
        django_settings: Any, redis_url: str, engine: str) -> None:
    """With ``SESSION_SAVE_EVERY_REQUEST`` Django saves the session after every
    request, and its engines store the whole dict: a value changed in place
    (``request.session["cart"].append(x)``, which leaves ``modified`` False) is kept.
    Run against Django's cache engine as the reference: the same answers."""
    django_settings.set(SESSION_ENGINE=engine, STATEKIT_SESSION_URL=redis_url, MIDDLEWARE=MIDDLEWARE,
                        SESSION_SAVE_EVERY_REQUEST=True)
    c = Client()
    c.get("/r13/new-cart")
    c.get("/r13/append/apple")
    c.get("/r13/append/pear")
    assert c.get("/r13/get").json() == {"cart": ["apple", "pear"], "color": "red"}


def test_a_save_writes_back_no_key_it_only_read(django_settings: Any, redis_url: str) -> None:
    """Every save compares each key the request read (so in-place changes are kept),
    and writes only those that differ from what it loaded: a key another request
    changed meanwhile, read but not changed here, keeps the other request's value."""
    from django_statekit.sessions import SessionStore

    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url)
    s = SessionStore()
    s.update({"cart": ["apple"], "color": "red"})
    s.save()
    a, b = SessionStore(s.session_key), SessionStore(s.session_key)
    assert a["color"] == "red"
    a["cart"].append("pear")  # in place
    b["color"] = "blue"
    b.save()
    a.save()  # SESSION_SAVE_EVERY_REQUEST's save of a request that changed nothing itself
    assert dict(SessionStore(s.session_key).items()) == {"cart": ["apple", "pear"], "color": "blue"}


# -- the outage middleware under ASGI --------------------------------------------------


@pytest.fixture
def asgi_engine(django_settings: Any, redis_url: str) -> str:
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        MIDDLEWARE=MIDDLEWARE, STATEKIT_SESSION_COOKIE_SECURE=False)
    return redis_url


def test_the_outage_middleware_runs_on_the_event_loop_under_asgi(asgi_engine: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ASGI the middleware (required first in ``MIDDLEWARE``) runs on the event
    loop, as the async view does: a sync-only one made Django run it in a worker
    thread and the rest of the chain through ``async_to_sync``, two thread hops per
    request for every async view."""
    from django_statekit import middleware

    real = middleware.get_core_store

    def spy() -> Any:
        _threads["middleware"] = threading.get_ident()
        return real()

    monkeypatch.setattr(middleware, "get_core_store", spy)

    async def flow() -> bytes:
        c = AsyncClient()
        await c.get("/r13/async-set/apple")
        _threads.clear()
        return (await c.get("/r13/async-read")).content

    assert asyncio.run(flow()) == b"apple"
    assert _threads["middleware"] == _threads["view"]


@pytest.mark.parametrize("step", ["load", "write"])
def test_outage_under_asgi_is_503_and_keeps_the_cookie(asgi_engine: str, monkeypatch: pytest.MonkeyPatch,
                                                       step: str) -> None:
    """The async view's load (the async store) or SessionMiddleware's save fails:
    503 with ``Retry-After``, no cookie sent, the session as it was once Redis
    answers again."""
    from django_statekit.sessions import get_async_core_store, get_core_store
    from statekit.errors import BackendUnavailable

    def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("Redis stopped (test)")

    async def flow() -> tuple[int, str | None, bool, bytes]:
        c = AsyncClient(raise_request_exception=False)
        await c.get("/r13/async-set/apple")
        cookie = c.cookies["sessionid"].value
        engine = get_async_core_store().engine if step == "load" else get_core_store().engine
        with monkeypatch.context() as m:
            m.setattr(engine, step, down)
            resp = await c.get("/r13/async-set/pear")
        after = (await c.get("/r13/async-read")).content
        return resp.status_code, resp.get("Retry-After"), "sessionid" in resp.cookies, \
            after if c.cookies["sessionid"].value == cookie else b"cookie changed"

    assert asyncio.run(flow()) == (503, "5", False, b"apple")


@pytest.mark.parametrize("writer", ["csrf", "messages"])
def test_anonymous_outage_a_middleware_writing_the_session_is_503(
        django_settings: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, writer: str) -> None:
    """The ``anonymous`` outage policy serves a read-only empty session. A middleware
    that writes to it after the view (``CsrfViewMiddleware`` with ``CSRF_USE_SESSIONS``
    storing a new token, ``MessageMiddleware`` storing a message in the session) gets
    :class:`~statekit.errors.BackendUnavailable`, outside any view: the answer is the
    outage's 503 with ``Retry-After`` and no cookie change, not Django's 500."""
    from django_statekit.sessions import get_core_store
    from statekit.errors import BackendUnavailable

    extra = {"csrf": ["django.middleware.csrf.CsrfViewMiddleware"],
             "messages": ["django.contrib.messages.middleware.MessageMiddleware"]}[writer]
    django_settings.set(SESSION_ENGINE="django_statekit.sessions", STATEKIT_SESSION_URL=redis_url,
                        STATEKIT_SESSION_OUTAGE_POLICY="anonymous", MIDDLEWARE=MIDDLEWARE + extra,
                        CSRF_USE_SESSIONS=writer == "csrf",
                        MESSAGE_STORAGE="django.contrib.messages.storage.session.SessionStorage")
    c = Client(raise_request_exception=False)
    c.get("/r13/new-cart")
    cookie = c.cookies["sessionid"].value

    def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("Redis stopped (test)")

    with monkeypatch.context() as m:
        m.setattr(get_core_store().engine, "load", down)
        resp = c.get("/r13/form")
    assert (resp.status_code, resp.get("Retry-After"), "sessionid" in resp.cookies) == (503, "5", False)
    assert c.cookies["sessionid"].value == cookie
    assert c.get("/r13/get").json() == {"cart": [], "color": "red"}


def test_an_async_and_a_sync_view_of_one_session_keep_both_changes(asgi_engine: str) -> None:
    """Under ASGI an async view loads the session (the async store) and pauses; a sync
    view of the same browser sets another key and saves meanwhile; then the async
    view sets its key and SessionMiddleware saves it: both changes are kept (each
    save writes only what its request changed), and neither key is put back."""

    async def flow() -> tuple[bytes, dict[str, Any]]:
        _pause.update(loaded=asyncio.Event(), go=asyncio.Event())
        browser = AsyncClient()
        await browser.get("/r13/new-cart")
        sync_browser = Client()
        sync_browser.cookies = browser.cookies
        paused = asyncio.ensure_future(browser.get("/r13/async-slow-set/size/L"))
        await _pause["loaded"].wait()
        changed = await asyncio.to_thread(sync_browser.get, "/r13/set/color/blue")
        assert changed.status_code == 200
        _pause["go"].set()
        resp = await paused
        return resp.content, (await browser.get("/r13/get")).json()

    seen, data = asyncio.run(flow())
    assert seen == b"red" and data == {"cart": [], "color": "blue", "size": "L"}
