"""Review 17's closing read: the cache's duration settings are refused as settings.

beeb27b says ``Cache(default_ttl=..., stale_ttl=...)`` past ``MAX_TTL`` is a
ConfigError; ``stale_ttl`` was (``_check_number``, "cache setting stale_ttl ..."), but
``default_ttl`` went through the per-call check only (``tools._ttl_seconds``): a plain
ValueError saying ``ttl must be ...``, naming neither the setting nor the cache. Now
both are the ConfigError naming the setting, sync and async, before any I/O (the URL's
port does not listen)."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from test_review17_cache_huge_ttl import dead_url  # noqa: F401 -- a port nothing listens on

from statekit.cache import AsyncCache, Cache
from statekit.cache.tools import MAX_TTL
from statekit.errors import ConfigError


@pytest.mark.parametrize("kind", [Cache, AsyncCache])
@pytest.mark.parametrize("bad", [1e16, math.inf, math.nan, 0, -1, True, "300", dt.timedelta(days=-1)],
                         ids=repr)
def test_default_ttl_that_is_no_ttl_is_a_config_error_naming_it(
        dead_url: str, kind: type, bad: object) -> None:  # noqa: F811 - the fixture
    with pytest.raises(ConfigError, match=r"cache setting default_ttl=.* must be a positive number of "
                                          r"seconds, at most 1e\+15"):
        kind(dead_url, default_ttl=bad)


@pytest.mark.parametrize("kind", [Cache, AsyncCache])
@pytest.mark.parametrize("bad", [1e16, math.inf, math.nan, -1.0, True], ids=repr)
def test_stale_ttl_that_is_no_window_is_a_config_error_naming_it(
        dead_url: str, kind: type, bad: object) -> None:  # noqa: F811 - the fixture
    with pytest.raises(ConfigError, match=r"cache setting stale_ttl=.* must be a finite number of seconds, "
                                          r"at least 0, at most 1e\+15"):
        kind(dead_url, stale_ttl=bad)


def test_good_ttls_are_taken(dead_url: str) -> None:  # noqa: F811 - the fixture
    for ttl, seconds in ((None, None), (MAX_TTL, MAX_TTL), (dt.timedelta(minutes=5), 300.0), (0.5, 0.5)):
        assert Cache(dead_url, default_ttl=ttl, stale_ttl=0).default_ttl == seconds  # type: ignore[arg-type]
