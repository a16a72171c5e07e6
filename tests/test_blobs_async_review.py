"""Review of the blob store's leftovers and of :class:`AsyncBlobStore`'s streaming put,
each hole driven step by step (a child process killed at a chosen call, monkeypatched
hooks, tasks and threads held on events) and failing before its fix:

* ``file://``: a process killed between a record's metadata file and its link left a
  record no later write of that key could replace, so a direct upload's verdict
  stayed undecidable ("try again") until ``cleanup_partial`` removed it a day later;
* S3: a lost SHA-256 tag (``put_object_tagging``) was silent;
* async: a put cancelled while it waited for an upload worker waited for another
  client's upload to end; ``receive_upload`` read up to the queue's size past the
  signed ``max_size`` where the sync store reads one chunk.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_blobs_async import BLOCK, body, leftovers
from test_broadcast_async import until

from statekit.blobs import AsyncBlobStore, BlobStore, local
from statekit.blobs.protocol import WriteRequest
from statekit.errors import BackendUnavailable, BlobExists, BlobTooLarge
from statekit.testing.contracts.blobs import direct_upload, png_bytes

_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _confirm_killed_at_link(url: str, key: str, *, linking: str) -> int:
    """``confirm(key)`` in a child process killed (``os._exit``) as it links the object
    *linking* (``.statekit/verdict/<key>``) into place: its record is written, the
    object is not, nothing was cleaned up. The child's exit status."""
    script = textwrap.dedent(f"""
        import os
        from statekit.blobs import BlobStore, local

        store = BlobStore({url!r}, secret="s")
        target = store.backend._path({linking!r})
        real = local._link_exclusive

        def link(src, dst):
            if dst == target:
                os._exit(9)
            real(src, dst)

        local._link_exclusive = link
        store.confirm({key!r})
    """)
    return subprocess.run([sys.executable, "-c", script], timeout=60).returncode


def test_file_store_record_left_by_a_killed_writer_does_not_block_the_verdict(tmp_path: Path) -> None:
    """The confirm that died left the verdict's record but no verdict: a later confirm
    decides (it raised BlobError "try again" for a day), and a cleanup run meanwhile
    does not fail on it."""
    url = f"file://{tmp_path}/store?create=1"
    store = BlobStore(url, secret="s")
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    assert direct_upload(store, up, png_bytes(), "image/png")
    assert _confirm_killed_at_link(url, up.key, linking=".statekit/verdict/" + up.key) == 9
    assert store.cleanup_incomplete() == 0  # nothing is stale yet, and the record is not in the way
    blob = store.confirm(up.key)
    assert blob.size == len(png_bytes()) and store.stat(up.key).sha256 == blob.sha256
    assert [b.key for b in store.list()] == [up.key]




def test_file_store_cleanup_removes_an_old_empty_record_claim(tmp_path: Path) -> None:
    """A filesystem without hard links claims a record's name empty (``O_EXCL``) and then
    renames the record over it; a writer killed in between leaves the empty claim, which
    no lock guards. A write does not take it over (its writer may be about to rename),
    cleanup_partial removes it once older than its cutoff."""
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = "2026/01/01/" + "0" * 32
    meta = Path(store.backend._meta_path(key))
    meta.parent.mkdir(parents=True)
    meta.touch()
    writer = store.backend.writer(WriteRequest(key, "text/plain", "attachment", {}, _NOW))
    with pytest.raises(BlobExists):
        writer.commit("0" * 64, 0)
    writer.abort()
    assert store.backend.cleanup_partial(3600) == 0 and meta.exists()
    os.utime(meta, (1, 1))
    assert store.backend.cleanup_partial(3600) == 1 and not meta.exists()


