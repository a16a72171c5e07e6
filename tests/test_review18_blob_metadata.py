"""Review 18: a blob's user metadata is held to S3's limit (2 KB: the UTF-8 bytes of
every key and value, as sent) before a byte of the body is read or sent, on every
backend, so a put does not depend on the store for it.

S3 refuses a ``PutObject`` / ``CreateMultipartUpload`` whose ``x-amz-meta-*`` headers
hold more than 2 KB -- after the client has streamed the body (up to 5 GB in one
``PutObject``); moto's server (5.2.6, ``moto/s3/utils.py:metadata_from_headers``) takes
any size, and memory:// and file:// took any too: the same put stored on one and
failed on AWS. statekit's own entries (the sanitized filename, the creation time,
the SHA-256 sent with the commit) count with the caller's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from test_review17_limits_blobs import url  # noqa: F401 -- memory://, file://, s3:// (tests/ is on sys.path)

from statekit.blobs import AsyncBlobStore, BlobStore
from statekit.blobs.protocol import MAX_METADATA_BYTES
from statekit.errors import BlobError
from statekit.testing.contracts.blobs import expected

#: what statekit adds to a put without a filename: statekit-created (25 characters of
#: ISO time) and the statekit-sha256 reserved for the commit (64 hex digits)
OWN = len("statekit-created") + 25 + len("statekit-sha256") + 64


@pytest.fixture
def store(url: str) -> Iterator[BlobStore]:  # noqa: F811 - the fixture
    with BlobStore(url) as s:
        yield s


class _Body:
    """An iterable body that records whether the put read any of it."""

    def __init__(self, size: int) -> None:
        self.data, self.read = expected(size), 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), 65536):
            self.read += 1
            yield self.data[i:i + 65536]


def _requests(store: BlobStore) -> list[str]:
    """The operations the S3 client sends from now on (empty for other stores)."""
    sent: list[str] = []
    if store.scheme == "s3":
        store.client.meta.events.register(
            "before-send.s3", lambda request, **_: sent.append(f"{request.method} {request.url}"))
    return sent


def test_metadata_over_2_kb_is_refused_before_the_body_is_read(store: BlobStore) -> None:
    body = _Body(6 * 1024 * 1024)  # past the multipart threshold: CreateMultipartUpload carries it
    sent = _requests(store)
    value = "a" * (MAX_METADATA_BYTES - OWN - len("note") + 1)  # one byte too many
    with pytest.raises(BlobError, match=r"metadata of 2049 bytes .*more than the 2048"):
        store.put(body, content_type="application/octet-stream", metadata={"note": value})
    assert body.read == 0, "the body was read"
    assert sent == [], "requests were sent"
    assert list(store.list()) == []
    assert store.cleanup_incomplete(older_than=0) == 0  # no multipart upload was begun


def test_metadata_of_exactly_2_kb_is_stored(store: BlobStore) -> None:
    value = "a" * (MAX_METADATA_BYTES - OWN - len("note"))
    blob = store.put(expected(1000), content_type="application/octet-stream", metadata={"note": value})
    assert store.stat(blob.key).metadata == {"note": value}


def test_the_filename_and_encoded_characters_count(store: BlobStore) -> None:
    """What is sent is counted: a non-ASCII character is sent percent-encoded (é: 6
    bytes), and the sanitized filename is metadata too."""
    name = "é" * 100 + ".txt"  # 100 x %C3%A9 + .txt: 604 bytes, plus its key
    filename_bytes = len("statekit-filename") + 604
    fits = "a" * (MAX_METADATA_BYTES - OWN - filename_bytes - len("note"))
    blob = store.put(b"hello", filename=name, metadata={"note": fits})
    assert blob.filename == name and store.stat(blob.key).metadata == {"note": fits}
    with pytest.raises(BlobError, match="metadata of 2049 bytes"):
        store.put(b"hello", filename=name, metadata={"note": fits + "a"})
    with pytest.raises(BlobError, match="metadata of 2053 bytes"):
        store.put(b"hello", filename=name, metadata={"note": fits[:-1] + "é"})
    assert [b.key for b in store.list()] == [blob.key]


def test_the_async_store_refuses_it_too_and_stores_nothing(store: BlobStore) -> None:
    async def main() -> None:
        astore = AsyncBlobStore(store=store)
        try:
            async def body() -> object:
                yield b"x" * 1000

            with pytest.raises(BlobError, match="metadata of 3005 bytes"):
                await astore.put(body(), content_type="application/octet-stream",
                                 metadata={"note": "a" * (3005 - OWN - len("note"))})
        finally:
            await asyncio.wait_for(asyncio.to_thread(astore._uploads.shutdown, wait=True), 30)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert list(store.list()) == []
