"""Review 15 of the blob store: loose ends, each failing before its fix.

* S3 ``delete`` was a ``HEAD`` then a plain ``DELETE``: when another delete removed the
  blob in between, both reported ``True`` for one blob (the contract's
  ``test_delete_racing_a_put`` shows it on every store); the ``DELETE`` is now
  conditional on the ``HEAD``'s ETag. Here: what the condition must not break (a
  ``DELETE`` resent after a lost answer, stores without conditional requests);
* ``file://`` on a filesystem without hard links: a record left empty by a writer that
  stopped between claiming its name and renaming its bytes over it made every delete of
  that key wait 5 s for a writer that was gone;
* S3 ``part_size`` had no upper bound (S3 takes parts of at most 5 GiB), nor
  ``multipart_threshold`` (one ``PutObject`` of at most 5 GiB), and the part size a
  writer grows to for a long upload could pass 5 GiB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_blobs_review14 import _sleeps  # tests/ is on sys.path

from statekit.blobs import BlobStore, s3
from statekit.blobs.protocol import WriteRequest
from statekit.embedded import S3Server
from statekit.errors import ConfigError

MiB = 1024 * 1024
GiB = 1024 * MiB


def _bucket(s3_url: str) -> str:
    return s3_url.split("@", 1)[1].split("?", 1)[0]


# -- S3 delete: the DELETE of the version the HEAD found ------------------------------------
@pytest.mark.s3
def test_s3_delete_whose_answer_was_lost_reports_the_blob(s3_server: S3Server, s3_url: str) -> None:
    """The ``DELETE`` is applied and its answer lost (a read timeout): botocore sends it
    again and S3 answers 404 (the condition finds nothing). The first attempt removed
    the blob: delete() says ``True``, as before the condition."""
    from botocore.exceptions import ReadTimeoutError

    store = BlobStore(s3_url + "&retries=1")
    client = store.backend.client
    blob = store.put(b"bye", content_type="text/plain")
    sent: list[dict[str, str]] = []

    def applied_then_lost(request: Any, **_: Any) -> Any:
        sent.append(dict(request.headers))
        response = client._endpoint.http_session.send(request)
        if len(sent) == 1:
            raise ReadTimeoutError(endpoint_url=request.url)
        return response

    client.meta.events.register("before-send.s3.DeleteObject", applied_then_lost)
    assert store.delete(blob.key) is True
    assert len(sent) == 2 and all("If-Match" in headers for headers in sent)
    assert not store.exists(blob.key)
    assert s3_server.client().list_objects_v2(Bucket=_bucket(s3_url)).get("Contents", []) == []


@pytest.mark.s3
def test_s3_delete_racing_a_put_keeps_the_new_blob(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract lets a delete racing a put remove the new blob or keep it; S3's
    conditional ``DELETE`` keeps it: the delete found the old blob, another removed it
    and a write stored a new one under the key before the ``DELETE`` went: 412, ``False``."""
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n: "ef" * n)
    store = BlobStore(s3_url + "&retries=0")
    old = store.put(b"old", content_type="text/plain")
    client, new = store.backend.client, []

    def meanwhile(request: Any, **_: Any) -> None:
        if not new:  # the first DELETE: another process deletes, then writes the key
            new.append(None)
            assert store.delete(old.key) is True
            new[0] = store.put(b"new", content_type="text/plain")

    client.meta.events.register("before-send.s3.DeleteObject", meanwhile)
    assert store.delete(old.key) is False
    assert new[0].key == old.key
    with store.open(old.key) as f:
        assert f.read() == b"new"


@pytest.mark.s3
def test_s3_delete_without_conditional_writes_sends_no_condition(s3_url: str) -> None:
    """``conditional_writes=false`` is for stores that refuse conditional requests: the
    ``DELETE`` carries no ``If-Match`` there, and deletes as before."""
    store = BlobStore(s3_url + "&retries=0&conditional_writes=false")
    blob = store.put(b"bye", content_type="text/plain")
    headers: list[dict[str, str]] = []
    store.backend.client.meta.events.register("before-send.s3.DeleteObject",
                                              lambda request, **_: headers.append(dict(request.headers)))
    assert store.delete(blob.key) is True
    assert store.delete(blob.key) is False
    assert len(headers) == 1 and "If-Match" not in headers[0]
    assert not store.exists(blob.key)


# -- file://: an empty record left on a filesystem without hard links ----------------------
def _writer_killed_after_claiming_the_record(url: str, key: str) -> int:
    """Write *key* in a child process on a filesystem without hard links (``os.link``
    fails with EPERM), killed (``os._exit``) after it claimed its record's name (an
    empty file) and before it renamed the record over it. The child's exit status."""
    script = textwrap.dedent(f"""
        import datetime, errno, os
        from statekit.blobs import BlobStore
        from statekit.blobs.protocol import WriteRequest

        store = BlobStore({url!r})
        record = store.backend._meta_path({key!r})
        real_replace = os.replace

        def no_links(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")

        def replace(src, dst):
            if dst == record:
                os._exit(9)
            real_replace(src, dst)

        os.link, os.replace = no_links, replace
        now = datetime.datetime.now(datetime.timezone.utc)
        store._write(WriteRequest({key!r}, "text/plain", "attachment", {{}}, now), iter([b"never"]))
    """)
    return subprocess.run([sys.executable, "-c", script], timeout=60).returncode


