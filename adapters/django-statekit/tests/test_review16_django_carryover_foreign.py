"""Review 16 of the Django session engine in carry-over mode
(``STATEKIT_SESSION_CARRY_OVER``), on a real Redis and the test database.

Without a carry-over, a cookie of the session's name that statekit cannot have
signed (another app's on the same domain) is left alone (0f3c9c1,
``test_review15_django_sessions``): SessionMiddleware deleted it on every response
that read the session. With a carry-over it still was: a cookie that is neither
statekit's nor a session of the previous engine (not an old key, or an old key the
previous engine does not know) was deleted on every such response. It is left alone
now, as in the normal mode. What is still deleted, as before and as Django deletes it:
statekit's own cookie naming no session, and the old cookie of a session the previous
engine holds and statekit refuses to read (deleted once: each request would read and
refuse it again), and a carried-over session's cookie at a logout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import test_django_sessions  # noqa: F401 - its views, /sessions/set, /sessions/login, /sessions/logout
from django.test import Client
from test_django_sessions_carryover import (  # noqa: F401 - _db: a fixture
    CART,
    _db,
    after,
    before,
    logged_in,
    switch,
)

from django_statekit.sessions import get_core_store

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("_db")]


@pytest.fixture(autouse=True)
def _rejections_logged_again(django_settings: Any) -> Iterator[None]:
    """The process's store logs one rejected cookie of a kind a minute: this file's
    must not silence another test's (test_tampered_old_cookie_is_refused looks for it)."""
    yield
    get_core_store()._reject_log.clear()


#: cookies of the session's name no engine here made: another app's value, one too short
#: to be any Django session key, and one shaped like a Django key that the previous
#: engine does not know (another Django app's on the same domain)
FOREIGN = ["another-apps-session-value-0123456789", "short", "anotherdjangoapp0key0abcdef01234"]


@pytest.mark.parametrize("foreign", FOREIGN)
@pytest.mark.parametrize("kind", ["db", "cache-django-redis"])
def test_a_foreign_cookie_is_left_alone_in_carry_over_mode(
        django_settings: Any, redis_url: str, kind: str, foreign: str) -> None:
    engine = before(django_settings, redis_url, kind)
    switch(django_settings, redis_url, engine, STATEKIT_SESSION_CARRY_OVER_PICKLE=kind.startswith("cache"))
    browser = Client()
    browser.cookies["sessionid"] = foreign
    for url in ("/carry/data", "/carry/me", "/carry/data"):  # each reads the session
        resp = browser.get(url)
        assert (resp.status_code, resp.cookies.get("sessionid")) == (200, None), url
    assert browser.cookies["sessionid"].value == foreign
    resp = browser.get("/sessions/set/cart/apple")  # the app's own session then replaces it
    own = resp.cookies["sessionid"].value
    assert get_core_store().unsign(own) is not None
    assert browser.get("/carry/data").json() == {"auth": False, "cart": "apple"}


def test_a_foreign_cookie_at_a_login_then_a_logout_is_left_alone(
        django_settings: Any, redis_url: str) -> None:
    """Logged in and out within the session the foreign cookie did not name: the
    logout's deletion is of statekit's cookie, not the other app's."""
    engine = before(django_settings, redis_url, "db")
    switch(django_settings, redis_url, engine)
    browser = Client()
    browser.cookies["sessionid"] = FOREIGN[0]
    logged_in_now = browser.get("/sessions/login/ada")
    own = logged_in_now.cookies["sessionid"].value
    assert get_core_store().unsign(own) is not None
    other = Client()  # the other app set its cookie again meanwhile
    other.cookies["sessionid"] = FOREIGN[0]
    assert other.get("/sessions/logout").cookies.get("sessionid") is None
    assert browser.get("/sessions/logout").cookies["sessionid"].value == ""  # statekit's own: deleted


def test_a_carried_over_session_logged_out_deletes_the_old_cookie(
        django_settings: Any, redis_url: str) -> None:
    """The first request after the switch carries the session over and logs out: the
    old cookie is deleted, as Django deletes it at a logout."""
    engine = before(django_settings, redis_url, "db")
    browser, old = logged_in("db")
    switch(django_settings, redis_url, engine)
    browser = after(browser)
    resp = browser.get("/sessions/logout")
    assert resp.cookies["sessionid"].value == ""
    thief = Client()
    thief.cookies["sessionid"] = old
    assert thief.get("/carry/me").json() == {"user": "anonymous", "cart": None}


def test_an_old_session_refused_is_deleted_once(django_settings: Any, redis_url: str) -> None:
    """Django's cache engine's pickle without ``STATEKIT_SESSION_CARRY_OVER_PICKLE``:
    the old session is there and refused, a fresh session; its cookie is deleted (the
    previous engine's, naming a session statekit will not read: each request would
    read and refuse it again)."""
    engine = before(django_settings, redis_url, "cache-django")
    browser, old = logged_in("cache-django")
    switch(django_settings, redis_url, engine)
    browser = after(browser)
    refused = get_core_store().counters.get("carry_over_refused")
    resp = browser.get("/carry/data")
    assert (resp.json(), resp.cookies["sessionid"].value) == ({"auth": False, "cart": None}, "")
    assert get_core_store().counters.get("carry_over_refused") == refused + 1
    assert browser.get("/carry/data").json() == {"auth": False, "cart": None}
    assert get_core_store().counters.get("carry_over_refused") == refused + 1  # not read again


def test_a_cookie_of_statekit_naming_no_session_is_deleted_in_carry_over_mode(
        django_settings: Any, redis_url: str) -> None:
    engine = before(django_settings, redis_url, "db")
    switch(django_settings, redis_url, engine)
    store = get_core_store()
    browser = Client()
    browser.cookies["sessionid"] = store.sign(store.new().sid)
    assert browser.get("/carry/data").cookies["sessionid"].value == ""


def test_the_carry_over_still_works(django_settings: Any, redis_url: str) -> None:
    engine = before(django_settings, redis_url, "db")
    browser, old = logged_in("db")
    switch(django_settings, redis_url, engine)
    browser = after(browser)
    assert browser.get("/carry/me").json() == {"user": "alice", "cart": CART}
    assert browser.cookies["sessionid"].value != old
