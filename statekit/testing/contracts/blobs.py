"""The blob-store contract suite, shipped: every blob backend passes it.

A backend's test module subclasses :class:`BlobStoreContract` and provides the
``store`` fixture: a :class:`~statekit.blobs.BlobStore` on the backend under test,
empty, closed by the fixture afterwards::

    import pytest
    from statekit.blobs import BlobStore
    from statekit.testing.contracts.blobs import BlobStoreContract

    class TestGCSBlobs(BlobStoreContract):
        @pytest.fixture
        def store(self, gcs_bucket):
            with BlobStore(f"gcs://{gcs_bucket}") as s:
                yield s

statekit runs it on ``s3://`` (moto's server over HTTP), ``file://`` and
``memory://``. It covers round trips of every input kind, streamed multi-part writes
and ranged reads, no overwrite, size limits and type checks refused before anything
is visible, an input that fails mid-stream, keys that must be refused, idempotent
deletes (and one racing another delete and a write of the key), paginated listings,
download URLs (the store's own presigned ones, fetched over HTTP, or ones the façade
signs), and direct uploads from confirm to cleanup.
Needs pytest; the HTTP checks of stores that presign their own URLs need
``requests``, the framework-upload check werkzeug and Django (skipped without them).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ...blobs import Blob, BlobStore, PresignedUpload
from ...blobs.protocol import BlobBackend
from ...blobs.store import _VERDICT_LEASE
from ...errors import (
    BlobError,
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    ContentTypeMismatch,
    DisallowedContentType,
    InvalidKey,
)

__all__ = ["HTML", "BlobStoreContract", "direct_upload", "expected", "gen", "png_bytes", "read_all"]

MiB = 1024 * 1024
KEY_RE = re.compile(r"^(?:[a-z0-9-]+/)*\d{4}/\d{2}/\d{2}/[0-9a-f]{32}(\.[a-z0-9]{1,10})?$")
#: active content a browser would run: never stored under another type
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


def png_bytes(extra: int = 0) -> bytes:
    """A real 1x1 PNG (plus *extra* bytes of trailing padding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body + b"\0" * extra


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


def gen(total: int, chunk: int = 64 * 1024, seed: int = 1) -> Iterator[bytes]:
    """*total* deterministic bytes in *chunk*-sized pieces."""
    block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block[:n]
        sent += n


def expected(total: int, chunk: int = 64 * 1024, seed: int = 1) -> bytes:
    """What :func:`gen` yields, joined."""
    return b"".join(gen(total, chunk, seed))


def _served_by_store(store: BlobStore, url: str) -> bool:
    """Whether *url* was presigned by the backend (fetched over HTTP) rather than
    signed by the façade (checked with :meth:`BlobStore.verify_url`)."""
    return not url.startswith(store.describe().rstrip("/") + "/")


def direct_upload(store: BlobStore, up: PresignedUpload, data: bytes, ctype: str) -> bool:
    """Send *data* for *up* as a browser would; ``False`` if the store refused it."""
    if _served_by_store(store, up.url):
        requests = pytest.importorskip("requests")
        fields = dict(up.fields, **{"Content-Type": ctype})
        resp = requests.post(up.url, data=fields, files={"file": ("x", data, ctype)}, timeout=10)
        return bool(resp.status_code in (200, 201, 204))
    store.receive_upload(up.fields, io.BytesIO(data), content_type=ctype)
    return True


class _Interleaving:
    """Calls run in threads, each held at the points the test names until the test lets
    it go on: one interleaving of several processes' steps, the same on every run. A
    point is a call of a method of the store (``"_decide"``) or of its backend
    (``"backend.delete"``): ``hold("cleanup", "_policy", 2)`` holds the thread
    ``cleanup`` before its second ``_policy`` call. Use it as a context manager: on
    leaving, every hold is released and every thread joined."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: BlobStore) -> None:
        self._mp, self._store = monkeypatch, store
        self._gates: dict[tuple[str, str, int], tuple[threading.Event, threading.Event]] = {}
        self._calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._outcomes: dict[str, Any] = {}

    def hold(self, thread: str, point: str, n: int = 1) -> None:
        if not any(p == point for _, p, _ in self._gates):
            owner: Any = self._store.backend if point.startswith("backend.") else self._store
            method = point.removeprefix("backend.")
            self._mp.setattr(owner, method, self._gated(point, getattr(owner, method)))
        self._gates[(thread, point, n)] = (threading.Event(), threading.Event())

    def _gated(self, point: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            thread = threading.current_thread().name
            with self._lock:
                self._calls[(thread, point)] += 1
                gate = self._gates.get((thread, point, self._calls[(thread, point)]))
            if gate is not None:
                gate[0].set()
                gate[1].wait(30)
            return real(*args, **kwargs)
        return call

    def start(self, thread: str, call: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self._outcomes[thread] = call()
            except BaseException as e:  # handed to the test
                self._outcomes[thread] = e
        self._threads[thread] = threading.Thread(target=run, name=thread, daemon=True)
        self._threads[thread].start()

    def reached(self, thread: str, point: str, n: int = 1) -> bool:
        """Wait until *thread* is held there (``True``) or has ended without getting there."""
        arrived, deadline = self._gates[(thread, point, n)][0], time.monotonic() + 30
        while not arrived.wait(0.005):
            if not self._threads[thread].is_alive():
                return arrived.is_set()
            assert time.monotonic() < deadline, f"{thread} neither reached {point} nor ended"
        return True

    def release(self, thread: str, point: str, n: int = 1) -> None:
        self._gates[(thread, point, n)][1].set()

    def outcome(self, thread: str) -> Any:
        """What *thread*'s call returned or raised, once it ended."""
        self._threads[thread].join(30)
        assert not self._threads[thread].is_alive(), f"{thread} did not end"
        return self._outcomes[thread]

    def __enter__(self) -> _Interleaving:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, release in self._gates.values():
            release.set()
        for thread in self._threads.values():
            thread.join(30)


class BlobStoreContract:
    """The blob-store contract; a subclass provides the ``store`` fixture."""

    #: the step of ``backend.delete(key)`` after it found the object and before it is
    #: done removing it, by scheme (an :class:`_Interleaving` point and call number):
    #: another process deletes and writes the key there. A backend whose delete is one
    #: step has none; a subclass for another backend may name its own.
    delete_window: dict[str, tuple[str, int]] = {
        "s3": ("backend._call", 2),  # HEAD done, DELETE not sent
        "file": ("backend._drop_record", 1),  # blob unlinked, record not removed
    }

    @pytest.fixture
    def store(self) -> Iterator[BlobStore]:
        raise NotImplementedError("a BlobStoreContract subclass provides the 'store' fixture")
        yield  # pragma: no cover

    def test_backend_implements_the_protocol(self, store: BlobStore) -> None:
        assert isinstance(store.backend, BlobBackend)
        assert store.scheme and store.describe()

    def test_put_bytes_round_trip(self, store: BlobStore) -> None:
        data = png_bytes()
        blob = store.put(data, filename="My Photo.png", metadata={"owner": "ann"})
        assert isinstance(blob, Blob)
        assert KEY_RE.match(blob.key) and blob.key.endswith(".png")
        assert "photo" not in blob.key.lower()
        assert blob.size == len(data)
        assert blob.sha256 == hashlib.sha256(data).hexdigest()
        assert blob.content_type == "image/png" and blob.filename == "My Photo.png"
        assert read_all(store, blob.key) == data
        st = store.stat(blob.key)
        assert (st.key, st.size, st.content_type, st.sha256, st.filename) == (
            blob.key, len(data), "image/png", blob.sha256, "My Photo.png")
        assert st.metadata == {"owner": "ann"}
        assert st.created is not None
        assert store.exists(blob.key)

    def test_put_accepts_file_and_iterator(self, store: BlobStore, tmp_path: Path) -> None:
        data = b"col1,col2\n1,2\n" * 100
        path = tmp_path / "in.csv"
        path.write_bytes(data)
        with open(path, "rb") as f:
            b1 = store.put(f, filename="in.csv")
        b2 = store.put(iter([data[:10], b"", data[10:]]), content_type="text/csv")
        for b in (b1, b2):
            assert b.content_type == "text/csv" and b.key.endswith(".csv")
            assert store.read_range(b.key, 0, len(data) + 10) == data
        assert store.read_range(b1.key, 5, 7) == data[5:12]

    def test_put_accepts_framework_uploads(self, store: BlobStore) -> None:
        pytest.importorskip("django")
        pytest.importorskip("werkzeug")
        from django.core.files.uploadedfile import SimpleUploadedFile
        from werkzeug.datastructures import FileStorage

        data = b"col1,col2\n1,2\n" * 100
        b1 = store.put(FileStorage(io.BytesIO(data), filename="report.csv", content_type="text/csv"))
        b2 = store.put(SimpleUploadedFile("dj.csv", data, content_type="text/csv"))
        assert (b1.filename, b2.filename) == ("report.csv", "dj.csv")
        assert read_all(store, b1.key) == read_all(store, b2.key) == data

    def test_empty_and_unknown_content(self, store: BlobStore) -> None:
        empty = store.put(b"")
        assert empty.size == 0 and read_all(store, empty.key) == b""
        binary = expected(3000, seed=7)  # no signature matches it (random bytes do, 1 run in 250)
        b = store.put(binary, content_type="application/x-custom-thing")
        assert b.content_type == "application/x-custom-thing"
        assert read_all(store, b.key) == binary

    def test_streamed_multipart_upload_and_ranged_reads(self, store: BlobStore) -> None:
        total = 11 * MiB + 123
        blob = store.put(gen(total), filename="big.bin", content_type="application/octet-stream")
        want = expected(total)
        assert blob.size == total and blob.sha256 == hashlib.sha256(want).hexdigest()
        assert store.stat(blob.key).sha256 == blob.sha256
        with store.open(blob.key) as f:
            f.seek(6 * MiB - 5)
            assert f.read(10) == want[6 * MiB - 5: 6 * MiB + 5]
            f.seek(-100, io.SEEK_END)
            assert f.read() == want[-100:]
            f.seek(0)
            digest = hashlib.sha256()
            while chunk := f.read(MiB):
                digest.update(chunk)
        assert digest.hexdigest() == blob.sha256

    def test_a_seek_before_the_start_is_refused_as_for_a_file(self, store: BlobStore) -> None:
        """A seek to a position before byte 0, from any *whence*, raises the
        ``OSError`` (``EINVAL``) a file's seek raises, and the position stays where
        it was; a seek to byte 0 exactly, or past the end, is taken."""
        data = expected(1000, seed=3)
        key = store.put(data, content_type="application/octet-stream").key
        with store.open(key) as f:
            assert f.seek(400) == 400
            for offset, whence in ((-1, io.SEEK_SET), (-401, io.SEEK_CUR), (-1001, io.SEEK_END)):
                with pytest.raises(OSError) as refused:
                    f.seek(offset, whence)
                assert refused.value.errno == errno.EINVAL, (offset, whence, refused.value)
                assert f.tell() == 400, (offset, whence)
                assert f.read(5) == data[400:405]
                f.seek(400)
            assert f.seek(-400, io.SEEK_CUR) == 0
            assert f.seek(-1000, io.SEEK_END) == 0 and f.read(3) == data[:3]
            assert f.seek(5000) == 5000 and f.read() == b""

    @pytest.mark.parametrize("size", [100, 6 * MiB])
    def test_never_overwrites(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
        monkeypatch.setattr(secrets, "token_hex", lambda n: "ab" * n)  # every key the same
        first = store.put(b"first" * 20, content_type="text/plain")
        with pytest.raises(BlobExists):
            store.put((b"y" * 1024 for _ in range(size // 1024)), content_type="text/plain")
        assert read_all(store, first.key) == b"first" * 20
        assert [b.key for b in store.list()] == [first.key]

    def test_max_size_refused_and_nothing_stored(self, store: BlobStore) -> None:
        with pytest.raises(BlobTooLarge):
            store.put(gen(10_000), max_size=9_999)
        with pytest.raises(BlobTooLarge):  # known size: refused before reading
            store.put(io.BytesIO(b"x" * 100), max_size=10)
        assert store.put(gen(10_000), max_size=10_000).size == 10_000
        assert len(list(store.list())) == 1

    def test_content_checks(self, store: BlobStore) -> None:
        with pytest.raises(ContentTypeMismatch):
            store.put(png_bytes(), content_type="text/html")
        with pytest.raises(ContentTypeMismatch):
            store.put(HTML, filename="photo.png")
        with pytest.raises(ContentTypeMismatch):
            store.put(b"just text, not an image", filename="photo.png")
        with pytest.raises(DisallowedContentType):
            store.put(HTML, filename="page.html", allowed_types=["image/*"])
        with pytest.raises(DisallowedContentType):
            store.put(png_bytes(), allowed_types=["application/pdf"])
        assert list(store.list()) == []
        assert store.put(png_bytes(), content_type="image/x-png; q=1").content_type == "image/png"
        assert store.put(png_bytes(), allowed_types=["image/*"]).content_type == "image/png"

    def test_input_exception_aborts(self, store: BlobStore) -> None:
        class Boom(RuntimeError):
            pass

        def failing() -> Iterator[bytes]:
            yield from gen(7 * MiB)
            raise Boom("client went away")

        with pytest.raises(Boom):
            store.put(failing(), content_type="application/octet-stream")
        assert list(store.list()) == []
        store.cleanup_incomplete(older_than=0)
        assert list(store.list()) == []

    def test_a_write_in_progress_is_not_listed(self, store: BlobStore) -> None:
        """Nothing of a write shows before it commits: while its input is still read,
        past a part (sent, spooled or buffered by then), a listing shows nothing, and
        once committed it shows the blob alone."""
        listed: list[list[str]] = []

        def slow_client() -> Iterator[bytes]:
            yield from gen(7 * MiB)
            listed.append([b.key for b in store.list()])
            yield b"end"

        blob = store.put(slow_client(), content_type="application/octet-stream")
        assert listed == [[]]
        assert [b.key for b in store.list()] == [blob.key]

    def test_missing_and_invalid_keys(self, store: BlobStore) -> None:
        missing = "2020/01/01/" + "0" * 32 + ".png"
        with pytest.raises(BlobNotFound):
            store.open(missing)
        with pytest.raises(BlobNotFound):
            store.stat(missing)
        assert not store.exists(missing)
        assert store.delete(missing) is False
        for bad in ["../../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a\x00b", "", "x" * 2000,
                    ".statekit/x", "a\\..\\b"]:
            with pytest.raises(InvalidKey):
                store.open(bad)
            with pytest.raises(InvalidKey):
                store.delete(bad)

    def test_statekit_objects_are_out_of_reach(self, store: BlobStore) -> None:
        """The pending upload's policy (and S3's staged copy) that statekit keeps under
        ``.statekit/`` is reachable through no public method, and never listed."""
        up = store.presign_upload(max_size=10_000, expires=60)
        assert direct_upload(store, up, b"staged, not confirmed", "text/plain")
        assert list(store.list()) == []
        own = [f".statekit/pending/{up.key}", f".statekit/incoming/{up.key}", "a/../.statekit/pending/x"]
        for key in own:
            for call in (store.open, store.stat, store.exists, store.delete, store.url, store.confirm,
                         lambda k: store.read_range(k, 0, 10),
                         lambda k: store.signed_params(k, expires=60, disposition="attachment"),
                         lambda k: store.check_params(k, {"expires": "0", "signature": ""}),
                         lambda k: list(store.list(k)), lambda k: list(store.list(k.rsplit("/", 1)[0] + "/")),
                         lambda k: store.receive_upload(dict(up.fields, key=k), io.BytesIO(b"x"))):
                with pytest.raises(InvalidKey):
                    call(key)
        for prefix in (".statekit", ".statekit/", "./", "../"):
            with pytest.raises(InvalidKey):
                store.list_page(prefix)
        assert store.confirm(up.key).size == len(b"staged, not confirmed")  # the upload is intact

    def test_delete_is_idempotent(self, store: BlobStore) -> None:
        blob = store.put(b"bye", content_type="text/plain")
        assert store.delete(blob.key) is True
        assert store.delete(blob.key) is False
        assert not store.exists(blob.key)

    @pytest.mark.parametrize("then_put", [False, True], ids=["another-delete", "another-delete-and-a-put"])
    def test_delete_racing_a_put(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch,
                                 then_put: bool) -> None:
        """``delete(key)`` while, between its look at the blob and its removal, another
        process deletes that blob and (``then_put``) a write stores a new one under the
        key: each blob removed is reported by one ``True`` and no more (S3's HEAD and
        DELETE said ``True`` twice for one blob), and the new blob is kept whole, with
        its record, or removed whole."""
        monkeypatch.setattr(secrets, "token_hex", lambda n: "cd" * n)  # the put writes the same key again
        old = store.put(b"old", content_type="text/plain")
        window = self.delete_window.get(store.scheme)
        new: Blob | None = None
        with _Interleaving(monkeypatch, store) as run:
            if window:
                run.hold("first", *window)
                run.start("first", lambda: store.delete(old.key))
                assert run.reached("first", *window)
            else:
                run.start("first", lambda: store.delete(old.key))
                run.outcome("first")
            second = store.delete(old.key)
            if then_put:
                new = store.put(b"new", content_type="text/plain", metadata={"owner": "new"})
                assert new.key == old.key
            if window:
                run.release("first", *window)
            first = run.outcome("first")
        assert isinstance(first, bool), first
        kept = store.exists(old.key)
        assert [first, second].count(True) == (2 if new is not None and not kept else 1)
        if kept:
            assert new is not None and read_all(store, new.key) == b"new"
            found = store.stat(new.key)
            assert (found.sha256, found.content_type, found.metadata) == (new.sha256, "text/plain",
                                                                         {"owner": "new"})
        assert [b.key for b in store.list()] == ([old.key] if kept else [])

    def test_list_is_paginated_and_prefixed(self, store: BlobStore) -> None:
        keys = sorted(store.put(f"n{i}".encode(), content_type="text/plain", prefix="docs").key
                      for i in range(7))
        other = store.put(b"other", content_type="text/plain", prefix="misc")
        pages = []
        cursor = None
        while True:
            page = store.list_page("docs/", cursor=cursor, page_size=3)
            pages.append([b.key for b in page.items])
            if page.cursor is None:
                break
            cursor = page.cursor
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [k for p in pages for k in p] == keys
        assert [b.key for b in store.list("docs/", page_size=2)] == keys
        assert sorted(b.key for b in store.list()) == sorted([*keys, other.key])
        assert all(b.size == 2 for b in store.list("docs/"))

    def test_url_serves_download_with_rfc5987_name(self, store: BlobStore) -> None:
        blob = store.put(b"report body", filename="r\u00e9sum\u00e9 \u202eexe.txt")
        assert blob.filename == "r\u00e9sum\u00e9 exe.txt"
        url = store.url(blob.key, expires=60)
        if _served_by_store(store, url):
            requests = pytest.importorskip("requests")
            resp = requests.get(url, timeout=10)
            assert resp.status_code == 200 and resp.content == b"report body"
            disp = resp.headers["Content-Disposition"]
        else:
            key, disp = store.verify_url(url)
            assert key == blob.key
            with pytest.raises(BlobError):
                store.verify_url(url.replace("expires=", "expires=9"))
        assert 'filename="resume exe.txt"' in disp and "filename*=UTF-8''r%C3%A9sum%C3%A9%20exe.txt" in disp
        assert "other.txt" in store.url(blob.key, expires=60, download_name="other.txt")
        with pytest.raises(ValueError):
            store.url(blob.key, expires=0)

    def test_presigned_upload_confirm_and_cleanup(self, store: BlobStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        good = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert good.key not in (b.key for b in store.list())
        assert direct_upload(store, good, png_bytes(), "image/png")
        blob = store.confirm(good.key)
        assert blob.size == len(png_bytes()) and store.confirm(good.key).key == good.key

        big = store.presign_upload(max_size=100, content_type_prefix="image/", expires=60)
        try:  # the store refuses it while it streams (S3, receive_upload), or confirm() does
            sent = direct_upload(store, big, png_bytes(extra=500), "image/png")
        except BlobTooLarge:
            sent = False
        if sent:
            with pytest.raises(BlobTooLarge):
                store.confirm(big.key)
        assert not store.exists(big.key)

        liar = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, liar, HTML, "image/png")
        with pytest.raises(ContentTypeMismatch):
            store.confirm(liar.key)
        assert not store.exists(liar.key)

        wrong = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, wrong, b"%PDF-1.4\n%...", "application/pdf")
        with pytest.raises(DisallowedContentType):
            store.confirm(wrong.key)

        # a minute: a form's expiry is counted in whole seconds, so expires=1 could end
        # before the upload was sent (the presign late in a second: this test failed)
        abandoned = store.presign_upload(max_size=10_000, expires=60)
        assert direct_upload(store, abandoned, b"never confirmed", "text/plain")
        never = store.presign_upload(max_size=10_000, expires=60)
        with pytest.raises(BlobNotFound):
            store.confirm(never.key)
        self._later(monkeypatch, 120)  # both forms expire
        assert store.cleanup_incomplete(older_than=0) >= 2
        assert not store.exists(abandoned.key)
        assert [b.key for b in store.list()] == [good.key]

    # -- confirm and cleanup at the same moment: one verdict per upload ----------------
    @staticmethod
    def _later(monkeypatch: pytest.MonkeyPatch, seconds: float = 3600) -> None:
        """cleanup_incomplete's clock *seconds* ahead: every pending upload is stale."""
        import types

        from ...blobs import store as store_module

        now = time.time
        monkeypatch.setattr(store_module, "time", types.SimpleNamespace(time=lambda: now() + seconds,
                                                                       sleep=time.sleep))

    @staticmethod
    def _leftovers(store: BlobStore) -> list[str]:
        """statekit's own objects left for direct uploads (markers, verdicts, staged copies)."""
        return [b.key for prefix in ("pending/", "verdict/", "incoming/")
                for b in store._internal(".statekit/" + prefix)]

    def _swept(self, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """What is left once a cleanup runs after every verdict's lease: nothing."""
        self._later(monkeypatch, _VERDICT_LEASE + 7200)
        store.cleanup_incomplete(older_than=60)
        return self._leftovers(store)

    def test_confirm_while_cleanup_judges_the_upload_stale_keeps_it(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """cleanup_incomplete read the pending policy (stale: the confirm comes after
        the form expired), then the upload is confirmed elsewhere before cleanup
        acts: confirm() told its caller the upload was accepted, so it stays."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        self._later(monkeypatch)
        read_policy, confirmed = store._policy, list[Any]()

        def policy(key: str) -> bytes | None:
            raw = read_policy(key)
            if not confirmed:  # cleanup has read the stale policy: the other process confirms now
                confirmed.append(None)
                confirmed[0] = store.confirm(key)
            return raw

        monkeypatch.setattr(store, "_policy", policy)
        assert store.cleanup_incomplete(older_than=60) == 0
        assert confirmed[0].key == up.key
        assert read_all(store, up.key) == png_bytes()
        assert store.confirm(up.key).key == up.key  # still idempotent
        assert self._leftovers(store) == [f".statekit/verdict/{up.key}"]  # answers late comers
        assert self._swept(store, monkeypatch) == []

    def test_confirm_after_cleanup_decided_raises_and_leaves_nothing(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """cleanup_incomplete decided first (the upload expired) and is removing it when
        a confirm arrives: the confirm raises BlobNotFound, never returns a blob
        that is then deleted, and nothing of the upload is left."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        self._later(monkeypatch)
        drop, raised = store._drop_upload, list[str]()

        def dropping(key: str, *, blob: bool) -> None:
            if blob and not raised:  # cleanup holds the verdict: the other process confirms now
                with pytest.raises(BlobNotFound, match="expired"):
                    store.confirm(key)
                raised.append(key)
            drop(key, blob=blob)

        monkeypatch.setattr(store, "_drop_upload", dropping)
        assert store.cleanup_incomplete(older_than=60) == 1
        assert raised == [up.key]
        assert not store.exists(up.key)
        with pytest.raises(BlobNotFound):
            store.confirm(up.key)
        assert self._leftovers(store) == [f".statekit/verdict/{up.key}"]  # answers late comers
        assert self._swept(store, monkeypatch) == []

    def test_a_confirm_that_stopped_after_deciding_keeps_the_blob(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A confirm recorded its verdict, then its process stopped before it cleaned up:
        a cleanup past the verdict's lease finishes that confirm's work and keeps the
        blob (one within it leaves the verdict to its holder)."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        drop = store._drop_upload

        def crash(key: str, *, blob: bool) -> None:
            raise SystemExit("the process stopped")

        monkeypatch.setattr(store, "_drop_upload", crash)
        with pytest.raises(SystemExit):
            store.confirm(up.key)
        monkeypatch.setattr(store, "_drop_upload", drop)
        self._later(monkeypatch, 60)
        assert store.cleanup_incomplete(older_than=60) == 0  # within the lease: left to its holder
        assert store._policy(up.key) is not None
        self._later(monkeypatch, _VERDICT_LEASE + 60)
        assert store.cleanup_incomplete(older_than=60) == 0
        assert read_all(store, up.key) == png_bytes()
        assert store.confirm(up.key).key == up.key
        assert self._leftovers(store) == []

    def test_a_cleanup_that_decides_after_a_confirm_accepted_keeps_the_upload(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A form confirmed twice (a double click) while a cleanup judges it stale: the
        first confirm accepts it while the second and the cleanup are under way, both
        having read the pending marker. The cleanup decides too late to act, and the
        second confirm, deciding after it, returns the accepted blob: neither removes it."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        self._later(monkeypatch)
        with _Interleaving(monkeypatch, store) as run:
            run.hold("confirm", "_decide")  # copied and checked the upload
            run.hold("cleanup", "_decide")  # read the stale policy
            run.hold("cleanup", "_policy", 2)  # decided
            run.start("confirm", lambda: store.confirm(up.key))
            assert run.reached("confirm", "_decide")
            run.start("cleanup", lambda: store.cleanup_incomplete(older_than=60))
            assert run.reached("cleanup", "_decide")
            first = store.confirm(up.key)  # the first request, all the way through
            run.release("cleanup", "_decide")
            run.reached("cleanup", "_policy", 2)
            run.release("confirm", "_decide")
            second = run.outcome("confirm")
            run.release("cleanup", "_policy", 2)
            assert run.outcome("cleanup") == 0
        assert isinstance(second, Blob), second
        assert first.key == second.key == up.key
        assert read_all(store, up.key) == png_bytes()

    def test_a_cleanup_still_at_work_is_not_taken_over(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``older_than=0`` finishes what a stopped process left at once, but a verdict
        whose holder is still carrying it out is not left: a second cleanup that took
        the first's over removed the marker and the verdict, a confirm then held one of
        its own and returned the blob, which the first cleanup went on to delete."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        self._later(monkeypatch)
        copy = "backend.accept_upload" if store.backend.upload_target(up.key) != up.key else "_copy"
        with _Interleaving(monkeypatch, store) as run:
            run.hold("first", "_drop_upload")  # decided "expired" and read the marker
            run.hold("confirm", copy)  # read the marker
            run.hold("confirm", "_decide")
            run.hold("second", "backend.delete", 2)  # removed the blob (not yet there), not the rest
            run.start("first", lambda: store.cleanup_incomplete(older_than=0))
            assert run.reached("first", "_drop_upload")
            run.start("confirm", lambda: store.confirm(up.key))
            assert run.reached("confirm", copy)
            run.start("second", lambda: store.cleanup_incomplete(older_than=0))
            taken_over = run.reached("second", "backend.delete", 2)
            run.release("confirm", copy)
            assert run.reached("confirm", "_decide")
            run.release("second", "backend.delete", 2)
            second = run.outcome("second")
            run.release("confirm", "_decide")
            confirmed = run.outcome("confirm")
            run.release("first", "_drop_upload")
            assert run.outcome("first") == 1
        if isinstance(confirmed, Blob):  # the guarantee: a confirm that returns has kept the blob
            assert read_all(store, up.key) == png_bytes()
        assert (taken_over, second) == (False, 0)
        assert isinstance(confirmed, BlobNotFound) and not store.exists(up.key)
        assert self._swept(store, monkeypatch) == []

    @pytest.mark.parametrize("allowed", [None, ["application/pdf"]])
    def test_a_second_confirm_at_the_same_moment_keeps_the_accepted_upload(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch, allowed: list[str] | None
    ) -> None:
        """A form confirmed twice at once (a double click, a retried request): the
        second read the pending marker before the first accepted the upload. It returns
        the accepted blob, or raises when its allowed types refuse it, but never
        removes what the first confirm returned (nor reads the staged copy the first
        removed as a missing upload)."""
        up = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, up, png_bytes(), "image/png")
        read_policy, first = store._policy, list[Blob]()

        def policy(key: str) -> bytes | None:
            raw = read_policy(key)
            if not first:  # the second has read the marker: the first request runs through
                first.append(Blob(key, 0))
                first[0] = store.confirm(key)
            return raw

        monkeypatch.setattr(store, "_policy", policy)
        if allowed:
            with pytest.raises(DisallowedContentType):
                store.confirm(up.key, allowed_types=allowed)
        else:
            assert store.confirm(up.key).key == up.key
        assert first[0].key == up.key and first[0].size == len(png_bytes())
        assert read_all(store, up.key) == png_bytes()
        assert self._swept(store, monkeypatch) == []

    def test_a_verdict_stored_by_a_write_that_then_failed_is_its_writers(
        self, store: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A write can be stored and still fail for its caller: S3 answers a request
        retried after a lost answer with 412, the object being its own. The verdict is
        still its writer's: confirm accepts the upload and cleanup removes a stale one,
        neither left pending for a later cleanup to finish."""
        kept = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
        assert direct_upload(store, kept, png_bytes(), "image/png")
        stale = store.presign_upload(max_size=10_000, expires=60)
        assert direct_upload(store, stale, b"never confirmed", "text/plain")
        real_writer = store.backend.writer

        def writer(req: Any) -> Any:
            w = real_writer(req)
            if req.key.startswith(".statekit/verdict/"):
                commit = w.commit

                def stored_then_refused(sha256: str, size: int) -> None:
                    commit(sha256, size)
                    raise BlobExists(f"the retried write of {req.key!r} found it")

                w.commit = stored_then_refused  # type: ignore[method-assign]
            return w

        monkeypatch.setattr(store.backend, "writer", writer)
        assert store.confirm(kept.key).key == kept.key
        assert store._policy(kept.key) is None  # accepted: no longer pending
        self._later(monkeypatch)
        assert store.cleanup_incomplete(older_than=60) == 1
        assert not store.exists(stale.key)
        assert read_all(store, kept.key) == png_bytes()
        assert self._swept(store, monkeypatch) == []

    def test_receive_upload_refuses_a_tampered_form(self, store: BlobStore) -> None:
        up = store.presign_upload(max_size=10_000, expires=60)
        if _served_by_store(store, up.url):
            pytest.skip("the store receives its own direct uploads")
        forged: dict[str, Any] = dict(up.fields, max_size="999999999")
        with pytest.raises(BlobError, match="signature"):
            store.receive_upload(forged, io.BytesIO(b"x"), content_type="text/plain")
        assert not store.exists(up.key)
