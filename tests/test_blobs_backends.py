"""Backend-specific promises behind the contract: what goes over the wire to S3
(checksums, conditional create, ranged reads), and the local backend's files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statekit.blobs import BlobStore
from statekit.embedded import S3Server

MiB = 1024 * 1024


def gen(total: int) -> Iterator[bytes]:
    block = os.urandom(64 * 1024)
    sent = 0
    while sent < total:
        n = min(len(block), total - sent)
        yield block[:n]
        sent += n


class Recorder:
    """Records every request botocore sends (operation, headers, body digest)."""

    def __init__(self, client: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, request: Any, **kwargs: Any) -> None:
        body = request.body
        data = body if isinstance(body, (bytes, bytearray)) else b""
        if hasattr(body, "read") and hasattr(body, "seek"):
            pos = body.tell()
            data = body.read()
            body.seek(pos)
        op = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        self.requests.append({"op": op, "headers": {k.lower(): v.decode() if isinstance(v, bytes) else v
                                                          for k, v in request.headers.items()},
                              "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()})

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["op"] == op]


@pytest.mark.s3
def test_s3_sends_sha256_checksums_and_conditional_creates(s3_url: str, s3_server: S3Server) -> None:
    store = BlobStore(s3_url, part_size=5 * MiB)
    rec = Recorder(store.client)
    small = store.put(b"hello checksum", content_type="text/plain")
    put = rec.ops("PutObject")[-1]["headers"]
    assert put["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(small.sha256 or "")).decode()
    assert put["if-none-match"] == "*"

    big = store.put(gen(12 * MiB), content_type="application/octet-stream")
    parts = rec.ops("UploadPart")
    assert len(parts) == 3
    for p in parts:  # each part's header is the SHA-256 of that part's bytes
        assert p["headers"]["x-amz-checksum-sha256"] == p["sha256"]
    assert rec.ops("CompleteMultipartUpload")[-1]["headers"]["if-none-match"] == "*"
    assert rec.ops("CreateMultipartUpload")[-1]["headers"]["x-amz-checksum-algorithm"] == "SHA256"

    direct = s3_server.client()
    bucket = store.bucket
    head = direct.head_object(Bucket=bucket, Key=small.key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == put["x-amz-checksum-sha256"]
    assert head["ContentDisposition"] == "attachment"
    assert store.stat(big.key).sha256 == big.sha256  # the whole-object digest, kept in a tag


@pytest.mark.s3
def test_s3_open_reads_ranges_not_the_whole_object(s3_url: str) -> None:
    store = BlobStore(s3_url, read_window=1 * MiB)
    blob = store.put(gen(11 * MiB), content_type="application/octet-stream")
    rec = Recorder(store.client)
    with store.open(blob.key) as f:
        f.seek(6 * MiB)
        assert len(f.read(10)) == 10
    gets = rec.ops("GetObject")
    assert [g["headers"]["range"] for g in gets] == [f"bytes={6 * MiB}-{7 * MiB - 1}"]


@pytest.mark.s3
def test_s3_accepts_a_ready_client_and_presign_conditions(s3_server: S3Server, s3_url: str) -> None:
    from statekit.blobs.s3 import S3Backend

    bucket = s3_url.split("@", 1)[1].split("?", 1)[0]
    store = BlobStore(backend=S3Backend(client=s3_server.client(), bucket=bucket, prefix="media"))
    blob = store.put(b"via a ready client", content_type="text/plain")
    assert s3_server.client().get_object(Bucket=bucket, Key=f"media/{blob.key}")["Body"].read() == \
        b"via a ready client"
    up = store.presign_upload(max_size=1234, content_type_prefix="image/", expires=60)
    conditions = json.loads(base64.b64decode(up.fields["policy"]))["conditions"]
    assert ["content-length-range", 0, 1234] in conditions
    assert ["starts-with", "$Content-Type", "image/"] in conditions
    staged = f"media/.statekit/incoming/{up.key}"  # confirm() copies it to up.key
    assert up.fields["key"] == staged
    assert {"key": staged} in conditions  # exact key, and its date prefix
    assert ["starts-with", "$key", f"{staged.rsplit('/', 1)[0]}/"] in conditions
    assert [b.key for b in store.list()] == [blob.key]  # the pending marker is not listed
    by_url = BlobStore(f"s3://{bucket}/media", client=s3_server.client())  # a URL with a ready client
    assert by_url.read_range(blob.key, 4, 5) == b"a rea"


def test_s3_public_endpoint_signs_urls_for_the_browsers_host(s3_server: S3Server, s3_url: str) -> None:
    """``public_endpoint_url``: the app talks to the store at ``endpoint_url`` (here
    127.0.0.1, as ``minio:9000`` under Compose) while presigned URLs name the host
    browsers use (here ``localhost``), and work there."""
    import requests

    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    store = BlobStore(f"{s3_url}&public_endpoint_url={public}")
    blob = store.put(b"seen by a browser", content_type="text/plain")
    url = store.url(blob.key, expires=60)
    assert url.startswith(public + "/")
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == b"seen by a browser"
    up = store.presign_upload(max_size=100, content_type_prefix="text/", expires=60)
    assert up.url.startswith(public + "/")
    # without the option, URLs name the endpoint the app uses
    assert BlobStore(s3_url).url(blob.key, expires=60).startswith(s3_server.endpoint_url + "/")


def test_local_write_leaves_no_temp_files_and_cleanup_removes_crashed_ones(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = BlobStore(f"file://{root}?create=1")

    def failing() -> Iterator[bytes]:
        yield b"partial data " * 1000
        raise OSError("disk went away")

    with pytest.raises(OSError):
        store.put(failing(), content_type="text/plain")
    assert [p for p in root.rglob("*") if p.is_file()] == []
    blob = store.put(b"kept", content_type="text/plain")
    meta = root / ".statekit" / "meta" / f"{blob.key}.json"
    assert json.loads(meta.read_text())["size"] == 4
    # a writer killed mid-write leaves its temp file; cleanup removes it once stale
    stale = root / os.path.dirname(blob.key) / ".tmp-crashed"
    stale.write_bytes(b"half")
    orphan_meta = root / ".statekit" / "meta" / "2020" / "x.json"
    orphan_meta.parent.mkdir(parents=True)
    orphan_meta.write_text("{}")
    assert store.cleanup_incomplete(older_than=3600) == 0
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(orphan_meta, (old, old))
    assert store.cleanup_incomplete(older_than=3600) == 2
    assert not stale.exists() and not orphan_meta.exists()
    assert [b.key for b in store.list()] == [blob.key]
    assert (root / blob.key).stat().st_mode & 0o777 == 0o640


def test_local_missing_root_is_a_config_error_unless_create(tmp_path: Path) -> None:
    """A typo or an unmounted volume fails at start instead of storing uploads on
    this machine's disk; ``?create=1`` (or ``create=True``) creates the root."""
    from statekit.blobs.local import LocalBackend
    from statekit.errors import ConfigError

    missing = tmp_path / "not-mounted"
    with pytest.raises(ConfigError, match=r"does not exist \(is the volume mounted\?\).*create=1"):
        BlobStore(f"file://{missing}")
    with pytest.raises(ConfigError, match="does not exist"):
        LocalBackend(root=missing)
    assert not missing.exists()
    store = BlobStore(f"file://{missing}?create=1")
    assert missing.is_dir()
    with store.open(store.put(b"kept", content_type="text/plain").key) as f:
        assert f.read() == b"kept"
    assert LocalBackend(root=tmp_path / "made", create=True).root == str((tmp_path / "made").resolve())
    assert isinstance(BlobStore(f"file://{missing}").backend, LocalBackend)  # exists now: no option needed
    with pytest.raises(ConfigError, match="option create='maybe' must be true or false"):
        BlobStore(f"file://{missing}?create=maybe")


