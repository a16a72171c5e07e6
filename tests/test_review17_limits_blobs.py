"""Review 17, "a limit holds on every path": the blob store's limits.

A store made with ``allowed_types=`` (``STATEKIT_BLOBS_ALLOWED_TYPES`` in the Flask
and Starlette adapters) holds every :meth:`~statekit.blobs.BlobStore.put` to that
allow-list, sync and async. A direct upload (:meth:`presign_upload`, the browser's
form, :meth:`confirm`) is the other way a file gets into the store: ``confirm()``
without ``allowed_types=`` took any type, so a PDF (or anything the sniffer accepts)
landed in a store configured for images only. It now takes the store's allow-list
when it is given none, as ``put`` does; an explicit list still wins.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit.blobs import AsyncBlobStore, BlobStore
from statekit.errors import ConfigError, DisallowedContentType
from statekit.testing.contracts.blobs import direct_upload, png_bytes

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield f"memory://review17-{uuid.uuid4().hex}"
    elif request.param == "file":
        yield f"file://{tmp_path}/blobs?create=1"
    else:
        yield request.getfixturevalue("s3_url")


def test_put_holds_the_stores_allow_list(url: str) -> None:
    """The baseline the direct upload is held to: ``put`` refuses a PDF in an image
    store, nothing stored."""
    store = BlobStore(url, allowed_types=["image/*"])
    with pytest.raises(DisallowedContentType):
        store.put(PDF, filename="doc.pdf")
    assert list(store.list()) == []


def test_confirm_holds_the_stores_allow_list(url: str) -> None:
    store = BlobStore(url, allowed_types=["image/*"])
    pdf = store.presign_upload(max_size=10_000, expires=60)
    assert direct_upload(store, pdf, PDF, "application/pdf")
    with pytest.raises(DisallowedContentType):
        store.confirm(pdf.key)
    assert not store.exists(pdf.key)
    assert list(store.list()) == []

    image = store.presign_upload(max_size=10_000, expires=60)
    assert direct_upload(store, image, png_bytes(), "image/png")
    assert store.confirm(image.key).content_type == "image/png"


def test_confirm_with_its_own_allow_list_overrides_the_stores(url: str) -> None:
    """As with ``put``: an explicit list is the one used."""
    store = BlobStore(url, allowed_types=["image/*"])
    pdf = store.presign_upload(max_size=10_000, expires=60)
    assert direct_upload(store, pdf, PDF, "application/pdf")
    assert store.confirm(pdf.key, allowed_types=["application/pdf"]).content_type == "application/pdf"

    plain = BlobStore(url)  # no allow-list: any type, as before
    other = plain.presign_upload(max_size=10_000, expires=60)
    assert direct_upload(plain, other, PDF, "application/pdf")
    assert plain.confirm(other.key).content_type == "application/pdf"


def test_async_confirm_holds_the_stores_allow_list(url: str) -> None:
    async def main() -> None:
        async with AsyncBlobStore(url, allowed_types=["image/*"]) as store:
            pdf = await store.presign_upload(max_size=10_000, expires=60)
            if store.scheme == "s3":
                assert await asyncio.to_thread(direct_upload, store.sync, pdf, PDF, "application/pdf")
            else:
                await store.receive_upload(pdf.fields, PDF, content_type="application/pdf")
            with pytest.raises(DisallowedContentType):
                await store.confirm(pdf.key)
            assert not await store.exists(pdf.key)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- presign_upload's expires: checked as url() checks it --------------------------------
@pytest.mark.parametrize("expires", [0, -60, 10**12])
def test_presign_upload_refuses_an_expiry_url_refuses(url: str, expires: int) -> None:
    """``url(expires=0)`` is a ValueError; ``presign_upload(expires=0)`` recorded a
    pending upload and returned a form already expired (``file://`` and ``memory://``
    refuse it when sent: 'upload form has expired'), and one too far off to be a date
    recorded the upload, then failed with an OverflowError. Now a ValueError, nothing
    recorded."""
    store = BlobStore(url)
    blob = store.put(png_bytes(), content_type="image/png")
    if expires <= 0:
        with pytest.raises(ValueError):
            store.url(blob.key, expires=expires)
    with pytest.raises(ValueError, match="expires"):
        store.presign_upload(max_size=10_000, expires=expires)
    assert store.cleanup_incomplete(older_than=0) == 0  # no pending upload was recorded
    assert [b.key for b in store.list()] == [blob.key]


# -- read_range: "up to length bytes" on every backend ------------------------------------
def test_read_range_past_the_end_returns_the_rest(url: str) -> None:
    """``read_range`` reads "up to *length* bytes (fewer at the end of the blob)":
    ``memory://`` did, ``file://`` and ``s3://`` asked their buffered reader for
    *length* bytes at once, which allocates them first: a MemoryError for a 10-byte
    blob read with a length of 10**12."""
    store = BlobStore(url)
    blob = store.put(b"0123456789", content_type="application/octet-stream")
    assert store.read_range(blob.key, 5, 10**12) == b"56789"
    assert store.read_range(blob.key, 0, 10**12) == b"0123456789"
    assert store.read_range(blob.key, 10**12, 10**12) == b""
    assert store.read_range(blob.key, 3, 2) == b"34" and store.read_range(blob.key, 3, 0) == b""


@pytest.mark.parametrize(("start", "length"), [(0, -1), (-1, 5), (-3, -1)])
def test_read_range_refuses_a_negative_start_or_length(url: str, start: int, length: int) -> None:
    """A negative length read the whole blob (no bound at all: a file object's
    read(-1)); a negative start was a ValueError on ``memory://``, an OSError on
    ``file://`` and offset 0 on ``s3://``. Both are a ValueError on every backend."""
    store = BlobStore(url)
    blob = store.put(b"0123456789", content_type="application/octet-stream")
    with pytest.raises(ValueError, match="start and length"):
        store.read_range(blob.key, start, length)


