"""A view that empties the session without reading it (``request.session.flush()``,
Django's ``logout()`` without the auth middleware) on a request carrying another
app's cookie of the session's name: the cookie is left alone, as when the session is
read (``test_review15_django_sessions``). The engine marks a foreign cookie when it
loads; a flush loads nothing, so the middleware still checks the signature itself
when no carry-over could make the key an old engine's."""

from __future__ import annotations

from typing import Any

import pytest
import tests_django_urls
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from test_django_sessions import _db, configure  # noqa: F401 - _db: a fixture

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("_db")]


def v_flush_unread(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("ok")


tests_django_urls.urlpatterns += [path("review16/flush-unread", v_flush_unread)]


FOREIGN = ["another-apps-session-value-0123456789", "anotherdjangoapp0key0abcdef01234"]


@pytest.mark.parametrize("foreign", FOREIGN)
def test_a_flush_without_a_read_leaves_another_apps_cookie_alone(
        django_settings: Any, redis_url: str, foreign: str) -> None:
    configure(django_settings, redis_url)
    browser = Client()
    browser.cookies["sessionid"] = foreign
    resp = browser.get("/review16/flush-unread")
    assert (resp.status_code, resp.cookies.get("sessionid")) == (200, None)
    assert browser.cookies["sessionid"].value == foreign
