"""Review 17's closing read: a blob URL's or upload form's ``expires`` that is no
number of seconds is the ValueError naming it, on every path of the one check
(``store._seconds``: ``url``, ``signed_params``, ``presign_upload``, sync and async).

The limits audit (f2d66ca, 5e7b37a) made ``0`` and ``-60`` that ValueError, but the
check converted with ``int()`` first: ``inf`` escaped as an ``OverflowError``
('cannot convert float infinity to integer'), ``nan``, ``'soon'`` and ``None`` as
``int()``'s own ValueError / TypeError, none naming ``expires``."""

from __future__ import annotations

import asyncio
import math

import pytest
from test_review17_limits_blobs import url  # noqa: F401 -- memory://, file://, s3:// (tests/ is on sys.path)

from statekit.blobs import AsyncBlobStore, BlobStore
from statekit.testing.contracts.blobs import png_bytes

BAD = [math.inf, -math.inf, math.nan, "soon", None]


@pytest.mark.parametrize("expires", BAD, ids=repr)
def test_an_expiry_that_is_no_number_is_the_value_error_naming_it(
        url: str, expires: object) -> None:  # noqa: F811 - the fixture
    store = BlobStore(url)
    blob = store.put(png_bytes(), content_type="image/png")
    with pytest.raises(ValueError, match=r"expires=.* must be a finite number of seconds, at least 1"):
        store.url(blob.key, expires=expires)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expires=.* must be a finite number of seconds, at least 1"):
        store.signed_params(blob.key, expires=expires)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expires=.* must be a finite number of seconds, at least 1"):
        store.presign_upload(max_size=10_000, expires=expires)  # type: ignore[arg-type]
    assert store.cleanup_incomplete(older_than=0) == 0  # no pending upload was recorded
    assert store.url(blob.key, expires=60)  # a good one still signs


def test_async_store_refuses_an_infinite_expiry_by_name(url: str) -> None:  # noqa: F811 - the fixture
    async def main() -> None:
        store = AsyncBlobStore(url)
        blob = await store.put(png_bytes(), content_type="image/png")
        with pytest.raises(ValueError, match=r"expires=.* must be a finite number of seconds, at least 1"):
            await store.url(blob.key, expires=math.inf)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"expires=.* must be a finite number of seconds, at least 1"):
            await store.presign_upload(max_size=10_000, expires=math.inf)  # type: ignore[arg-type]
        await store.aclose()

    asyncio.run(asyncio.wait_for(main(), 60))
