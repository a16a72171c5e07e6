"""Review 15 of the Django session engine and SessionOutageMiddleware, on a real
Redis, each compared with Django's own cache backend (``backends.cache``).

* logout (``logout()``: ``flush()``) then a message in the same request: the old
  key is gone with either engine, and the message goes under a new key (not a
  defect: Django's logout is ``flush()``, and its ``clear()`` alone empties the
  session under its key in Django's own engines too).
* ``login()`` (``cycle_key()``), then the view fails with a 500: SessionMiddleware
  saves nothing and sends no cookie on a 5xx. Django's own engines leave the
  browser with a key that names nothing, and its next login works. statekit left
  it with the pre-login key, a tombstone for ``STATEKIT_SESSION_ALIAS_WINDOW``
  seconds, for which no session cookie was sent at all: every login retried in
  that window answered 200 and left the browser anonymous.
* a cookie of the session's name that this app did not sign (another app's on the
  same domain) was deleted on every response that read the session
  (SessionMiddleware deletes the cookie of an empty session); Django's own engines
  do it too, but a cookie statekit can tell is not its own is now left alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import tests_django_urls
from django.contrib.auth import get_user_model, login, logout
from django.contrib.messages import get_messages
from django.contrib.messages import info as message
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path
from test_django_sessions import MIDDLEWARE, _db, configure  # noqa: F401 - _db: a fixture

from django_statekit.sessions import get_core_store

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("_db")]

ENGINES = ["statekit", "django-cache"]


def _engine(django_settings: Any, redis_url: str, engine: str, **extra: Any) -> None:
    configure(django_settings, redis_url)
    if extra:
        django_settings.set(**extra)
    if engine == "django-cache":
        django_settings.set(SESSION_ENGINE="django.contrib.sessions.backends.cache")


def v_logout_message(request: HttpRequest) -> HttpResponse:
    logout(request)
    message(request, "logged out")
    return HttpResponse("ok")


def v_messages(request: HttpRequest) -> HttpResponse:
    return JsonResponse([m.message for m in get_messages(request)], safe=False)


def v_login_fails(request: HttpRequest, username: str) -> HttpResponse:
    user, _ = get_user_model().objects.get_or_create(username=username)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    raise RuntimeError("the view fails after the login")


tests_django_urls.urlpatterns += [
    path("review15/logout-message", v_logout_message),
    path("review15/messages", v_messages),
    path("review15/login-fails/<str:username>", v_login_fails),
]

MESSAGES = [*MIDDLEWARE, "django.contrib.messages.middleware.MessageMiddleware"]


@pytest.mark.parametrize("engine", ENGINES)
def test_logout_then_a_message_leaves_no_session_under_the_old_key(
        django_settings: Any, redis_url: str, engine: str) -> None:
    _engine(django_settings, redis_url, engine, MIDDLEWARE=MESSAGES,
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions",
                            "django.contrib.messages", "django_statekit"],
            MESSAGE_STORAGE="django.contrib.messages.storage.session.SessionStorage")
    browser = Client()
    browser.get("/sessions/login/ada")
    browser.get("/sessions/set/cart/apple")
    before = browser.cookies["sessionid"].value
    browser.get("/review15/logout-message")
    after = browser.cookies["sessionid"].value
    thief = Client()
    thief.cookies["sessionid"] = before
    answer = (after != before, thief.get("/sessions/get").json(), thief.get("/sessions/whoami").text)
    assert answer == (True, {}, "anonymous")
    assert browser.get("/review15/messages").json() == ["logged out"]
    assert browser.get("/sessions/whoami").text == "anonymous"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_login_whose_view_fails_leaves_the_browser_able_to_log_in(
        django_settings: Any, redis_url: str, engine: str) -> None:
    _engine(django_settings, redis_url, engine)
    browser = Client(raise_request_exception=False)
    browser.get("/sessions/set/cart/apple")
    assert browser.get("/review15/login-fails/ada").status_code == 500
    assert browser.get("/sessions/whoami").text == "anonymous"  # the login was not saved
    assert browser.get("/sessions/login/ada").status_code == 200  # tried again at once
    assert browser.get("/sessions/whoami").text == "ada"


def test_a_login_whose_view_fails_keeps_the_data_under_the_rotated_key(
        django_settings: Any, redis_url: str) -> None:
    """statekit's rotation stored the session under the new key already: the 500
    sends that key (as the outage's 503 does), so the cart survives."""
    configure(django_settings, redis_url)
    browser = Client(raise_request_exception=False)
    browser.get("/sessions/set/cart/apple")
    before = browser.cookies["sessionid"].value
    resp = browser.get("/review15/login-fails/ada")
    morsel = resp.cookies.get("sessionid")
    assert resp.status_code == 500 and morsel is not None and morsel.value not in ("", before)
    assert morsel["httponly"] and morsel["secure"]
    assert browser.get("/sessions/get").json() == {"cart": "apple"}
    assert browser.get("/sessions/whoami").text == "anonymous"


FOREIGN = ["another-apps-session-value-0123456789", "short"]


@pytest.mark.parametrize("foreign", FOREIGN)
def test_a_cookie_this_app_did_not_sign_is_not_deleted(
        django_settings: Any, redis_url: str, foreign: str) -> None:
    configure(django_settings, redis_url)
    browser = Client()
    browser.cookies["sessionid"] = foreign
    for url in ("/sessions/get", "/sessions/whoami"):  # reads the session; the auth middleware's
        resp = browser.get(url)
        assert (resp.status_code, resp.cookies.get("sessionid")) == (200, None)
    assert browser.cookies["sessionid"].value == foreign
    resp = browser.get("/sessions/set/cart/apple")  # the app's own session then replaces it
    own = resp.cookies["sessionid"].value
    assert get_core_store().unsign(own) is not None


def test_a_cookie_of_this_app_naming_no_session_is_still_deleted(
        django_settings: Any, redis_url: str) -> None:
    """statekit's own cookie whose session ended (revoked, expired) is deleted as
    Django deletes it: only cookies it cannot have signed are left alone."""
    configure(django_settings, redis_url)
    store = get_core_store()
    ended = store.sign(store.new().sid)
    browser = Client()
    browser.cookies["sessionid"] = ended
    resp = browser.get("/sessions/get")
    morsel = resp.cookies.get("sessionid")
    assert morsel is not None and morsel.value == ""


@pytest.mark.parametrize("engine", ENGINES)
def test_a_login_sent_with_the_key_of_a_session_just_rotated_logs_in(
        django_settings: Any, redis_url: str, engine: str) -> None:
    """A login whose answer was lost (the browser never got its new key) is sent
    again with the pre-login key, a tombstone for the alias window: statekit sent no
    session cookie for such a request, its login's neither, so the browser stayed
    anonymous until the window passed. Django's own engine logs it in."""
    _engine(django_settings, redis_url, engine)
    first = Client()
    first.get("/sessions/set/cart/apple")
    before = first.cookies["sessionid"].value
    first.get("/sessions/login/ada")  # its answer lost: the browser still holds *before*
    browser = Client()
    browser.cookies["sessionid"] = before
    resp = browser.get("/sessions/login/ada")
    assert resp.status_code == 200 and browser.cookies["sessionid"].value not in ("", before)
    assert browser.get("/sessions/whoami").text == "ada"
