"""Review 17's closing read: one check of "a number of seconds" (``config.number``)
serves every caller that had its own (``cache`` settings and ``tools._ttl_seconds`` /
``_stale_seconds`` / ``_lock_ms``, the scheduler's ``every()``, ``SharedValue(max_age)``,
blobs' ``expires``, the session store's timeouts, the adapters' settings), each keeping
the inputs it took and the error type it raised (a per-call argument: ValueError, a
setting or a constructor: ConfigError), with a message naming the argument and its bound.

One rule decides ``inf``: ``SharedValue(max_age=inf)`` was taken while the adapters
refused ``STATEKIT_BROADCAST_MAX_AGE=inf``; both are refused now (``None`` is the
value that never goes stale)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

import pytest

from statekit.blobs import BlobStore
from statekit.broadcast import Broadcaster, SharedValue, SharedValues
from statekit.cache import Cache
from statekit.cache.tools import MAX_TTL
from statekit.config import number
from statekit.errors import ConfigError
from statekit.sessions import SessionStore
from statekit.testing.contracts.blobs import png_bytes


@pytest.mark.parametrize("make", [
    lambda: SharedValue("x", max_age=math.inf, url="memory://review17-seconds"),
    lambda: SharedValues("memory://review17-seconds", max_age=math.inf),
], ids=["SharedValue", "SharedValues"])
def test_an_infinite_max_age_is_refused_as_the_setting_is(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError, match=r"max_age=inf must be a positive number of seconds"):
        make()
    with pytest.raises(ConfigError, match=r"STATEKIT_BROADCAST_MAX_AGE='inf' must be a positive number"):
        number("inf", "STATEKIT_BROADCAST_MAX_AGE", positive=True)


def test_a_max_age_of_none_or_seconds_is_taken() -> None:
    assert SharedValue("x", url="memory://review17-seconds").max_age is None
    assert SharedValue("y", max_age=2.5, url="memory://review17-seconds").max_age == 2.5


def test_a_setting_takes_text_an_argument_does_not() -> None:
    assert number(" 300 ", "STATEKIT_X", positive=True) == 300.0
    for bad in ("300", True):
        with pytest.raises(ConfigError, match=r"STATEKIT_X=.* must be a positive number"):
            number(bad, "STATEKIT_X", positive=True, text=False)
    with pytest.raises(ValueError, match=r"ttl=10 must be a positive number of seconds, at most 5"):
        number(10, "ttl", positive=True, maximum=5, text=False, unit="seconds", error=ValueError)
    assert number(math.inf, "wait", text=False, finite=False) == math.inf
    for bad in (math.nan, -math.inf):
        with pytest.raises(ConfigError, match=r"wait=.* must be a number, at least 0"):
            number(bad, "wait", text=False, finite=False)
    with pytest.raises(ConfigError, match=r"big=.* must be a finite number, at least 0"):
        number(10**400, "big", text=False)  # past a float's range: refused, no OverflowError


def test_cache_calls_raise_value_error_naming_the_argument_and_bound() -> None:
    cache = Cache("memory://review17-seconds")
    try:
        for bad in ("300", True, 0, -1, math.inf, math.nan, MAX_TTL * 10):
            with pytest.raises(ValueError,
                               match=r"ttl=.* must be a positive number of seconds, at most 1e\+15, or None"):
                cache.set("k", 1, ttl=bad)
            with pytest.raises(ValueError, match=r"lock timeout=.* must be a positive number of seconds"):
                cache.lock("L", timeout=bad)
        for bad in ("30", True, math.inf, math.nan):
            with pytest.raises(ValueError, match=r"stale_ttl=.* must be a finite number of seconds"):
                cache.get_or_set("g", lambda: 1, ttl=60, stale_ttl=bad)
        cache.set("k", 1, ttl=dt.timedelta(seconds=30))
        assert 0 < cache.ttl("k") <= 30
        assert cache.get_or_set("g", lambda: 1, ttl=60, stale_ttl=-1) == 1  # a negative window: none
    finally:
        cache.close()


@pytest.mark.parametrize(("setting", "bad", "message"), [
    ("default_ttl", "300", r"cache setting default_ttl='300' must be a positive number of seconds"),
    ("default_ttl", 0, r"cache setting default_ttl=0 must be a positive number of seconds, at most 1e\+15"),
    ("stale_ttl", math.inf, r"cache setting stale_ttl=inf must be a finite number of seconds, at least 0, "
                            r"at most 1e\+15"),
    ("lock_ttl", 0, r"cache setting lock_ttl=0 must be a positive number of seconds"),
    ("timeout", 86401, r"cache setting timeout=86401 must be a positive number of seconds, at most 86400"),
    ("breaker_reset", math.inf, r"cache setting breaker_reset=inf must be a positive number"),
    ("lock_wait", -1, r"cache setting lock_wait=-1 must be a number, at least 0"),
], ids=repr)
def test_cache_settings_raise_config_error_naming_the_setting(
        setting: str, bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cache("memory://review17-seconds", **{setting: bad})


def test_cache_settings_keep_what_they_took() -> None:
    cache = Cache("memory://review17-seconds", lock_wait=math.inf, default_ttl=None, stale_ttl=0)
    try:
        assert cache.default_ttl is None and cache.lock_wait == math.inf
    finally:
        cache.close()


@pytest.mark.parametrize("option", ["interval", "lease", "timeout"])
@pytest.mark.parametrize("bad", [True, "5", 0, math.inf, math.nan])
def test_every_refuses_with_the_one_message(option: str, bad: object) -> None:
    b = Broadcaster("memory://review17-seconds")
    kwargs: dict[str, object] = {"interval": 1.0, option: bad}
    interval = kwargs.pop("interval")
    with pytest.raises(ConfigError, match=rf"{option}=.* must be a positive number of seconds"):
        b.every(interval, name="job", **kwargs)(lambda: 1)  # type: ignore[arg-type]
    assert "job" not in b.jobs


@pytest.mark.parametrize("name", ["idle_timeout", "absolute_lifetime", "refresh_interval", "alias_window"])
@pytest.mark.parametrize("bad", [True, "60", 0, math.inf, math.nan])
def test_session_durations_refuse_with_the_one_message(name: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=rf"{name}=.* must be a positive number of seconds"):
        SessionStore("memory://review17-seconds", secret_keys=["k"], **{name: bad})


def test_blob_expires_keeps_taking_what_int_took() -> None:
    """``expires`` went through ``int()``: ``"60"`` and ``1.9`` (1 s) were taken, ``0.5``
    (0 s) refused; so they are now, and a refusal names it and its bound."""
    store = BlobStore("memory://review17-seconds")
    blob = store.put(png_bytes(), content_type="image/png")
    for good in ("60", 60, 1.9):
        assert store.url(blob.key, expires=good)  # type: ignore[arg-type]
    for bad in (0.5, 0, "soon", math.inf):
        with pytest.raises(ValueError, match=r"expires=.* (is not a number: it )?must be a finite number of "
                                             r"seconds, at least 1"):
            store.url(blob.key, expires=bad)  # type: ignore[arg-type]
