"""AsyncBlobStore on real stores (moto's S3 server, a directory, memory): the sync
store's pipeline fed from an event loop, so the same limits, sniffing, keys and
"nothing partial" promises hold for async bodies, with bounded memory, cancellation
that leaves nothing behind, and objects shared both ways with the sync store."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_broadcast_async import until  # tests/ is on sys.path

from statekit.blobs import AsyncBlobStore, BlobStore
from statekit.blobs.aio import QUEUE_BYTES
from statekit.errors import BlobNotFound, BlobTooLarge, DisallowedContentType
from statekit.pytest_plugin import wait_for
from statekit.testing.contracts.blobs import HTML, direct_upload, png_bytes
from statekit.testing.loop import LoopLag

MiB = 1024 * 1024
BLOCK = os.urandom(64 * 1024)


async def body(total: int, sent: list[int] | None = None, *, then: asyncio.Event | None = None,
               fail_after: int | None = None) -> AsyncIterator[bytes]:
    """*total* bytes in 64 KiB chunks, each a new object as a server's reads are
    (so chunks kept too long would show in traced memory), counting what was taken
    in *sent*; waits on *then* once done, or raises after *fail_after* bytes."""
    done = 0
    while done < total:
        data = bytes(memoryview(BLOCK)[:min(len(BLOCK), total - done)])
        done += len(data)
        if sent is not None:
            sent[0] = done
        yield data
        if fail_after is not None and done >= fail_after:
            raise ConnectionResetError("client went away")
    if then is not None:
        await then.wait()


def digest(total: int) -> str:
    h = hashlib.sha256()
    for done in range(0, total, len(BLOCK)):
        h.update(BLOCK[:min(len(BLOCK), total - done)])
    return h.hexdigest()


class UploadFile:
    """Starlette's ``UploadFile`` as the store sees it: ``async read(n)`` plus the
    form's filename, type and size."""

    def __init__(self, data: bytes, filename: str, content_type: str) -> None:
        self._data, self._pos = data, 0
        self.filename, self.content_type, self.size = filename, content_type, len(data)

    async def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        out, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return out


