"""Review 13 of the Django session engine, as django.contrib.sessions' users use it:
what Django's own engines store and when."""

from __future__ import annotations

from typing import Any

import pytest
import tests_django_urls
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
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


tests_django_urls.urlpatterns += [
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