def test_local_reads_and_deletes_on_a_vanished_root_are_an_outage(tmp_path: Path) -> None:
    """The volume unmounted after start: a read or delete is an outage (a download
    answers 503), not a missing blob (404) or an already-deleted one."""
    import shutil

    from statekit.errors import BackendUnavailable

    root = tmp_path / "volume"
    store = BlobStore(f"file://{root}?create=1")
    key = store.put(b"kept", content_type="text/plain").key
    shutil.rmtree(root)
    for op in (store.stat, store.open, store.delete):
        with pytest.raises(BackendUnavailable, match="missing"):
            op(key)


def test_local_pending_upload_in_the_old_layout_is_still_checked(tmp_path: Path) -> None:
    """A direct upload received before the upgrade (its policy then kept as
    ``.statekit/pending/<key>.json``) is still held to its policy by confirm()."""
    import io

    from statekit.errors import ContentTypeMismatch
    from statekit.testing.contracts.blobs import HTML

    root = tmp_path / "root"
    old = BlobStore(f"file://{root}?create=1")
    up = old.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    old.receive_upload(up.fields, io.BytesIO(HTML), content_type="image/png")
    marker = root / ".statekit" / "pending" / up.key
    marker.rename(marker.with_name(marker.name + ".json"))  # where earlier versions kept it
    store = BlobStore(f"file://{root}")
    with pytest.raises(ContentTypeMismatch):
        store.confirm(up.key)
    assert not store.exists(up.key) and list(store.list()) == []


