"""``?concurrent_puts=`` is an ``s3://`` URL option, as ``max_concurrency`` is: a store
configured by its URL alone (``STATEKIT_BLOBS_URL``, Django's ``LOCATION``) sizes its
connection pool for the puts it runs at once (it was a keyword only: a threaded server
with 64 threads had no way to say so from its settings). Checked as the other options
are; a keyword still wins."""

from __future__ import annotations

import pytest

from statekit.blobs import BlobStore
from statekit.config import parse_url
from statekit.errors import ConfigError


def _pool(store: BlobStore) -> int:
    return int(store.backend.client.meta.config.max_pool_connections)  # type: ignore[attr-defined]


@pytest.mark.s3
def test_the_url_option_sizes_the_pool(s3_url: str) -> None:
    sep = "&" if "?" in s3_url else "?"
    store = BlobStore(f"{s3_url}{sep}concurrent_puts=64&max_concurrency=3")
    assert _pool(store) == 64 * (3 + 1)
    assert _pool(BlobStore(f"{s3_url}{sep}concurrent_puts=64", concurrent_puts=4)) == 4 * (2 + 1)


@pytest.mark.parametrize("raw", ["0", "1025", "lots", "1.5"])
def test_a_bad_value_is_refused_when_the_url_is_read(raw: str) -> None:
    with pytest.raises(ConfigError, match=f"concurrent_puts={raw!r}"):
        parse_url(f"s3://bucket?concurrent_puts={raw}")
