"""Review 14 of the blob store: three fault holes, each driven step by step (a body
held on an event, a botocore hook answering for moto, a step boundary of a delete),
each failing before its fix:

* async: a put of a *sync* body (a file, an iterator of bytes) whose task was
  cancelled went on reading and uploading the whole body in its worker thread, then
  deleted the object: the cancel waited for the whole transfer;
* S3: ``stat()`` of a multipart blob answered ``sha256=None`` when reading its
  SHA-256 tag failed for any reason (an outage, the object deleted meanwhile), as
  for a blob with no digest recorded;
* ``file://``: ``delete(key)`` racing a new write of the same key removed the new
  blob's record (the blob stayed, without its type, filename and SHA-256).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import logging
import os
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_blobs_async import leftovers

from statekit.blobs import AsyncBlobStore, BlobStore, local
from statekit.blobs.protocol import WriteRequest, encode_meta
from statekit.errors import BackendUnavailable, BlobNotFound

MiB = 2**20
CHUNK = 256 * 1024
_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


# -- 1. a cancelled put of a sync body -------------------------------------------------------
class _Held:
    """What a sync body's reader sees: *total* bytes, held at *at* bytes until *go*;
    counts the reads answered after that (``late``)."""

    def __init__(self, total: int, at: int) -> None:
        self.total, self.at, self.done, self.late = total, at, 0, 0
        self.reached, self.go = threading.Event(), threading.Event()

    def take(self, n: int) -> bytes:
        if self.done >= self.at:
            self.reached.set()
            assert self.go.wait(60), "the test never released the body"
            self.late += 1
        data = os.urandom(max(0, min(n, self.total - self.done)))
        self.done += len(data)
        return data


class _HeldFile(io.RawIOBase):
    """A binary file object (``read(n)``) over :class:`_Held`."""

    def __init__(self, held: _Held) -> None:
        self.held = held

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.held.take(CHUNK if n < 0 else n)


def _held_chunks(held: _Held) -> Iterator[bytes]:
    """An iterator of ``bytes`` over :class:`_Held`."""
    while data := held.take(CHUNK):
        yield data


@pytest.mark.parametrize("kind", ["file", "iterator"])
@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_async_put_of_a_sync_body_stops_reading_when_cancelled(
        scheme: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """40 MiB in 256 KiB reads, held at 12 MiB (two S3 parts sent): the task is
    cancelled there, the body released just after the cancellation reached the put.
    The worker reads at most the read it was in, aborts (S3: the multipart upload),
    and the put raises CancelledError with nothing left. It read all 40 MiB before
    (160 reads), uploaded them, and only then deleted the object."""
    url = str(request.getfixturevalue("s3_url")) if scheme == "s3" else f"file://{tmp_path}/s?create=1"
    options = {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB} if scheme == "s3" else {}
    held = _Held(40 * MiB, 12 * MiB)
    source: Any = _HeldFile(held) if kind == "file" else _held_chunks(held)

    async def main() -> None:
        async with AsyncBlobStore(url, **options) as store:
            task = asyncio.create_task(store.put(source, content_type="application/octet-stream"))
            assert await asyncio.to_thread(held.reached.wait, 60)
            task.cancel()
            # runs after the task's wake-up, which the cancel scheduled first: the put
            # has seen its cancellation when the body answers its pending read
            asyncio.get_running_loop().call_soon(held.go.set)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert held.late <= 1 and held.done < held.total, (held.late, held.done)
            assert leftovers(store.sync) == []
            assert store.sync.counters.get("aborts") == 1 and store.sync.counters.get("puts") == 0

    asyncio.run(main())


def test_async_put_of_a_sync_body_not_cancelled_reads_it_all(tmp_path: Path) -> None:
    """The interruption is the cancelled put's alone: a put of a sync body next to it,
    on the same store, stores every byte."""
    async def main() -> None:
        async with AsyncBlobStore(f"file://{tmp_path}/s?create=1") as store:
            held = _Held(4 * MiB, 1 * MiB)
            task = asyncio.create_task(store.put(_held_chunks(held), content_type="application/octet-stream"))
            assert await asyncio.to_thread(held.reached.wait, 60)
            task.cancel()
            asyncio.get_running_loop().call_soon(held.go.set)
            with pytest.raises(asyncio.CancelledError):
                await task
            data = os.urandom(3 * MiB)
            blob = await store.put(iter([data[:MiB], data[MiB:]]), content_type="application/octet-stream")
            assert blob.size == len(data) and blob.sha256 == hashlib.sha256(data).hexdigest()
            assert await store.read_range(blob.key, 0, len(data)) == data

    asyncio.run(main())


# -- 2. S3 stat() and the SHA-256 tag ----------------------------------------------------------
def _multipart_blob(store: BlobStore) -> tuple[str, str]:
    """A 6 MiB blob stored in two parts (its SHA-256 in a tag); its key and SHA-256."""
    data = os.urandom(6 * MiB)
    blob = store.put(data, content_type="application/octet-stream")
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    return blob.key, blob.sha256


class _Raw:
    """The raw body botocore reads a response from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _refused(status: int, code: str) -> Any:
    """A botocore hook answering for S3 with *status* and error *code* (403 AccessDenied:
    credentials without ``s3:GetObjectTagging``; 501 NotImplemented: a store without tags)."""
    from botocore.awsrequest import AWSResponse

    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{code}</Message><RequestId>r</RequestId></Error>").encode()

    def answer(request: Any, **_: Any) -> Any:
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    return answer


