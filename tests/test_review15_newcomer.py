"""A newcomer's rough edges in URLs and commands (review 15).

a. A URL with its quotes left in (docker's ``--env-file`` and systemd's
   ``EnvironmentFile`` keep them): ``Cache('"redis://..."')`` said ``no cache backend
   for "redis:// URLs (known: ..., redis://, ...)``, the environment ``unknown URL
   scheme '"redis'``. Both now say the value is in quotes and where quotes are kept.
"""

from __future__ import annotations

import pytest

from statekit import AsyncCache, Cache
from statekit.blobs import BlobStore
from statekit.broadcast import Broadcaster, SharedValue
from statekit.config import Settings, parse_url
from statekit.errors import ConfigError
from statekit.sessions import SessionStore

# -- a. quoted URLs -------------------------------------------------------------------

CAPABILITIES = {
    "Cache": lambda url: Cache(url),
    "AsyncCache": lambda url: AsyncCache(url),
    "SessionStore": lambda url: SessionStore(url, secret_keys=["k" * 32]),
    "Broadcaster": lambda url: Broadcaster(url),
    "SharedValue": lambda url: SharedValue("nc15", default=0, url=url),
    "BlobStore": lambda url: BlobStore(url),
}


def _says_quoted(message: str) -> None:
    assert "in quotes: remove them" in message, message
    assert "--env-file" in message and "EnvironmentFile" in message, message
    assert "no cache backend" not in message and "unknown URL scheme" not in message, message


@pytest.mark.parametrize("quote", ['"', "'"])
@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_a_quoted_url_given_directly_says_it_is_quoted(statekit_redis_url: str, s3_url: str,
                                                       capability: str, quote: str) -> None:
    url = s3_url if capability == "BlobStore" else statekit_redis_url
    with pytest.raises(ConfigError) as info:
        CAPABILITIES[capability](f"{quote}{url}{quote}\n")  # as pasted from an env file
    _says_quoted(str(info.value))
    assert url.rpartition("@")[2] in str(info.value)  # the URL named, its secret not
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("name", ["STATEKIT_REDIS_URL", "STATEKIT_CACHE_URL", "STATEKIT_BLOBS_URL"])
def test_a_quoted_url_in_the_environment_names_its_variable(statekit_redis_url: str, s3_url: str,
                                                            name: str) -> None:
    url = s3_url if name == "STATEKIT_BLOBS_URL" else statekit_redis_url
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: f'"{url}"'})
    _says_quoted(str(info.value))
    assert f"({name})" in str(info.value)


def test_the_quote_message_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url('"redis://app:s3cret@127.0.0.1:6379/0"')
    _says_quoted(str(info.value))
    assert "s3cret" not in str(info.value)
    assert "app:***@127.0.0.1" in str(info.value)


def test_a_password_ending_with_a_quote_is_kept() -> None:
    """Nothing is stripped: only a URL that begins with a quote is refused."""
    assert parse_url('redis://:pa"@127.0.0.1:6379/0').password == 'pa"'
    assert parse_url("redis://:pa'@127.0.0.1:6379/0").password == "pa'"


def test_an_unquoted_url_with_spaces_still_works(statekit_redis_url: str) -> None:
    cache = Cache(f"  {statekit_redis_url}\n")
    try:
        cache.set("nc15-spaced", 1, ttl=30)
        assert cache.get("nc15-spaced") == 1
    finally:
        cache.close()
