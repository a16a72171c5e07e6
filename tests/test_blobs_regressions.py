"""Regressions found in review: direct uploads held to their signed size, and a
migration that never reports success while files under the source were left behind."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from statekit.blobs import Blob, BlobStore
from statekit.errors import (
    BackendUnavailable,
    BlobNotFound,
    BlobTooLarge,
    ContentTypeMismatch,
    DisallowedContentType,
)
from statekit.migrate import load_manifest, migrate
from statekit.pytest_plugin import wait_for
from statekit.testing.contracts.blobs import HTML, direct_upload, png_bytes


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_receive_upload_holds_the_body_to_the_signed_max_size(tmp_path: Path, backend: str) -> None:
    store = BlobStore("memory://receive-limit" if backend == "memory" else f"file://{tmp_path}/store?create=1")
    up = store.presign_upload(max_size=100, expires=60)
    with pytest.raises(BlobTooLarge):
        store.receive_upload(up.fields, io.BytesIO(b"x" * (1024 * 1024)), content_type="text/plain")
    assert not store.exists(up.key)
    assert list(store.list()) == []
    if backend == "file":  # nothing half-written on disk either: no blob, no temporary file
        assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()
                and ".statekit" not in p.parts] == []
    at_limit = store.presign_upload(max_size=len(png_bytes()), expires=60)
    store.receive_upload(at_limit.fields, io.BytesIO(png_bytes()), content_type="image/png")
    assert store.confirm(at_limit.key).size == len(png_bytes())


def test_migrate_reports_symlinks_instead_of_skipping_them_silently(tmp_path: Path) -> None:
    src, outside = tmp_path / "uploads", tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    (src / "a.txt").write_bytes(b"regular file\n")
    (outside / "o.txt").write_bytes(b"outside the tree\n")
    os.symlink(src / "a.txt", src / "sub" / "alias.txt")
    os.symlink(outside, src / "linked-dir")
    store = BlobStore(f"file://{tmp_path}/dest?create=1")
    report = migrate(str(src), store, manifest=str(tmp_path / "m.jsonl"))
    assert sorted(report.mapping) == ["a.txt"]
    assert report.ok  # a link is a warning: it does not fail every run (issue 20)
    assert sorted(report.warnings) == ["linked-dir", "sub/alias.txt"]
    assert all("symbolic link" in msg for msg in report.warnings.values())
    assert [b.size for b in store.list()] == [len(b"regular file\n")]  # the link target was not followed


def test_migrate_unreadable_directory_is_a_failure_not_a_silent_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "uploads"
    (src / "private").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a\n")
    (src / "private" / "b.txt").write_bytes(b"b\n")
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:  # the suite runs as root: chmod 000 is no bar
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = migrate(str(src), BlobStore(f"file://{tmp_path}/dest?create=1"),
                     manifest=str(tmp_path / "m.jsonl"))
    assert sorted(report.mapping) == ["a.txt"]
    assert list(report.failed) == ["private"] and "Permission denied" in report.failed["private"]


def test_migrate_rerun_uploads_again_what_failed_verification(tmp_path: Path) -> None:
    src = tmp_path / "uploads"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first\n")
    (src / "b.txt").write_bytes(b"second\n")
    manifest = str(tmp_path / "m.jsonl")
    store = BlobStore(f"file://{tmp_path}/dest?create=1")
    first = migrate(str(src), store, manifest=manifest)
    assert first.ok and first.verified == 2
    assert store.delete(first.mapping["a.txt"])  # lost after the run (lifecycle rule, operator...)

    second = migrate(str(src), store, manifest=manifest)
    assert list(second.failed) == ["a.txt"] and "verify" in second.failed["a.txt"]
    assert "a.txt" not in load_manifest(manifest)  # no longer counted as done

    third = migrate(str(src), store, manifest=manifest)
    assert third.ok and third.uploaded == 1 and third.skipped == 1 and third.verified == 2
    with store.open(third.mapping["a.txt"]) as f:
        assert f.read() == b"first\n"


def test_migrate_manifest_of_another_destination_is_not_trusted(tmp_path: Path) -> None:
    src = tmp_path / "uploads"
    src.mkdir()
    (src / "a.txt").write_bytes(b"to staging, then to production\n")
    manifest = str(tmp_path / "m.jsonl")  # the CLI's default is one file in the working directory
    staging = BlobStore(f"file://{tmp_path}/staging?create=1")
    assert migrate(str(src), staging, manifest=manifest).ok
    production = BlobStore(f"file://{tmp_path}/production?create=1")
    report = migrate(str(src), production, manifest=manifest)
    assert report.ok and report.uploaded == 1 and report.skipped == 0
    with production.open(report.mapping["a.txt"]) as f:
        assert f.read() == b"to staging, then to production\n"


def test_missing_file_store_root_is_an_outage_not_a_bad_key(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    store = BlobStore(f"file://{root}?create=1")
    store.put(b"before", content_type="text/plain")
    shutil.rmtree(root)  # the shared volume went away
    with pytest.raises(BackendUnavailable, match="missing"):
        store.put(b"during the outage", content_type="text/plain")
    with pytest.raises(BackendUnavailable):
        store.presign_upload(max_size=10)
    with pytest.raises(BackendUnavailable, match="missing"):  # not an empty listing
        list(store.list())
    assert not root.exists()  # not silently recreated on this machine's disk
    root.mkdir()  # mounted again
    blob = store.put(b"after", content_type="text/plain")
    assert [b.key for b in store.list()] == [blob.key]


@pytest.mark.s3
def test_client_declared_part_length_does_not_size_the_s3_buffers(s3_url: str) -> None:
    """A multipart form part may carry its own Content-Length; it is the client's
    word. Sizing S3 parts from it let one header make put() hold the whole upload in
    memory (a 10 TB claim asks for ~1 GB parts)."""
    from werkzeug.datastructures import FileStorage, Headers

    mib = 1024 * 1024
    store = BlobStore(s3_url + "&retries=0", part_size=5 * mib, multipart_threshold=5 * mib)
    sent: list[int] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.UploadPart", lambda params, **kw: sent.append(len(params["Body"])))
    store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **kw: sent.append(len(params["Body"])))
    data = b"\x00\x01" * (6 * mib)
    upload = FileStorage(io.BytesIO(data), filename="big.bin", content_type="application/octet-stream",
                         headers=Headers({"Content-Length": str(10 * 10**12)}))
    blob = store.put(upload)
    assert blob.size == len(data)
    with store.open(blob.key) as f:
        assert f.read() == data
    assert sum(sent) == len(data) and max(sent) < len(data)  # sent in parts, never buffered whole


class _SilentEndpoint:
    """A loopback listener that accepts connections and reads requests but never
    answers (a hung S3 endpoint); counts the connections that sent a request."""

    def __init__(self) -> None:
        self._ls = socket.create_server(("127.0.0.1", 0))
        self.port = self._ls.getsockname()[1]
        self.requests = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._ls.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if conn.recv(65536):
                with self._lock:
                    self.requests += 1
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self._ls.close()
        for c in self._conns:
            c.close()


@pytest.mark.parametrize("retries", [0, 2])
def test_s3_retries_option_is_the_number_of_retries(retries: int) -> None:
    endpoint = _SilentEndpoint()
    try:
        store = BlobStore(f"s3://k:s@bucket?endpoint_url=http://127.0.0.1:{endpoint.port}"
                          f"&read_timeout=0.5&retries={retries}")
        with pytest.raises(BackendUnavailable):
            store.stat("2026/12/07/" + "0" * 32 + ".txt")  # a read: a write is never sent again
        # retries=0: one attempt, not two (the listener thread may count the last one late)
        wait_for(lambda: endpoint.requests >= retries + 1, what="every attempt counted")
        assert endpoint.requests == retries + 1
    finally:
        endpoint.close()


@pytest.mark.s3
def test_s3_upload_form_sent_again_after_confirm_never_reaches_the_blob(s3_url: str) -> None:
    """An S3 POST form stays valid until it expires. Sent again after confirm() with
    other content (here HTML for an image), it reaches only the staging key: the
    accepted blob keeps the checked bytes, and cleanup removes the leftover."""
    store = BlobStore(s3_url)
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    direct_upload(store, up, png_bytes(), "image/png")
    assert store.confirm(up.key).size == len(png_bytes())
    direct_upload(store, up, HTML, "image/png")  # the same form, replayed
    assert store.confirm(up.key).size == len(png_bytes())
    with store.open(up.key) as f:
        assert f.read() == png_bytes()
    assert store.cleanup_incomplete(older_than=0) == 1  # the replayed staging object
    assert [b.key for b in store.list()] == [up.key]
    with store.open(up.key) as f:
        assert f.read() == png_bytes()


@pytest.mark.s3
def test_s3_refused_direct_upload_leaves_nothing_staged(s3_url: str) -> None:
    store = BlobStore(s3_url)
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    direct_upload(store, up, HTML, "image/png")
    with pytest.raises(ContentTypeMismatch):
        store.confirm(up.key)
    assert not store.exists(up.key)
    assert store.cleanup_incomplete(older_than=0) == 0  # neither the copy nor the staged upload is left


@pytest.mark.parametrize("scheme", ["memory", pytest.param("s3", marks=pytest.mark.s3)])
def test_url_expiry_is_checked_up_front(scheme: str, request: pytest.FixtureRequest) -> None:
    """A URL that could never work is refused when made, not when a browser uses it."""
    store = BlobStore("memory://url-expiry" if scheme == "memory" else request.getfixturevalue("s3_url"))
    blob = store.put(b"x", content_type="text/plain")
    for bad in (0, -5):
        with pytest.raises(ValueError, match=r"expires=-?\d+ must be a finite number of seconds, at least 1"):
            store.url(blob.key, expires=bad)
    if scheme == "s3":
        with pytest.raises(ValueError, match="7 days"):
            store.url(blob.key, expires=7 * 86400 + 1)
    assert store.url(blob.key, expires=7 * 86400)


def test_file_store_mode_refused_is_an_outage_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network filesystems refuse ``chmod``: a typed error, nothing left behind."""
    root = tmp_path / "volume"
    store = BlobStore(f"file://{root}?create=1")

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(BackendUnavailable, match="not permitted"):
        store.put(b"data", content_type="text/plain")
    assert [p for p in root.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    assert store.put(b"data", content_type="text/plain").size == 4


def test_file_store_without_hard_links_leaves_no_empty_blob_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without hard links the name is claimed with an empty file, then
    the data renamed over it: if that rename fails, the empty claim goes too."""
    import errno

    root = tmp_path / "volume"
    store = BlobStore(f"file://{root}?create=1")

    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    real_replace = os.replace

    def broken_replace(src: str, dst: str) -> None:  # fails for the blob, not its metadata
        if ".statekit" in Path(dst).parts:
            return real_replace(src, dst)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(BackendUnavailable, match="Input/output"):
        store.put(b"data", content_type="text/plain")
    monkeypatch.undo()
    assert list(store.list()) == []
    assert [p.name for p in root.rglob("*") if p.is_file()] == []  # neither the blob nor its metadata
    blob = store.put(b"data", content_type="text/plain")
    with store.open(blob.key) as f:
        assert f.read() == b"data"


# --- issue 16: what a Django user saves (compressed files, text named as application/*) ---

def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("declared", [None, "application/octet-stream", "application/gzip",
                                      "application/x-gzip"])
@pytest.mark.parametrize("name", ["backup.tar.gz", "export.csv.gz", "data.gz", "logs.tgz"])
def test_gzip_files_are_stored_as_gzip(name: str, declared: str | None) -> None:
    """The name's guess used to drop ``.gz`` (``export.csv.gz`` was declared CSV and
    refused), and ``application/gzip`` was not the sniffed ``application/x-gzip``."""
    store = BlobStore("memory://gzip-names")
    blob = store.put(_gz(b"id,name\n1,a\n"), filename=name, content_type=declared,
                     allowed_types=["application/gzip"])
    assert blob.content_type == "application/gzip" and blob.key.endswith(".gz")
    assert blob.filename == name
    with store.open(blob.key) as f:
        assert f.read() == _gz(b"id,name\n1,a\n")


@pytest.mark.parametrize(("name", "payload", "expected"), [
    ("dump.sql.bz2", "bz2", "application/x-bzip2"),
    ("dump.sql.xz", "lzma", "application/x-xz"),
])
def test_bzip2_and_xz_files_are_stored_by_their_compression(name: str, payload: str, expected: str) -> None:
    import importlib

    data = importlib.import_module(payload).compress(b"select 1;\n" * 50)
    store = BlobStore("memory://compressed-names")
    blob = store.put(data, filename=name, allowed_types=[expected])
    assert blob.content_type == expected and blob.key.endswith("." + name.rsplit(".", 1)[1])


def _application_named_text() -> list[str]:
    """Names of text files that ``mimetypes`` maps to an ``application/*`` type here
    (the system's mime.types decides: ``.sh`` is ``text/x-sh`` on Debian)."""
    import mimetypes

    names = ["schema.sql", "install.csh", "setup.sh", "paper.tex", "paper.latex", "tool.tcl"]
    return [n for n in names if (mimetypes.guess_type(n, strict=False)[0] or "").startswith("application/")]


@pytest.mark.parametrize("declared", [None, "application/octet-stream"])
def test_text_named_as_an_application_type_follows_the_octet_stream_rule(declared: str | None) -> None:
    """``put()`` used to swap the name's guess (``application/sql``) in for the generic
    declaration, so text could never be stored under such a name."""
    from werkzeug.datastructures import FileStorage

    names = _application_named_text()
    assert names
    store = BlobStore("memory://text-names")
    for name in names:  # as a browser sends it: its own filename and type
        blob = store.put(FileStorage(io.BytesIO(b"CREATE TABLE t (id int);\n"), filename=name,
                                     content_type=declared))
        assert (name, blob.content_type, blob.filename) == (name, "text/plain", name)
        with store.open(blob.key) as f:
            assert f.read() == b"CREATE TABLE t (id int);\n"


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_signed_url_of_a_missing_blob_is_made_like_a_presigned_one(scheme: str, tmp_path: Path) -> None:
    """``url()`` on file:// and memory:// read the blob's filename and raised
    ``BlobNotFound`` for a missing one (S3's presigned URL needs no request); the URL
    is made, and reads as missing."""
    store = BlobStore("memory://missing-url" if scheme == "memory" else f"file://{tmp_path}")
    key = "2026/01/01/" + "0" * 32 + ".png"
    url = store.url(key)
    assert store.verify_url(url) == (key, "attachment")
    with pytest.raises(BlobNotFound):
        store.open(key)


def test_a_type_prefix_naming_an_alias_allows_the_folded_type() -> None:
    """A direct upload limited to ``application/x-gzip`` (the browser's word, checked
    as the prefix ``application/x-gzip*``) is still allowed now that gzip is stored as
    ``application/gzip``; the alias never widens the prefix to other types."""
    from statekit.blobs import check_content_type

    data = _gz(b"payload\n")
    assert check_content_type(data, "application/x-gzip", ["application/x-gzip*"]) == "application/gzip"
    assert check_content_type(data, None, ["application/x-gzip"]) == "application/gzip"
    with pytest.raises(DisallowedContentType):
        check_content_type(png_bytes(), None, ["application/x-gzip*"])


def test_cleanup_leaves_an_upload_confirmed_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process confirms a direct upload after cleanup_incomplete listed its
    pending marker: the marker is gone when cleanup reads it, and the accepted blob
    stays (a missing policy is not a stale one)."""
    store = BlobStore("memory://cleanup-race")
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=1)
    direct_upload(store, up, png_bytes(), "image/png")
    listed = list(store._internal(".statekit/pending/"))
    assert [b.key for b in listed] == [f".statekit/pending/{up.key}"]
    store.confirm(up.key)  # the other process
    monkeypatch.setattr(store, "_internal", lambda prefix: iter(listed if "pending" in prefix else []))
    assert store.cleanup_incomplete(older_than=0) == 0
    with store.open(up.key) as f:
        assert f.read() == png_bytes()


def test_a_verdict_read_while_it_is_written_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without hard links a record is claimed empty, then its bytes are
    renamed over the claim. A second confirm that read the first's verdict in between
    took the empty record for an old 'expired' one and deleted the blob the first then
    accepted and returned; it now waits for the record, and is told to try again."""
    import errno

    from statekit.errors import BlobError

    store = BlobStore(f"file://{tmp_path}/volume?create=1")
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    direct_upload(store, up, png_bytes(), "image/png")
    real_replace, second = os.replace, list[object]()

    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    def replace(src: str, dst: str) -> None:
        parts = Path(dst).parts
        if "verdict" in parts and "meta" not in parts and not second:  # the first's verdict is claimed, empty
            second.append(None)
            try:
                second[0] = store.confirm(up.key)
            except BlobError as e:
                second[0] = e
        real_replace(src, dst)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", replace)
    first = store.confirm(up.key)
    monkeypatch.undo()
    assert first.key == up.key
    with store.open(up.key) as f:
        assert f.read() == png_bytes()
    assert isinstance(second[0], BlobError) and not isinstance(second[0], BlobNotFound), second
    assert store.confirm(up.key).key == up.key


@pytest.mark.s3
def test_s3_form_replayed_between_two_confirms_never_replaces_the_accepted_blob(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3's copy from the staging key replaces what is there. A second confirm of a
    form (it read the pending marker before the first accepted the upload) copied a
    form sent again meanwhile (HTML for an image) over the accepted blob, then
    refused it: the HTML stayed under the key the first confirm had returned."""
    store = BlobStore(s3_url)
    up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    direct_upload(store, up, png_bytes(), "image/png")
    read_policy, first = store._policy, list[object]()

    def policy(key: str) -> bytes | None:
        raw = read_policy(key)
        if not first:  # the second has read the marker: the first runs through, then the replay
            first.append(None)
            first[0] = store.confirm(key)
            direct_upload(store, up, HTML, "image/png")
        return raw

    monkeypatch.setattr(store, "_policy", policy)
    second = store.confirm(up.key)
    assert isinstance(first[0], Blob) and first[0].key == second.key == up.key
    assert second.size == len(png_bytes())
    with store.open(up.key) as f:
        assert f.read() == png_bytes()
