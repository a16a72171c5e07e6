"""Adversarial review of ``statekit migrate-uploads``: the source changing under the run,
special files, and a blob whose SHA-256 tag was lost (S3 fault after the upload)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from statekit.blobs import Blob, BlobStore
from statekit.migrate import load_manifest, main, migrate

MiB = 1024 * 1024


class _SwapOnFirstPut(BlobStore):
    """A memory store that replaces ``b.txt`` while ``a.txt`` is being stored (one
    worker: ``b.txt`` is listed, not yet opened)."""

    def __init__(self, swap: Any) -> None:
        super().__init__("memory://")
        self._swap = swap

    def put(self, stream: Any, **kw: Any) -> Blob:
        swap, self._swap = self._swap, None
        if swap is not None:
            swap()
        return super().put(stream, **kw)


def _contents(store: BlobStore) -> set[bytes]:
    out = set()
    for blob in store.list():
        with store.open(blob.key) as f:
            out.add(f.read())
    return out


def test_file_replaced_by_a_symlink_out_of_the_tree_is_not_copied(tmp_path: Path) -> None:
    src, secret = tmp_path / "uploads", tmp_path / "secret.txt"
    src.mkdir()
    (src / "a.txt").write_bytes(b"aaaa")
    (src / "b.txt").write_bytes(b"bbbb")
    secret.write_bytes(b"KEY!")  # same size as b.txt

    def swap() -> None:
        os.unlink(src / "b.txt")
        os.symlink(secret, src / "b.txt")

    store = _SwapOnFirstPut(swap)
    report = migrate(str(src), store, manifest=str(tmp_path / "m.jsonl"), workers=1)
    assert b"KEY!" not in _contents(store)
    assert "b.txt" in report.failed and "b.txt" not in report.mapping
    assert set(load_manifest(str(tmp_path / "m.jsonl"))) == {"a.txt"}


def test_file_replaced_by_a_fifo_fails_instead_of_waiting(tmp_path: Path) -> None:
    src = tmp_path / "uploads"
    src.mkdir()
    (src / "a.txt").write_bytes(b"aaaa")
    (src / "b.txt").write_bytes(b"bbbb")

    def swap() -> None:
        os.unlink(src / "b.txt")
        os.mkfifo(src / "b.txt")

    report = migrate(str(src), _SwapOnFirstPut(swap), manifest=str(tmp_path / "m.jsonl"), workers=1)
    assert "replaced" in report.failed["b.txt"]
    assert sorted(report.mapping) == ["a.txt"]


def test_special_files_are_warned_about(tmp_path: Path) -> None:
    src = tmp_path / "uploads"
    src.mkdir()
    (src / "a.txt").write_bytes(b"aaaa")
    os.mkfifo(src / "pipe")
    report = migrate(str(src), BlobStore("memory://"), manifest=str(tmp_path / "m.jsonl"))
    assert "FIFO" in report.warnings["pipe"]
    assert report.ok and sorted(report.mapping) == ["a.txt"]


@pytest.mark.s3
def test_lost_sha256_tag_is_verified_from_the_content_not_copied_twice(tmp_path: Path, s3_url: str) -> None:
    """The multipart upload completed but its SHA-256 tag did not (put() goes on without
    it): the run must not mark the file unverified, or the next run stores a second copy."""
    from botocore.exceptions import ReadTimeoutError

    src = tmp_path / "uploads"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 * MiB))
    store = BlobStore(s3_url + "&retries=0", part_size=5 * MiB, multipart_threshold=5 * MiB)

    def lost(**_: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1")

    store.backend.client.put_object_tagging = lost
    manifest = str(tmp_path / "m.jsonl")
    first = migrate(str(src), store, manifest=manifest)
    assert first.ok and first.verified == 1, first.failed
    again = migrate(str(src), store, manifest=manifest)
    assert again.skipped == 1 and again.uploaded == 0
    assert len(list(store.list())) == 1


def test_names_that_are_not_utf8_are_copied_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "uploads"
    src.mkdir()
    (src / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"hello")
    os.symlink(tmp_path / "elsewhere", src / os.fsdecode(b"l\xe9nk"))
    monkeypatch.chdir(tmp_path)
    assert main([str(src), "memory://", "--output-dir", "out", "--progress", "off"]) == 0
    assert "l\\xe9nk" in capsys.readouterr().out
    listing = (tmp_path / "out" / "warnings.txt").read_text(encoding="utf-8")
    assert listing.startswith("warning l\\xe9nk: symbolic link")
    assert list(load_manifest(str(tmp_path / "out" / "manifest.jsonl"))) == [os.fsdecode(b"caf\xe9.txt")]
