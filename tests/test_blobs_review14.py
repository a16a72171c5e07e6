"""Review 14 of the blob store: three fault holes, each driven step by step (a body
held on an event, a botocore hook answering for moto, a step boundary of a delete),
each failing before its fix:

* ``file://``: ``delete(key)`` racing a new write of the same key removed the new
  blob's record (the blob stayed, without its type, filename and SHA-256).
"""

from __future__ import annotations

import datetime
import os
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from statekit.blobs import BlobStore, local
from statekit.blobs.protocol import WriteRequest, encode_meta

MiB = 2**20
CHUNK = 256 * 1024
_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


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
