"""Review (issue 18) of StatekitCache.make_and_validate_key (50b76f7): Django's key
validation stays reachable the ways users reach it: a validate_key patched on
BaseCache itself (mock.patch.object), and a KEY_FUNCTION making keys memcached would
refuse (the warning Django gives)."""

from __future__ import annotations

import warnings
from typing import Any
from unittest import mock

import pytest
from django.core.cache.backends.base import BaseCache, CacheKeyWarning

from django_statekit.cache import StatekitCache


def _spaced(key: str, key_prefix: str, version: Any) -> str:
    return f"{key_prefix} {version} {key}"


def test_a_validate_key_patched_on_basecache_sees_every_key() -> None:
    cache = StatekitCache("memory://review10-keys", {})
    with mock.patch.object(BaseCache, "validate_key") as patched:
        made = [cache.make_and_validate_key(k) for k in ("a", "b:c", "x" * 300)]
    assert [c.args[-1] for c in patched.call_args_list] == made


def test_a_key_function_making_unportable_keys_warns_as_django() -> None:
    cache = StatekitCache("memory://review10-keys", {"KEY_FUNCTION": _spaced})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        key = cache.make_and_validate_key("k")
        with pytest.raises(CacheKeyWarning):
            warnings.simplefilter("error")
            BaseCache.validate_key(cache, key)
    assert key == " 1 k"
    assert [w.category for w in caught] == [CacheKeyWarning]
    assert str(caught[0].message).startswith("Cache key contains characters")