def test_file_delete_does_not_wait_on_an_empty_record_left_by_a_stopped_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer died between claiming its record's name and renaming its bytes over
    it: the empty claim stays, unlocked. Each delete of the key waited 5 s for it (an
    empty record may be a live writer's claim, which is not the delete's to remove); it
    is never the record of a blob a delete removed (that one has its bytes before the
    blob is linked), so a delete leaves it at once, to cleanup_partial."""
    url = f"file://{tmp_path}/s?create=1"
    key = "2026/01/01/" + "5" * 32
    assert _writer_killed_after_claiming_the_record(url, key) == 9
    store = BlobStore(url)
    record = Path(store.backend._meta_path(key))
    assert record.exists() and record.stat().st_size == 0
    slept = _sleeps(monkeypatch)
    assert store.delete(key) is False
    assert store.delete(key) is False
    assert not slept.is_set()
    assert record.exists()  # not the delete's: a claim like it may be a live writer's
    os.utime(record, (1, 1))
    assert store.backend.cleanup_partial(3600) == 1 and not record.exists()
    writer = store.backend.writer(WriteRequest(key, "text/plain", "attachment", {}, _now()))
    writer.write(b"data")
    writer.commit(hashlib.sha256(b"data").hexdigest(), 4)
    assert store.stat(key).sha256 == hashlib.sha256(b"data").hexdigest()


def test_file_delete_racing_a_writer_without_hard_links_keeps_the_new_blob_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same empty claim, of a live writer this time: a delete of the key arrives
    between the claim and the rename. It neither waits nor removes the claim, and the
    writer's blob is stored whole, with its record."""
    store = BlobStore(f"file://{tmp_path}/s?create=1")
    key = "2026/01/01/" + "6" * 32
    record, real_replace, deleted = store.backend._meta_path(key), os.replace, list[bool]()

    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    def replace(src: str, dst: str) -> None:
        if dst == record and not deleted:
            assert os.path.getsize(record) == 0
            deleted.append(store.delete(key))
        real_replace(src, dst)

    slept = _sleeps(monkeypatch)
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", replace)
    writer = store.backend.writer(WriteRequest(key, "text/plain", "attachment", {"owner": "w"}, _now()))
    writer.write(b"data")
    writer.commit(hashlib.sha256(b"data").hexdigest(), 4)
    monkeypatch.undo()
    assert deleted == [False] and not slept.is_set()
    found = store.stat(key)
    assert (found.sha256, found.metadata) == (hashlib.sha256(b"data").hexdigest(), {"owner": "w"})


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


# -- S3 part sizes within S3's limits -----------------------------------------------------
_PART_RANGE = r"part_size must be between 5242880 bytes \(5 MiB\) and 5368709120 bytes \(5 GiB\)"


@pytest.mark.s3
@pytest.mark.parametrize(("option", "value", "message"), [
    ("part_size", 5 * GiB + 1, _PART_RANGE),
    ("part_size", 5 * MiB - 1, _PART_RANGE),
    ("multipart_threshold", 5 * GiB + 1, r"multipart_threshold must be at most 5368709120 bytes \(5 GiB\)"),
])
def test_s3_sizes_out_of_range_are_refused_naming_the_limit(s3_url: str, option: str, value: int,
                                                           message: str) -> None:
    """A part larger than 5 GiB (S3's largest part) was taken and every multipart upload
    then failed at its first part; a threshold above 5 GiB made PutObjects S3 refuses."""
    with pytest.raises(ConfigError, match=message):
        BlobStore(s3_url, **{option: value})
    with pytest.raises(ConfigError, match=message):
        BlobStore(f"{s3_url}&{option}={value}")
    assert BlobStore(s3_url, part_size=5 * GiB, multipart_threshold=5 * GiB).backend.part_size == 5 * GiB


@pytest.mark.s3
def test_s3_parts_sized_for_a_known_size_stay_within_5_gib(s3_url: str) -> None:
    """A size too large for 10,000 parts of 5 GiB: the writer's parts were sized past
    S3's limit; they stop at 5 GiB (the upload then fails at its 10,001st part, saying
    S3 stores nothing that large)."""
    store = BlobStore(s3_url)
    req = WriteRequest("2026/01/01/" + "7" * 32, "application/octet-stream", "attachment", {}, _now(),
                       size_hint=60 * 1024 * GiB)
    writer: Any = store.backend.writer(req)
    assert writer._part_size == 5 * GiB
    writer.abort()


@pytest.mark.s3
def test_s3_parts_grown_for_an_unknown_size_stay_within_5_gib(s3_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An input of unknown size: at every 1000th part the part size doubles, and it
    doubled past 5 GiB from a part_size above 2.5 GiB. Scaled down (the limit 3 bytes,
    parts of 2), the parts counted, not sent (a fake part upload: the sizes are pure
    logic); S3 sees the multipart upload start and its abort."""
    store = BlobStore(s3_url)
    writer: Any = store.backend.writer(WriteRequest("2026/01/01/" + "8" * 32, "application/octet-stream",
                                                    "attachment", {}, _now()))
    monkeypatch.setattr(s3, "MAX_PART_SIZE", 3)
    monkeypatch.setattr(store.backend, "multipart_threshold", 2)
    monkeypatch.setattr(writer, "_part_size", 2)
    monkeypatch.setattr(writer, "_upload_part", lambda number, data: {"PartNumber": number, "ETag": "e"})
    sizes = []
    for _ in range(1000):
        writer.write(b"xx")
        sizes.append(writer._part_size)
    writer.abort()
    assert sizes[:999] == [2] * 999 and sizes[999] == 3  # grown at the 1000th part, to the limit
    assert store.backend.list_incomplete() == []