@pytest.mark.s3
def test_s3_stat_raises_when_the_sha256_tag_cannot_be_read_for_an_outage(s3_url: str) -> None:
    """GetObjectTagging fails without S3's answer (the connection timed out, after
    botocore's retries): stat() raises BackendUnavailable, as for the HEAD before it.
    It answered sha256=None, as for a blob with no digest recorded."""
    from botocore.exceptions import ConnectTimeoutError

    store = BlobStore(s3_url + "&retries=1", part_size=5 * MiB, multipart_threshold=5 * MiB)
    key, sha = _multipart_blob(store)
    assert store.stat(key).sha256 == sha
    calls: list[str] = []

    def down(request: Any, **_: Any) -> Any:
        calls.append(request.url)
        raise ConnectTimeoutError(endpoint_url=request.url)

    store.backend.client.meta.events.register("before-send.s3.GetObjectTagging", down)
    with pytest.raises(BackendUnavailable, match="get_object_tagging"):
        store.stat(key)
    assert len(calls) == 2  # botocore retried it once, as configured


@pytest.mark.s3
def test_s3_stat_of_a_blob_deleted_after_its_head_is_not_found(s3_url: str) -> None:
    """The blob is deleted between stat()'s HEAD and its GetObjectTagging: stat()
    raises BlobNotFound (it returned the record of a blob no longer there)."""
    store = BlobStore(s3_url, part_size=5 * MiB, multipart_threshold=5 * MiB)
    key, _ = _multipart_blob(store)
    other = BlobStore(s3_url)

    def delete_first(request: Any, **_: Any) -> None:
        other.backend.client.delete_object(Bucket=other.backend.bucket, Key=other.backend._full(key))

    store.backend.client.meta.events.register("before-send.s3.GetObjectTagging", delete_first)
    with pytest.raises(BlobNotFound):
        store.stat(key)


@pytest.mark.s3
@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (501, "NotImplemented")])
def test_s3_stat_without_permission_to_read_tags_says_so_once(
        s3_url: str, caplog: pytest.LogCaptureFixture, status: int, code: str) -> None:
    """Credentials without ``s3:GetObjectTagging`` (S3 answers 403 AccessDenied), or a
    store without tags (501): a setting, not an outage. stat() keeps working for size,
    type and dates (Django's size()/exists() go through it), answers sha256=None, and
    the store logs once, naming the permission, so "not readable here" is told apart
    from "none recorded" (it said nothing)."""
    store = BlobStore(s3_url + "&retries=0", part_size=5 * MiB, multipart_threshold=5 * MiB)
    key, _ = _multipart_blob(store)
    store.backend.client.meta.events.register("before-send.s3.GetObjectTagging", _refused(status, code))
    with caplog.at_level(logging.WARNING, logger="statekit.blobs"):
        first, second = store.stat(key), store.stat(key)
    assert first.sha256 is None and second.sha256 is None and first.size == 6 * MiB
    records = [r.getMessage() for r in caplog.records if r.name == "statekit.blobs"]
    assert len(records) == 1 and "s3:GetObjectTagging" in records[0] and code in records[0]


