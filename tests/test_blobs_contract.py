"""The blob-store contract, run against s3 (moto server over HTTP), file and memory."""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from statekit import blobs as blobs_mod
from statekit.blobs import Blob, BlobStore, open_blob_store
from statekit.errors import (
    BlobError,
    BlobExists,
    BlobNotFound,
    BlobTooLarge,
    ContentTypeMismatch,
    DisallowedContentType,
    InvalidKey,
)

MiB = 1024 * 1024
KEY_RE = re.compile(r"^(?:[a-z0-9-]+/)*\d{4}/\d{2}/\d{2}/[0-9a-f]{32}(\.[a-z0-9]{1,10})?$")


def png_bytes(extra: int = 0) -> bytes:
    """A real 1x1 PNG (plus optional trailing padding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    raw = zlib.compress(b"\x00\xff\x00\x00")
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body + b"\0" * extra


HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "memory":
        s = BlobStore("memory://contract")
    elif request.param == "file":
        s = BlobStore(f"file://{tmp_path}/store?create=1")
    else:
        url = request.getfixturevalue("s3_url")
        s = BlobStore(url + "&retries=0", part_size=5 * MiB, multipart_threshold=5 * MiB)
    yield s
    s.close()


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


def gen(total: int, chunk: int = 64 * 1024, seed: int = 1) -> Iterator[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * (chunk // 32)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block[:n]
        sent += n


def expected(total: int, chunk: int = 64 * 1024, seed: int = 1) -> bytes:
    return b"".join(gen(total, chunk, seed))


def test_backend_classes_implement_the_whole_contract() -> None:
    from statekit.blobs.local import LocalBlobStore
    from statekit.blobs.memory import MemoryBlobStore
    from statekit.blobs.s3 import S3BlobStore

    required = [n for n, v in vars(BlobStore).items()
                if callable(v) and n.startswith("_") and not n.startswith("__")
                and n not in ("_sign", "_url", "_presign_post",  # shared defaults
                              "_upload_target", "_accept_upload", "_drop_upload_target")]  # S3 stages
    for cls in (LocalBlobStore, MemoryBlobStore, S3BlobStore):
        missing = [n for n in required if getattr(cls, n) is getattr(BlobStore, n)]
        assert missing == [], (cls.__name__, missing)


def test_url_picks_backend(tmp_path: Path) -> None:
    from statekit.blobs.local import LocalBlobStore
    from statekit.blobs.memory import MemoryBlobStore

    assert isinstance(BlobStore("memory://x"), MemoryBlobStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}"), LocalBlobStore)


def test_put_bytes_round_trip(store: BlobStore) -> None:
    data = png_bytes()
    blob = store.put(data, filename="My Photo.png", metadata={"owner": "ann"})
    assert isinstance(blob, Blob)
    assert KEY_RE.match(blob.key) and blob.key.endswith(".png")
    assert "photo" not in blob.key.lower()
    assert blob.size == len(data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.content_type == "image/png" and blob.filename == "My Photo.png"
    with store.open(blob.key) as f:
        assert f.read() == data
    st = store.stat(blob.key)
    assert (st.key, st.size, st.content_type, st.sha256, st.filename) == (
        blob.key, len(data), "image/png", blob.sha256, "My Photo.png")
    assert st.metadata == {"owner": "ann"}
    assert store.exists(blob.key)


def test_put_accepts_file_iterator_and_framework_uploads(store: BlobStore, tmp_path: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from werkzeug.datastructures import FileStorage

    data = b"col1,col2\n1,2\n" * 100
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    with open(path, "rb") as f:
        b1 = store.put(f, filename="in.csv")
    b2 = store.put(iter([data[:10], b"", data[10:]]), content_type="text/csv")
    b3 = store.put(FileStorage(io.BytesIO(data), filename="report.csv", content_type="text/csv"))
    b4 = store.put(SimpleUploadedFile("dj.csv", data, content_type="text/csv"))
    for b in (b1, b2, b3, b4):
        assert b.content_type == "text/csv" and b.key.endswith(".csv")
        assert store.read_range(b.key, 0, len(data) + 10) == data
    assert (b3.filename, b4.filename) == ("report.csv", "dj.csv")


def test_empty_and_unknown_content(store: BlobStore) -> None:
    empty = store.put(b"")
    assert empty.size == 0 and read_all(store, empty.key) == b""
    binary = os.urandom(3000)
    b = store.put(binary, content_type="application/x-custom-thing")
    assert b.content_type == "application/x-custom-thing"
    assert read_all(store, b.key) == binary


def test_streamed_multipart_upload_and_ranged_reads(store: BlobStore) -> None:
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


@pytest.mark.parametrize("size", [100, 6 * MiB])
def test_never_overwrites(store: BlobStore, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(blobs_mod.secrets, "token_hex", lambda n: "ab" * n)
    first = store.put(b"first" * 20, content_type="text/plain")
    with pytest.raises(BlobExists):
        store.put((b"y" * 1024 for _ in range(size // 1024)), content_type="text/plain")  # same key
    assert read_all(store, first.key) == b"first" * 20
    assert [b.key for b in store.list()] == [first.key]


def test_max_size_refused_and_nothing_stored(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge):
        store.put(gen(10_000), max_size=9_999)
    with pytest.raises(BlobTooLarge):  # known size: refused before reading
        store.put(io.BytesIO(b"x" * 100), max_size=10)
    assert store.put(gen(10_000), max_size=10_000).size == 10_000
    assert len(list(store.list())) == 1


def test_content_checks(store: BlobStore) -> None:
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


def test_input_exception_aborts(store: BlobStore) -> None:
    class Boom(RuntimeError):
        pass

    def failing() -> Iterator[bytes]:
        yield from gen(7 * MiB)
        raise Boom("client went away")

    with pytest.raises(Boom):
        store.put(failing(), content_type="application/octet-stream")
    assert list(store.list()) == []
    store.cleanup_incomplete(older_than=0)


def test_missing_and_invalid_keys(store: BlobStore) -> None:
    missing = "2020/01/01/" + "0" * 32 + ".png"
    with pytest.raises(BlobNotFound):
        store.open(missing)
    with pytest.raises(BlobNotFound):
        store.stat(missing)
    assert not store.exists(missing)
    assert store.delete(missing) is False
    for bad in ["../../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a\x00b", "", "x" * 2000, ".statekit/x",
                "a\\..\\b"]:
        with pytest.raises(InvalidKey):
            store.open(bad)
        with pytest.raises(InvalidKey):
            store.delete(bad)


def test_delete_is_idempotent(store: BlobStore) -> None:
    blob = store.put(b"bye", content_type="text/plain")
    assert store.delete(blob.key) is True
    assert store.delete(blob.key) is False
    assert not store.exists(blob.key)


def test_list_is_paginated_and_prefixed(store: BlobStore) -> None:
    keys = sorted(store.put(f"n{i}".encode(), content_type="text/plain", prefix="docs").key for i in range(7))
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


def test_url_serves_download_with_rfc5987_name(store: BlobStore) -> None:
    blob = store.put(b"report body", filename="r\u00e9sum\u00e9 \u202eexe.txt")
    assert blob.filename == "r\u00e9sum\u00e9 exe.txt"
    url = store.url(blob.key, expires=60)
    if store.scheme == "s3":
        import requests

        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and resp.content == b"report body"
        disp = resp.headers["Content-Disposition"]
    else:
        key, disp = store.verify_url(url)  # type: ignore[assignment]
        assert key == blob.key
        with pytest.raises(BlobError):
            store.verify_url(url.replace("expires=", "expires=9"))
    assert disp is not None
    assert 'filename="resume exe.txt"' in disp and "filename*=UTF-8''r%C3%A9sum%C3%A9%20exe.txt" in disp
    named = store.url(blob.key, expires=60, download_name="other.txt")
    assert "other.txt" in named


def _direct_upload(store: BlobStore, up: blobs_mod.PresignedUpload, data: bytes, ctype: str) -> None:
    if store.scheme == "s3":
        import requests

        fields = dict(up.fields, **{"Content-Type": ctype})
        resp = requests.post(up.url, data=fields, files={"file": ("x", data, ctype)}, timeout=10)
        assert resp.status_code in (200, 201, 204), resp.text
    else:
        store.receive_upload(up.fields, io.BytesIO(data), content_type=ctype)


def test_presigned_upload_confirm_and_cleanup(store: BlobStore) -> None:
    good = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    assert good.key not in (b.key for b in store.list())
    if store.scheme == "s3":
        assert ["content-length-range", 0, 10_000] in _policy_conditions(good.fields)
    _direct_upload(store, good, png_bytes(), "image/png")
    blob = store.confirm(good.key)
    assert blob.size == len(png_bytes()) and store.confirm(good.key).key == good.key

    big = store.presign_upload(max_size=100, content_type_prefix="image/", expires=60)
    if store.scheme == "s3":
        _direct_upload(store, big, png_bytes(extra=500), "image/png")  # moto does not enforce the policy
        with pytest.raises(BlobTooLarge):
            store.confirm(big.key)
    else:  # receive_upload enforces it while streaming, as S3 does
        with pytest.raises(BlobTooLarge):
            _direct_upload(store, big, png_bytes(extra=500), "image/png")
    assert not store.exists(big.key)

    liar = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    _direct_upload(store, liar, HTML, "image/png")
    with pytest.raises(ContentTypeMismatch):
        store.confirm(liar.key)
    assert not store.exists(liar.key)

    wrong = store.presign_upload(max_size=10_000, content_type_prefix="image/", expires=60)
    _direct_upload(store, wrong, b"%PDF-1.4\n%...", "application/pdf")
    with pytest.raises(DisallowedContentType):
        store.confirm(wrong.key)

    abandoned = store.presign_upload(max_size=10_000, expires=1)
    _direct_upload(store, abandoned, b"never confirmed", "text/plain")
    never = store.presign_upload(max_size=10_000, expires=1)
    with pytest.raises(BlobNotFound):
        store.confirm(never.key)
    time.sleep(1.1)
    assert store.cleanup_incomplete(older_than=0) >= 2
    assert not store.exists(abandoned.key)
    assert [b.key for b in store.list()] == [good.key]


def _policy_conditions(fields: dict[str, str]) -> list[object]:
    import base64
    import json

    policy = json.loads(base64.b64decode(fields["policy"]))
    return list(policy["conditions"])