@pytest.fixture(params=["s3", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return str(request.getfixturevalue("s3_url"))
    return f"file://{tmp_path}/store?create=1"


def leftovers(store: BlobStore) -> list[str]:
    """What an aborted write could leave: objects (statekit's own included),
    unfinished multipart uploads, temporary files."""
    found = [b.key for b in store.backend.list_page("", None, 1000).items]
    if store.scheme == "s3":
        found += [u["Key"] for u in store.backend.list_incomplete()]
    elif store.scheme == "file":
        root = Path(store.backend.root)
        found += [str(p) for p in root.rglob(".tmp-*")]
    return found


def test_round_trip_and_interop_with_the_sync_store(url: str) -> None:
    async def main() -> None:
        async with AsyncBlobStore(url, secret="s") as store:
            sync = BlobStore(url, secret="s")
            streamed = await store.put(body(3 * MiB + 5), filename="../../data.bin", prefix="in")
            assert streamed.key.startswith("in/") and streamed.filename == "data.bin"
            assert streamed.size == 3 * MiB + 5 and streamed.sha256 == digest(3 * MiB + 5)
            form = await store.put(UploadFile(png_bytes(100), "me.png", "image/png"),
                                   allowed_types=["image/*"])
            assert form.content_type == "image/png" and form.key.endswith(".png")
            assert form.filename == "me.png"
            raw = await store.put(b"plain bytes", content_type="text/plain", metadata={"owner": "7"})
            # the async store's writes, read by the sync one
            assert sync.stat(streamed.key).sha256 == streamed.sha256
            with sync.open(form.key) as f:
                assert f.read() == png_bytes(100)
            assert sync.stat(raw.key).metadata == {"owner": "7"}
            # the sync store's writes, read by the async one
            old = sync.put(png_bytes(), filename="old.png")
            assert (await store.stat(old.key)).filename == "old.png"
            async with await store.open(old.key) as reader:
                assert await reader.read(8) == png_bytes()[:8]
                assert await reader.seek(0) == 0
                assert b"".join([c async for c in reader]) == png_bytes()
            assert await store.read_range(streamed.key, 1, 3) == BLOCK[1:4]
            keys = sorted([b.key async for b in store.list(page_size=2)])
            assert keys == sorted(b.key for b in sync.list())
            assert [b.key async for b in store.list("in/")] == [streamed.key]
            link = await store.url(old.key, expires=60)
            if store.scheme != "s3":
                assert store.sync.verify_url(link)[0] == old.key
                assert sync.verify_url(link)[0] == old.key  # one secret, one signature
            assert await store.delete(old.key) and not await store.exists(old.key)
            assert not sync.exists(old.key)
            with pytest.raises(BlobNotFound):
                await store.stat(old.key)
            sync.close()

    asyncio.run(main())


def test_limits_and_sniffing_while_streaming_leave_nothing(url: str) -> None:
    """Refused mid-stream (past S3's multipart threshold, so parts were sent) or by
    type after the first bytes: the error of the sync store, no more than one chunk
    of the body read past the limit, nothing left anywhere."""
    async def main() -> None:
        async with AsyncBlobStore(url, max_size=12 * MiB) as store:
            sent = [0]
            with pytest.raises(BlobTooLarge):
                await store.put(body(40 * MiB, sent))
            assert 12 * MiB < sent[0] <= 12 * MiB + len(BLOCK)
            sent = [0]
            with pytest.raises(DisallowedContentType):
                await store.put(body(40 * MiB, sent), allowed_types=["image/*"])
            assert sent[0] <= 2 * QUEUE_BYTES + len(BLOCK)  # refused from the head: the rest left unread
            with pytest.raises(BlobTooLarge):  # the form's declared size, refused before reading
                await store.put(UploadFile(b"x" * 100, "a.txt", "text/plain"), max_size=10)
            with pytest.raises(ConnectionResetError):  # the body's own error aborts the write
                await store.put(body(20 * MiB, fail_after=9 * MiB))
            assert leftovers(store.sync) == []
            assert store.sync.counters.get("aborts") == 2  # the other two were refused before writing

    asyncio.run(main())


def test_cancelled_put_leaves_no_object(url: str) -> None:
    """Cancelled while the body stalls (after S3 parts were sent), and cancelled after
    the worker committed but before the caller got the key: nothing stays."""
    async def main() -> None:
        async with AsyncBlobStore(url) as store:
            stall = asyncio.Event()
            sent = [0]
            task = asyncio.create_task(store.put(body(11 * MiB, sent, then=stall)))
            # until the body stalls with a write under way
            await until(lambda: sent[0] >= 11 * MiB, "the whole body taken", timeout=30)
            await asyncio.to_thread(wait_for, lambda: leftovers(store.sync), 30, "an upload under way")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert leftovers(store.sync) == []

            committed, release = threading.Event(), threading.Event()
            real_put = store.sync.put

            def slow_put(stream: Any, **kwargs: Any) -> Any:
                blob = real_put(stream, **kwargs)
                committed.set()
                release.wait(10)
                return blob

            store.sync.put = slow_put  # type: ignore[method-assign]
            task = asyncio.create_task(store.put(b"committed, never returned", content_type="text/plain"))
            assert await asyncio.to_thread(committed.wait, 10), "the worker never committed"
            assert len(leftovers(store.sync)) == 1
            task.cancel()
            asyncio.get_running_loop().call_soon(release.set)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert leftovers(store.sync) == []

    asyncio.run(main())


def test_memory_stays_bounded_on_a_50_mib_body(url: str) -> None:
    """Peak traced memory (every thread: the loop, the worker, S3's part senders)
    while a 50 MiB body streams: the queue plus the backend's part buffers (S3: up
    to 3 parts of 5 MiB), not the body."""
    async def main() -> tuple[int, int]:
        async with AsyncBlobStore(url) as store:
            await store.put(b"warm up: clients and imports", content_type="text/plain")
            tracemalloc.start()
            try:
                blob = await store.put(body(50 * MiB))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert blob.size == 50 * MiB and blob.sha256 == digest(50 * MiB)
            return peak, blob.size

    peak, size = asyncio.run(main())
    print(f"{url.split(':')[0]}: peak traced memory {peak / 1024:.0f} KiB for a {size // MiB} MiB body")
    assert peak < 24 * MiB


def test_many_puts_on_one_loop_share_few_workers(tmp_path: Path) -> None:
    """20 puts at once through 3 upload workers: the others' bodies wait (bounded
    queue) and every blob arrives whole; the loop stays responsive meanwhile
    (its worst heartbeat lag is printed, not asserted)."""
    async def main() -> float:
        async with AsyncBlobStore(f"file://{tmp_path}/many?create=1", upload_threads=3) as store:
            async with LoopLag() as lag:
                blobs = await asyncio.gather(*(store.put(body(MiB + i)) for i in range(20)))
            assert [b.sha256 for b in blobs] == [digest(MiB + i) for i in range(20)]
            assert len({b.key for b in blobs}) == 20
            assert len([b async for b in store.list()]) == 20
        return lag.worst

    print(f"worst event-loop lag during 20 concurrent puts: {asyncio.run(main()) * 1000:.1f} ms")


def test_direct_uploads(url: str) -> None:
    """presign_upload / confirm from async code (S3: the browser posts to S3; file://:
    receive_upload streams an async body), refused content removed."""
    async def main() -> None:
        async with AsyncBlobStore(url) as store:
            up = await store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
            if store.scheme == "s3":
                assert direct_upload(store.sync, up, png_bytes(), "image/png")
            else:
                async def chunks() -> AsyncIterator[bytes]:
                    yield png_bytes()[:10]
                    yield png_bytes()[10:]

                await store.receive_upload(up.fields, chunks(), content_type="image/png")
            blob = await store.confirm(up.key)
            assert blob.size == len(png_bytes()) and await store.read_range(up.key, 0, 4) == png_bytes()[:4]
            bad = await store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
            if store.scheme == "s3":
                direct_upload(store.sync, bad, HTML, "image/png")
            else:
                await store.receive_upload(bad.fields, UploadFile(HTML, "x.png", "image/png"),
                                           content_type="image/png")
            with pytest.raises(Exception, match="(?i)type|match"):
                await store.confirm(bad.key)
            assert not await store.exists(bad.key)
            assert await store.cleanup_incomplete(older_than=0) == 0
            assert [b.key async for b in store.list()] == [up.key]

    asyncio.run(main())


def test_memory_store_and_a_shared_sync_store() -> None:
    sync = BlobStore("memory://async-shared", max_size=1000)

    async def main() -> None:
        store = AsyncBlobStore(store=sync)
        blob = await store.put(iter_body(), filename="notes.txt")
        assert sync.stat(blob.key).filename == "notes.txt"
        with pytest.raises(BlobTooLarge):  # the shared store's default limit
            await store.put(body(2000))
        await store.aclose()

    def iter_body() -> Iterator[bytes]:  # a sync iterable: read in the worker
        yield b"hello "
        yield b"world"

    asyncio.run(main())
    with pytest.raises(Exception, match="URL .* or store="):
        AsyncBlobStore("memory://x", store=sync)
