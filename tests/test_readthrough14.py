"""Closing read-through of session 14's changes, on real servers (a killed Redis).

Found by it (each test failed before its fix):

* a call read the breaker's epoch *after* its closed-state check: a call that found
  the breaker closed, then saw another thread's failure open it before it read the
  epoch, took the new period as its own, and its own failure (Redis was down) moved
  the open time again, the very thing the epoch (23b742b) is there to prevent. The
  window is two bytecodes wide, so the test stands in for the other thread: a
  breaker whose closed-state check lets the failure that opens it happen right after
  (as a thread switch there would), on the sync fast path (``Cache.get``), the
  façade's plans (``Cache.set``) and ``AsyncCache.get``;
* a URL whose ``?password=`` (or ``sentinel_password=``, ``client_name=``) holds a raw
  ``@`` (legal in a query) and that had any other error (``socket_timeout=abc``, an
  unknown option) was taken for a password cut by a raw ``?`` (1b04888): the error
  showed the password's tail after its ``@`` (``'redis://***@tPASSWORD&...'``) and
  hid the real fault. 6abd2f0 said ``socket_timeout='abc' is not a number``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from statekit.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from statekit.cache import AsyncCache, Cache
from statekit.config import parse_url
from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable, ConfigError

pytestmark = pytest.mark.redis


class _OpenedMeanwhile(CircuitBreaker):
    """A breaker (threshold 1, ``reset_timeout`` 1 s, the clock ``now[0]``) that, once
    armed, is opened by "another thread" just after the next caller read its state
    as closed, half a second passing then; the caller's own call is still to fail."""

    def __init__(self) -> None:
        self.now = [0.0]
        self.armed = False
        super().__init__(1, 1.0, clock=lambda: self.now[0])

    @property  # type: ignore[override]
    def _state(self) -> str:
        state: str = self.__dict__["_st"]
        if self.armed:
            self.armed = False
            self.failure()  # another call's timeout opens it (at 0.0) ...
            self.now[0] = 0.5  # ... and the caller's call takes its time
        return state

    @_state.setter
    def _state(self, value: str) -> None:
        self.__dict__["_st"] = value


def _check(breaker: _OpenedMeanwhile) -> None:
    """The caller's failure began before the breaker opened: it neither moved the
    open time nor counted, so the breaker is half-open a second after it opened."""
    assert breaker.state == OPEN and breaker.opened == 1
    breaker.now[0] = 1.0
    assert breaker.state == HALF_OPEN, "a failure of a call that began closed moved the open time"


@pytest.mark.parametrize("call", [lambda c: c.get("k"), lambda c: c.set("k", "v")], ids=["get", "set"])
def test_a_breaker_opened_after_the_closed_check_is_not_the_callers_period(
        private_redis: RedisServer, call: Callable[[Cache], Any]) -> None:
    cache = Cache(private_redis.url, namespace="readthrough14", timeout=0.5, on_error="raise")
    breaker = _OpenedMeanwhile()
    cache.breaker = breaker
    try:
        cache.set("k", "v")  # connected
        assert breaker.state == CLOSED
        private_redis.kill()
        breaker.armed = True
        with pytest.raises(BackendUnavailable):
            call(cache)
        assert not breaker.armed  # it went through the closed-state check
        _check(breaker)
    finally:
        cache.close()


def test_async_a_breaker_opened_after_the_closed_check_is_not_the_callers_period(
        private_redis: RedisServer) -> None:
    async def body() -> None:
        cache = AsyncCache(private_redis.url, namespace="readthrough14", timeout=0.5, on_error="raise")
        breaker = _OpenedMeanwhile()
        cache.breaker = breaker
        try:
            await cache.set("k", "v")
            private_redis.kill()
            breaker.armed = True
            with pytest.raises(BackendUnavailable):
                await cache.get("k")
            assert not breaker.armed
            _check(breaker)
        finally:
            await cache.aclose()

    asyncio.run(body())


# -- a raw '@' in a query option's value --------------------------------------------------


@pytest.mark.parametrize(("url", "fault"), [
    ("redis://h:6379/0?password=s3cr@tPASSWORD&socket_timeout=abc", "socket_timeout='abc' is not a number"),
    ("redis://localhost:6379?password=s3cr@tPASSWORD&socket_timeout=abc", "socket_timeout='abc'"),
    ("redis://h/0?socket_timeout=abc&password=s3cr@tPASSWORD", "socket_timeout='abc'"),
    ("redis://h/0?password=s3cr@tPASSWORD&bogus=1", "after a password"),
    ("redis+sentinel://h/svc?sentinel_password=s3cr@tPASSWORD&db=x", "db"),
    ("redis://h/0?password=pa55&w0rd@tPASSWORD", "%26"),
])
def test_a_raw_at_in_a_password_option_is_not_a_cut_userinfo(url: str, fault: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_url(url)
    text = str(raised.value)
    assert "PASSWORD" not in text and "s3cr" not in text, text
    assert fault in text and "comes after a '?'" not in text, text


def test_a_raw_at_in_an_option_of_a_valid_url_and_a_cut_password_still_told() -> None:
    """The valid forms parse as before, and a raw '?' in the userinfo is still told."""
    assert parse_url("redis://h/0?password=s3cr@t").password == "s3cr@t"
    assert parse_url("redis://h?client_name=a@b").options["client_name"] == "a@b"
    with pytest.raises(ConfigError, match="%3F") as raised:
        parse_url("redis://:pa55?w0rd@h:6379/0")
    assert "w0rd" not in str(raised.value)
