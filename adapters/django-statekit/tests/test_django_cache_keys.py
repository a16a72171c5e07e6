"""``StatekitCache.make_and_validate_key``: the key and the ``CacheKeyWarning``\\ s of
Django's ``BaseCache.make_and_validate_key`` for every key (its memcached portability
check is skipped only where it has nothing to say), and a subclass's own
``validate_key`` is called for every key."""

from __future__ import annotations

import warnings
from typing import Any

from django.core.cache.backends.base import BaseCache, CacheKeyWarning
from hypothesis import given, settings
from hypothesis import strategies as st

from django_statekit.cache import StatekitCache

KEYS = st.text(max_size=300) | st.text(st.sampled_from("ab:\x00\x1f \x7f\x80é-_."), max_size=260)


def _made(make: Any, key: Any, version: int | None) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        made = make(key, version=version)
    assert all(w.category is CacheKeyWarning for w in seen)
    return made, [str(w.message) for w in seen]


@settings(max_examples=400, deadline=None)
@given(key=KEYS, version=st.none() | st.integers(0, 10**6),
       prefix=st.sampled_from(["", "p", "p q", "x" * 240]))
def test_same_key_and_warnings_as_django(key: str, version: int | None, prefix: str) -> None:
    cache = StatekitCache("memory://keys", {"KEY_PREFIX": prefix})
    django_way = BaseCache.make_and_validate_key.__get__(cache)
    assert _made(cache.make_and_validate_key, key, version) == _made(django_way, key, version)


def test_non_str_keys_as_django() -> None:
    """Django formats any key into the prefix and version (an int, a tuple)."""
    cache = StatekitCache("memory://keys", {})
    for key in (12, ("a", 1), b"raw"):
        assert _made(cache.make_and_validate_key, key, None) == _made(
            BaseCache.make_and_validate_key.__get__(cache), key, None)


class Strict(StatekitCache):
    def validate_key(self, key: str) -> None:
        self.seen.append(key)
        if "bad" in key:
            raise ValueError(key)

    seen: list[str] = []


def test_a_subclass_validate_key_sees_every_key() -> None:
    cache = Strict("memory://keys", {})
    Strict.seen = []
    assert cache.make_and_validate_key("good") == ":1:good"
    try:
        cache.make_and_validate_key("bad")
    except ValueError as e:
        assert str(e) == ":1:bad"
    else:
        raise AssertionError("the subclass's validate_key was not called")
    assert Strict.seen == [":1:good", ":1:bad"]


def test_a_validate_key_set_on_the_object_sees_every_key() -> None:
    cache = StatekitCache("memory://keys", {})
    seen: list[str] = []
    cache.validate_key = seen.append  # type: ignore[method-assign]
    cache.make_and_validate_key("k", version=3)
    assert seen == [":3:k"]