# -- 3. file:// delete racing a new write of the same key --------------------------------------
def _request(key: str, ctype: str) -> WriteRequest:
    return WriteRequest(key, ctype, "attachment", encode_meta({"owner": ctype}), _NOW)


def _write(store: BlobStore, key: str, data: bytes, ctype: str) -> str:
    """Write *data* under *key* (the store's own pipeline); its SHA-256."""
    sha, _ = store._write(_request(key, ctype), iter([data]))
    return sha


def test_file_delete_racing_a_new_write_of_the_key_keeps_the_new_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete(key) unlinks the old blob; a write of the same key commits at once (it
    removes the old record, an orphan now, and links its own record and blob); then
    delete goes on to the record. The new blob keeps its record: delete removed it
    (the new blob was served without its type, SHA-256 and metadata)."""
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = ".statekit/verdict/2026/01/01/" + "2" * 32
    _write(store, key, b"old", "text/plain")
    blob_path, real_unlink, new = store.backend._path(key), os.unlink, {}

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(path, *args, **kwargs)
        if path == blob_path and not new:  # delete's first step is done: the writer commits now
            new["sha"] = _write(store, key, b"new", "application/json")

    monkeypatch.setattr(os, "unlink", unlink)
    assert store.backend.delete(key) is True
    monkeypatch.undo()
    found = store.backend.stat(key)
    assert (found.sha256, found.content_type, found.metadata) == (new["sha"], "application/json",
                                                                 {"owner": "application/json"})
    assert store.backend.read_range(key, 0, 10) == b"new"


def _sleeps(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set when ``local`` first sleeps (a delete waiting for a record's writer)."""
    import time

    slept = threading.Event()

    def sleep(seconds: float) -> None:
        slept.set()
        time.sleep(seconds)

    monkeypatch.setattr(local, "time", types.SimpleNamespace(sleep=sleep, time=time.time,
                                                             monotonic=time.monotonic))
    return slept


def _delete_in_thread(store: BlobStore, key: str,
                      slept: threading.Event) -> tuple[threading.Thread, list[bool]]:
    """Start ``delete(key)``; return once it ended or waits for a record's writer."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(store.backend.delete(key)), name="deleter")
    thread.start()
    while thread.is_alive() and not slept.wait(0.01):
        pass
    return thread, result


def test_file_delete_while_a_write_links_its_blob_leaves_the_write_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete(key) of a key being written, its record in place and its blob not yet
    linked: the delete finds no blob and leaves the writer's record (it removed it,
    and the blob the writer linked next had no record)."""
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = ".statekit/verdict/2026/01/01/" + "3" * 32
    blob_path, real_link, slept = store.backend._path(key), local._link_exclusive, _sleeps(monkeypatch)
    deleting: list[tuple[threading.Thread, list[bool]]] = []

    def link(src: str, dst: str) -> None:
        if dst == blob_path:
            deleting.append(_delete_in_thread(store, key, slept))
        real_link(src, dst)

    monkeypatch.setattr(local, "_link_exclusive", link)
    sha = _write(store, key, b"new", "application/json")
    [(thread, result)] = deleting
    thread.join(60)
    assert result == [False]
    found = store.backend.stat(key)
    assert (found.sha256, found.content_type) == (sha, "application/json")


def test_file_delete_just_after_a_write_linked_its_blob_removes_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete(key) of a blob linked a moment ago, its writer still holding the record's
    lock: the delete removes the blob and, once the writer let go, the record (a
    record without its blob is not left behind). Held before too: it guards the wait
    the fix adds, as the record is no longer removed from under its writer."""
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = ".statekit/verdict/2026/01/01/" + "4" * 32
    blob_path, real_link, slept = store.backend._path(key), local._link_exclusive, _sleeps(monkeypatch)
    deleting: list[tuple[threading.Thread, list[bool]]] = []

    def link(src: str, dst: str) -> None:
        real_link(src, dst)
        if dst == blob_path:
            deleting.append(_delete_in_thread(store, key, slept))

    monkeypatch.setattr(local, "_link_exclusive", link)
    _write(store, key, b"new", "application/json")
    [(thread, result)] = deleting
    thread.join(60)
    assert result == [True]
    assert not os.path.lexists(blob_path) and not os.path.lexists(store.backend._meta_path(key))