def test_local_pending_upload_recorded_by_an_old_worker_after_start_is_still_checked(tmp_path: Path) -> None:
    """During a rolling deploy an old worker keeps recording direct uploads as
    ``.statekit/pending/<key>.json`` after a new one has started (and adopted the
    markers present then): confirm() and cleanup_incomplete() of the new one still
    hold that upload to its policy."""
    import io

    from statekit.errors import ContentTypeMismatch
    from statekit.testing.contracts.blobs import HTML

    root = tmp_path / "root"
    store = BlobStore(f"file://{root}?create=1")  # the new worker, started first

    def old_worker_upload(*, expired: bool = False) -> str:
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        store.receive_upload(up.fields, io.BytesIO(HTML), content_type="image/png")
        marker = root / ".statekit" / "pending" / up.key
        policy = json.loads(marker.read_bytes())
        if expired:  # presigned a day ago, never confirmed
            policy.update(created=policy["created"] - 86400, expires=policy["expires"] - 86400)
        marker.unlink()
        marker.with_name(marker.name + ".json").write_text(json.dumps(policy))  # as the old worker keeps it
        return up.key

    key = old_worker_upload()
    with pytest.raises(ContentTypeMismatch):
        store.confirm(key)
    assert not store.exists(key) and list(store.list()) == []
    abandoned = old_worker_upload(expired=True)
    assert store.cleanup_incomplete(older_than=3600) == 1
    assert not store.exists(abandoned)
    assert [p for p in (root / ".statekit" / "pending").rglob("*") if p.is_file()] == []


@pytest.mark.s3
@pytest.mark.parametrize("conditional", [True, False])
def test_s3_confirm_copies_the_upload_only_where_nothing_is(s3_url: str, conditional: bool) -> None:
    """confirm()'s copy from S3's staging key to the blob's key is a create like every
    other write: ``If-None-Match: *`` on the CopyObject (moto does not enforce it on a
    copy, so the header is what is checked), or, with ``conditional_writes=false``, a
    HEAD first that refuses an existing key."""
    from statekit.errors import BlobExists
    from statekit.testing.contracts.blobs import direct_upload, png_bytes

    store = BlobStore(s3_url + ("" if conditional else "&conditional_writes=false"))
    rec = Recorder(store.client)
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    assert direct_upload(store, up, png_bytes(), "image/png")
    assert store.confirm(up.key).size == len(png_bytes())
    copies = rec.ops("CopyObject")
    assert len(copies) == 1
    assert copies[0]["headers"].get("if-none-match") == ("*" if conditional else None)
    if not conditional:
        with pytest.raises(BlobExists):  # the key is taken: no copy is sent
            store.backend.accept_upload(store.backend.upload_target(up.key), up.key)
        assert len(rec.ops("CopyObject")) == 1
