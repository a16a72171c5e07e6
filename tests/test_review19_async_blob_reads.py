"""Review 19: :class:`~statekit.blobs.AsyncBlobStore` reads as :class:`BlobStore` does
since this session: ``list_dir()`` (one level, S3's ``Delimiter``) and
``stat(key, sha256=False)`` (S3: the ``HEAD`` alone). It had neither: a Starlette app
listed every key to name a level, and paid a second request per size of a large blob.
On memory, ``file://`` and moto's S3."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from statekit.blobs import AsyncBlobStore


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://review19-{uuid.uuid4().hex}"
    if request.param == "file":
        return f"file://{tmp_path}/store?create=1"
    return str(request.getfixturevalue("s3_url"))


def test_list_dir_and_a_stat_without_the_digest(url: str) -> None:
    async def main() -> None:
        async with AsyncBlobStore(url) as store:
            blob = await store.put(b"hello", filename="a.txt", prefix="docs/x")
            assert await store.list_dir("") == (["docs"], [])
            assert await store.list_dir("docs") == (["x"], [])
            day = blob.key.rsplit("/", 1)[0]
            assert await store.list_dir(day) == ([], [blob.key.rsplit("/", 1)[1]])
            light = await store.stat(blob.key, sha256=False)
            assert (light.size, light.filename, light.content_type) == (5, "a.txt", "text/plain")
            assert (await store.stat(blob.key)).sha256 == blob.sha256

    asyncio.run(main())
