"""Review 18 (h4): the cache's write path made cheaper without changing what it does.

``Cache._ttl_ms`` takes an int or float ttl in bounds without the full check
(``tools._ttl_seconds`` through ``config.number``, ~0.5 µs a write): the milliseconds
Redis is given must be the ones the checked path gives, and everything else (bools,
text, ``nan``, ``inf``, 0, negatives, past ``MAX_TTL``) must still reach the check and
be refused with its message. ``unencodable_as_pickle_error`` is a class now, not a
``@contextmanager`` generator (Django's ``set`` enters it on every call): the same
conversion of an encode-time ``SerializationError`` into ``UnencodableValue``."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import pickle

import pytest
import redis

from statekit.cache import Cache
from statekit.cache.tools import DEFAULT, MAX_TTL, _ttl_seconds
from statekit.errors import SerializationError, UnencodableValue
from statekit.serializers import unencodable_as_pickle_error

pytestmark = pytest.mark.redis

IN_BOUNDS = [1, 300, 2.5, 0.0004, 1e-9, 299.9999, 86400 * 365, 123456789.123, 999_999_999_999_999,
             10**15, MAX_TTL]
REFUSED = [True, False, "300", decimal.Decimal("300"), math.nan, math.inf, -math.inf, 0, 0.0, -1, -0.5,
           MAX_TTL * 1.000001, 10**16, 10**400]


@pytest.mark.parametrize("ttl", IN_BOUNDS, ids=repr)
def test_a_ttl_in_bounds_gives_the_checked_paths_milliseconds(redis_url: str, ttl: float) -> None:
    checked = _ttl_seconds(ttl)
    assert checked is not None
    want = max(1, int(checked * 1000))
    cache = Cache(redis_url, namespace="review18-ttl")
    try:
        assert cache._ttl_ms(ttl) == want
        assert type(cache._ttl_ms(ttl)) is int
        assert cache.set("k", "v", ttl=ttl)
        name = cache._be()._names(cache._be()._gen, ("k",))[0]
        left = redis.Redis.from_url(redis_url).pttl(name)
        if want > 50:  # a few ms may pass between the SET and the PTTL
            assert want - 10_000 < left <= want, (ttl, want, left)
        else:
            assert left <= want
    finally:
        cache.close()


@pytest.mark.parametrize("ttl", REFUSED, ids=repr)
def test_a_ttl_out_of_bounds_is_still_refused_by_the_check(ttl: object) -> None:
    cache = Cache("memory://review18-ttl", namespace="review18-ttl")
    with pytest.raises(ValueError, match=r"ttl=.* must be a positive number of seconds") as caught:
        cache._ttl_ms(ttl)
    with pytest.raises(ValueError) as again:
        _ttl_seconds(ttl)
    assert str(caught.value) == str(again.value)
    with pytest.raises(ValueError, match=r"ttl=.* must be a positive number of seconds"):
        cache.set("k", "v", ttl=ttl)  # type: ignore[arg-type]
    assert cache.get("k") is None


def test_the_cache_default_and_none_and_a_timedelta_take_the_checked_path() -> None:
    cache = Cache("memory://review18-ttl", namespace="review18-ttl-default", default_ttl=60)
    assert cache._ttl_ms(DEFAULT) == 60_000
    assert cache._ttl_ms(None) is None
    assert cache._ttl_ms(dt.timedelta(seconds=1.5)) == 1500
    forever = Cache("memory://review18-ttl", namespace="review18-ttl-none", default_ttl=None)
    assert forever._ttl_ms(DEFAULT) is None


def test_an_encode_error_becomes_a_pickle_error() -> None:
    original = SerializationError("cannot encode a socket")
    with pytest.raises(UnencodableValue, match="cannot encode a socket") as caught:
        with unencodable_as_pickle_error():
            raise original
    assert isinstance(caught.value, pickle.PickleError)
    assert caught.value.__cause__ is original


def test_a_pickle_error_and_other_errors_pass_as_they_are() -> None:
    already = UnencodableValue("already one")
    with pytest.raises(UnencodableValue) as caught:
        with unencodable_as_pickle_error():
            raise already
    assert caught.value is already
    assert caught.value.__cause__ is None
    with pytest.raises(KeyError):
        with unencodable_as_pickle_error():
            raise KeyError("k")


def test_no_error_leaves_nothing_behind_and_nests() -> None:
    manager = unencodable_as_pickle_error()
    with manager as entered:
        with unencodable_as_pickle_error():
            pass
    assert entered is None
    with pytest.raises(UnencodableValue):
        with manager:  # the same object again: it keeps no state between uses
            with unencodable_as_pickle_error():
                raise SerializationError("inner")