# -- a download URL's expires: the same check through url() and signed_params() ------------
@pytest.mark.parametrize("expires", [0, -60])
def test_signed_params_refuse_an_expiry_url_refuses(url: str, expires: int) -> None:
    """The adapters' download URLs of ``file://`` and ``memory://`` stores (Flask's and
    Starlette's ``blob_url``, Django's ``BlobStorage.url``) are built from
    ``signed_params``, which signed ``expires=0`` or ``-60`` into a URL already expired
    (403 when used) where ``url()`` -- the S3 path of the same helpers -- refuses them."""
    store = BlobStore(url)
    blob = store.put(b"0123456789", content_type="application/octet-stream")
    with pytest.raises(ValueError, match="expires"):
        store.url(blob.key, expires=expires)
    with pytest.raises(ValueError, match="expires"):
        store.signed_params(blob.key, expires=expires)


# -- S3 options given as keywords: held as the URL's -----------------------------------------
@pytest.mark.s3
@pytest.mark.parametrize(("option", "value"), [("max_concurrency", 0), ("max_concurrency", -1),
                                               ("max_concurrency", 65), ("max_concurrency", 1000),
                                               ("multipart_threshold", -1), ("part_size", -1)])
def test_s3_keyword_options_are_held_to_the_urls_ranges(s3_url: str, option: str, value: int) -> None:
    """``?max_concurrency=65`` is a ConfigError (1 to 64); ``max_concurrency=65`` as a
    keyword (``BlobStore(url, max_concurrency=...)``, ``S3Backend(client=...,
    max_concurrency=...)``) was taken as it came: 1000 part uploads in flight, -1 a
    ValueError from the part pool at the first multipart upload, 0 the default
    without a word. A negative ``multipart_threshold`` made every put multipart."""
    with pytest.raises(ConfigError, match=option):
        BlobStore(f"{s3_url}&{option}={value}")
    with pytest.raises(ConfigError, match=option):
        BlobStore(s3_url, **{option: value})


@pytest.mark.s3
def test_s3_max_concurrency_keyword_sizes_the_connection_pool(s3_url: str) -> None:
    """The client's connection pool is sized for the parts in flight (2 per part and 2
    more): from the URL's ``max_concurrency`` only, so ``max_concurrency=16`` as a
    keyword sent 16 parts at once through a pool of 10 (urllib3 then opens and
    discards a connection per request past it)."""
    by_url = BlobStore(s3_url + "&max_concurrency=16").backend
    by_keyword = BlobStore(s3_url, max_concurrency=16).backend
    assert by_keyword.max_concurrency == by_url.max_concurrency == 16
    assert by_url.client.meta.config.max_pool_connections == 32 * 17  # 32 puts at once: 544 (review 18)
    assert by_keyword.client.meta.config.max_pool_connections == 32 * 17


# -- max_size itself: a whole number of bytes on every path ----------------------------------
@pytest.mark.parametrize("bad", [-1, "10MiB", 1.5, True])
def test_max_size_that_is_no_byte_count_is_a_config_error(url: str, bad: object) -> None:
    """``presign_upload(max_size=-1)`` is a ConfigError; the store's ``max_size`` and
    ``put``'s were taken as given: -1 refused every upload as too large
    (``BlobTooLarge``: 'exceeds max_size=-1'), ``"10MiB"`` failed every put with a
    TypeError, 1.5 and True were limits of 1 byte. Each is a ConfigError naming it,
    when the store is made or before the put reads anything (async too)."""
    with pytest.raises(ConfigError, match="max_size"):
        BlobStore(url, max_size=bad)
    store = BlobStore(url)
    with pytest.raises(ConfigError, match="max_size"):
        store.put(b"hello", content_type="text/plain", max_size=bad)  # type: ignore[arg-type]

    async def main() -> None:
        async with AsyncBlobStore(url) as astore:
            with pytest.raises(ConfigError, match="max_size"):
                await astore.put(b"hello", content_type="text/plain", max_size=bad)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert list(store.list()) == []


@pytest.mark.parametrize("bad", [0, -1, "10MiB", 1.5, True])
def test_presign_upload_max_size_is_checked_as_puts(url: str, bad: object) -> None:
    """presign_upload refused 0 and -1 (ConfigError); "10MiB" was a TypeError and
    1.5 and True were signed as limits. The same check as put's, and positive."""
    store = BlobStore(url)
    with pytest.raises(ConfigError, match="max_size"):
        store.presign_upload(max_size=bad, expires=60)  # type: ignore[arg-type]
    assert store.cleanup_incomplete(older_than=0) == 0  # nothing recorded
