"""An ``AsyncBlobStore`` made from an ``s3://`` URL with ``?concurrent_puts=`` sizes
its connection pool from that option, as a ``BlobStore`` of the same URL does.

74ca698 made ``?concurrent_puts=`` a URL option for a store "configured by its URL
alone" (``STATEKIT_BLOBS_URL``), a keyword winning over it; ``AsyncBlobStore`` always
passed its ``upload_threads`` (default 32) as that keyword, so the URL's option was
ignored in silence for every async store (the Starlette adapter's among them).
``upload_threads`` stays the default when the URL says nothing, and a keyword given
still wins.
"""

from __future__ import annotations

import pytest

from statekit.blobs import AsyncBlobStore, BlobStore

pytestmark = pytest.mark.s3


def _pool(store: BlobStore) -> int:
    return int(store.backend.client.meta.config.max_pool_connections)  # type: ignore[attr-defined]


def _with(url: str, options: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{options}"


def test_the_url_option_sizes_an_async_store_as_a_sync_one(s3_url: str) -> None:
    url = _with(s3_url, "concurrent_puts=64&max_concurrency=3")
    assert _pool(BlobStore(url)) == 64 * 4
    assert _pool(AsyncBlobStore(url).sync) == 64 * 4
    assert _pool(AsyncBlobStore(url, upload_threads=8).sync) == 64 * 4


def test_upload_threads_is_the_default_and_a_keyword_wins(s3_url: str) -> None:
    assert _pool(AsyncBlobStore(s3_url, upload_threads=8).sync) == 8 * 3
    assert _pool(AsyncBlobStore(_with(s3_url, "concurrent_puts=64"), concurrent_puts=4).sync) == 4 * 3