def test_file_store_record_of_a_live_writer_is_kept_under_process_wide_locks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On NFS, Linux emulates flock with POSIX locks, which belong to the process: a
    second thread of the writer's process gets the lock of a record being written.
    Two threads write one key (two confirms recording one verdict at once), the first
    held between its record and its link: the second is refused, and the first's blob
    keeps its record (the second removed it as an orphan, and the blob was stored
    without its record)."""
    import types

    process_wide = types.SimpleNamespace(flock=lambda fd, op: None, LOCK_EX=2, LOCK_NB=4)
    monkeypatch.setattr(local, "fcntl", process_wide)
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = ".statekit/verdict/2026/01/01/" + "1" * 32
    blob_path, at_link, go = store.backend._path(key), threading.Event(), threading.Event()
    real = local._link_exclusive

    def held(src: str, dst: str) -> None:
        if dst == blob_path and threading.current_thread().name == "first":
            at_link.set()
            go.wait(30)
        real(src, dst)

    monkeypatch.setattr(local, "_link_exclusive", held)
    outcomes: dict[str, Any] = {}

    def write(name: str, data: bytes) -> None:
        writer = store.backend.writer(WriteRequest(key, "text/plain", "attachment", {}, _NOW))
        try:
            writer.write(data)
            writer.commit(hashlib.sha256(data).hexdigest(), len(data))
            outcomes[name] = data
        except BlobExists as e:
            writer.abort()
            outcomes[name] = e

    first = threading.Thread(target=write, args=("first", b"confirmed 1"), name="first")
    first.start()
    try:
        assert at_link.wait(30)
        write("second", b"expired 2")
    finally:
        go.set()
        first.join(30)
    assert outcomes["first"] == b"confirmed 1" and isinstance(outcomes["second"], BlobExists)
    found = store.backend.stat(key)
    assert (found.content_type, found.sha256) == ("text/plain", hashlib.sha256(b"confirmed 1").hexdigest())

@pytest.mark.s3
def test_s3_lost_sha256_tag_is_reported(s3_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A multipart put whose SHA-256 tag is lost (``put_object_tagging`` fails after the
    object completed) still succeeds, as its content is intact, but is logged with the
    key and the digest stat() will not report; it passed in silence."""
    from botocore.exceptions import ReadTimeoutError

    store = BlobStore(s3_url + "&retries=0", part_size=5 * 2**20, multipart_threshold=5 * 2**20)

    def lost(**_: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1")

    store.backend.client.put_object_tagging = lost
    with caplog.at_level(logging.WARNING, logger="statekit.blobs"):
        blob = store.put(os.urandom(6 * 2**20), content_type="application/octet-stream")
    assert store.stat(blob.key).sha256 is None
    [record] = [r for r in caplog.records if r.name == "statekit.blobs"]
    assert blob.key in record.getMessage() and str(blob.sha256) in record.getMessage()


def test_async_put_cancelled_while_waiting_for_a_worker_ends_at_once(tmp_path: Path) -> None:
    """One upload worker, held by a client whose body stalls: a second put, cancelled
    (its client went away) while its write waits for that worker, ends without
    waiting for the first client (it waited for the first upload to end); the first
    upload then completes, and nothing of the second is stored."""
    async def main() -> None:
        async with AsyncBlobStore(f"file://{tmp_path}/s?create=1", upload_threads=1) as store:
            stall, sent = asyncio.Event(), [0]
            first = asyncio.create_task(store.put(body(2 * len(BLOCK), sent, then=stall)))
            try:
                await until(lambda: sent[0] >= 2 * len(BLOCK), "the first body taken")
                queued_sent = [0]
                second = asyncio.create_task(store.put(body(4 * 2**20, queued_sent)))
                await until(lambda: queued_sent[0], "the second body read")
                second.cancel()
                done, _ = await asyncio.wait([second], timeout=30)
                assert second in done and second.cancelled() and not first.done()
            finally:
                stall.set()
            blob = await first
            assert [b.key async for b in store.list()] == [blob.key]
            assert leftovers(store.sync) == [blob.key]

    asyncio.run(main())


def test_async_receive_upload_reads_one_chunk_past_the_signed_size(tmp_path: Path) -> None:
    """The server side of a direct upload holds the body to the form's max_size as the
    sync store does, at most one chunk past it (it read up to the 1 MiB queue more)."""
    async def main() -> None:
        async with AsyncBlobStore(f"file://{tmp_path}/s?create=1") as store:
            up = await store.presign_upload(max_size=10_000, expires=60)
            sent = [0]
            with pytest.raises(BlobTooLarge):
                await store.receive_upload(up.fields, body(8 * 2**20, sent), content_type="text/plain")
            assert sent[0] <= 10_000 + len(BLOCK)
            assert leftovers(store.sync) == [] and not await store.exists(up.key)

    asyncio.run(main())


MiB = 2**20


async def _broken(total: int, at: int, reached: asyncio.Event, *, fail: bool) -> AsyncIterator[bytes]:
    """*total* bytes of a client that, once *at* bytes are sent, raises (it went away)
    or stalls until its task is cancelled."""
    done = 0
    while True:
        if done >= at:
            reached.set()
            if fail:
                raise ConnectionResetError("client went away")
            await asyncio.Event().wait()
        if done >= total:
            return
        data = bytes(BLOCK)
        done += len(data)
        yield data


@pytest.mark.parametrize("fail", [True, False], ids=["raises", "cancelled"])
@pytest.mark.parametrize("at", [0, 5 * MiB, 10 * MiB + len(BLOCK)], ids=["first-chunk", "part-boundary",
                                                                         "after-the-last-byte"])
@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_async_body_stopping_at_each_point_leaves_nothing(
        scheme: str, at: int, fail: bool, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A claim that held, checked at each point: the body raises or its task is
    cancelled before its first chunk, as S3's first part (5 MiB) is due, and after its
    last byte (the last part buffered, before the commit): the body's error or the
    cancellation is raised, and nothing is left, S3's multipart uploads included."""
    url = str(request.getfixturevalue("s3_url")) if scheme == "s3" else f"file://{tmp_path}/s?create=1"
    options = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB} if scheme == "s3" else {}

    async def main() -> None:
        async with AsyncBlobStore(url, **options) as store:
            reached = asyncio.Event()
            task = asyncio.create_task(store.put(_broken(10 * MiB + len(BLOCK), at, reached, fail=fail)))
            await until(reached.is_set, f"the body at byte {at}", timeout=30)
            if fail:
                with pytest.raises(ConnectionResetError):
                    await task
            else:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert leftovers(store.sync) == []
            assert store.sync.counters.get("aborts") == (0 if at == 0 else 1)

    asyncio.run(main())


@pytest.mark.s3
def test_async_put_cancelled_mid_part_returns_after_the_part_thread_stopped(s3_url: str) -> None:
    """A claim that held: cancelled while boto3's part thread is sending a part, the put
    returns only once that thread is done and the multipart upload aborted (nothing
    keeps writing after the task is gone)."""
    async def main() -> None:
        async with AsyncBlobStore(s3_url, part_size=5 * MiB, multipart_threshold=5 * MiB) as store:
            client = store.sync.backend.client
            real, sending, release, returned = client.upload_part, threading.Event(), threading.Event(), []

            def held_part(**kwargs: Any) -> Any:
                sending.set()
                release.wait(30)
                try:
                    return real(**kwargs)
                finally:
                    returned.append(threading.current_thread().name)

            client.upload_part = held_part
            stall = asyncio.Event()
            task = asyncio.create_task(store.put(body(6 * MiB, then=stall)))
            await asyncio.to_thread(sending.wait, 30)
            task.cancel()
            asyncio.get_running_loop().call_later(0.2, release.set)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert returned and returned[0].startswith("statekit-s3-part")
            assert not any(t.name.startswith("statekit-s3-part") for t in threading.enumerate())
            assert leftovers(store.sync) == []

    asyncio.run(main())


def test_async_put_cancelled_after_its_commit_names_a_blob_it_could_not_delete(
        caplog: pytest.LogCaptureFixture) -> None:
    """Cancelled once the worker committed: the blob is deleted, its key having reached
    no one; when that delete fails (the backend went down), the key is logged (it was
    left in silence, under a key nobody knows)."""
    async def main() -> str:
        store = AsyncBlobStore("memory://forget")
        committed, release = threading.Event(), threading.Event()
        count = store.sync.counters.incr

        def held_after_commit(name: str, amount: int = 1) -> None:  # put() counts once committed
            count(name, amount)
            if name == "puts":
                committed.set()
                release.wait(30)

        def down(key: str) -> bool:
            raise BackendUnavailable("the store went away")

        store.sync.counters.incr = held_after_commit  # type: ignore[method-assign]
        store.sync.delete = down  # type: ignore[method-assign]
        task = asyncio.create_task(store.put(b"committed, never returned", content_type="text/plain"))
        await asyncio.to_thread(committed.wait, 30)
        task.cancel()
        asyncio.get_running_loop().call_soon(release.set)
        with pytest.raises(asyncio.CancelledError):
            await task
        [blob] = store.sync.list()
        await store.aclose()
        return blob.key

    with caplog.at_level(logging.WARNING, logger="statekit.blobs"):
        key = asyncio.run(main())
    assert any(key in r.getMessage() and "BackendUnavailable" in r.getMessage() for r in caplog.records)


def test_async_read_body_is_read_one_byte_past_max_size() -> None:
    """A body with ``async read(n)`` is asked for no more than one byte past
    ``max_size``, as the sync store reads a file (it was asked for a whole chunk)."""
    class Body:
        def __init__(self) -> None:
            self.taken = 0

        async def read(self, size: int = -1) -> bytes:
            self.taken += size
            return b"x" * size

    async def main() -> int:
        async with AsyncBlobStore("memory://read-size") as store:
            given = Body()
            with pytest.raises(BlobTooLarge):
                await store.put(given, max_size=1000, content_type="text/plain")
            assert [b async for b in store.list()] == []
            return given.taken

    assert asyncio.run(main()) == 1001
