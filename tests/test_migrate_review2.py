"""Second review of ``statekit migrate-uploads``: Ctrl-C arriving at each step of the
main thread's bookkeeping, and the manifest's size and mtime taken from the file that
was read, not from the listing. Each case failed before its fix."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from statekit import migrate as migrate_module
from statekit.blobs import BlobStore
from statekit.migrate import load_manifest, migrate


def _tree(root: Path, n: int) -> None:
    root.mkdir()
    for i in range(n):
        (root / f"f{i:02d}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))


def _unrecorded(store: BlobStore, manifest: Path) -> set[str]:
    """Keys stored but named by no manifest entry: objects a rerun never references."""
    recorded = {e["key"] for e in load_manifest(str(manifest)).values()}
    return {b.key for b in store.list()} - recorded


class _InterruptedAfterSubmit(ThreadPoolExecutor):
    """Ctrl-C delivered to the main thread just as its third ``submit`` returns: the
    upload is under way, the main thread has not noted it yet."""

    submits = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut = super().submit(fn, *args, **kwargs)
        self.submits += 1
        if self.submits == 3:
            raise KeyboardInterrupt
        return fut


def test_ctrl_c_right_after_a_submit_leaves_no_unrecorded_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path / "src", 6)
    monkeypatch.setattr(migrate_module, "ThreadPoolExecutor", _InterruptedAfterSubmit)
    store, manifest = BlobStore("memory://"), tmp_path / "m.jsonl"
    with pytest.raises(KeyboardInterrupt):
        migrate(str(tmp_path / "src"), store, manifest=str(manifest), workers=1)
    assert list(store.list()) and _unrecorded(store, manifest) == set()
    monkeypatch.undo()
    again = migrate(str(tmp_path / "src"), store, manifest=str(manifest), workers=1)
    assert again.ok and again.uploaded + again.skipped == 6
    assert len(list(store.list())) == 6 and _unrecorded(store, manifest) == set()


class _SecondCtrlC(ThreadPoolExecutor):
    """The second Ctrl-C of an impatient user, delivered as the run waits for the
    uploads under way after the first: the first ``shutdown(wait=True)`` stops waiting."""

    interrupted = False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if wait and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def test_ctrl_c_twice_leaves_no_unrecorded_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as the main thread waits for the first uploads to finish, and again as
    it waits for those under way to be recorded: every object stored is in the
    manifest, written by the thread that stored it."""
    _tree(tmp_path / "src", 8)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(migrate_module, "wait", interrupted)
    monkeypatch.setattr(migrate_module, "ThreadPoolExecutor", _SecondCtrlC)
    store, manifest = BlobStore("memory://"), tmp_path / "m.jsonl"
    with pytest.raises(KeyboardInterrupt):
        migrate(str(tmp_path / "src"), store, manifest=str(manifest), workers=2)
    assert list(store.list()) and _unrecorded(store, manifest) == set()


def test_manifest_keeps_the_size_and_mtime_of_the_file_that_was_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is rewritten in place (same size, a new mtime) between the listing and
    its upload: the manifest records what was read, so a rerun skips it instead of
    storing it a second time."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first version\n")
    real = migrate_module._open_listed

    def rewritten_first(path: str, st: os.stat_result) -> Any:
        with open(path, "r+b") as f:
            f.write(b"other version\n")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        return real(path, st)

    monkeypatch.setattr(migrate_module, "_open_listed", rewritten_first)
    store, manifest = BlobStore("memory://"), str(tmp_path / "m.jsonl")
    first = migrate(str(src), store, manifest=manifest)
    assert first.ok and first.uploaded == 1
    monkeypatch.undo()
    again = migrate(str(src), store, manifest=manifest)
    assert again.skipped == 1 and again.uploaded == 0
    [blob] = store.list()
    with store.open(blob.key) as f:
        assert f.read() == b"other version\n"


def test_a_blob_stored_without_its_sha256_is_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob whose stat() has no SHA-256 (S3's tag lost) is verified by reading it
    back, and the run says so (it passed in silence)."""
    _tree(tmp_path / "src", 2)
    store = BlobStore("memory://")
    real = store.backend.stat
    monkeypatch.setattr(store.backend, "stat", lambda key: dataclasses.replace(real(key), sha256=None))
    report = migrate(str(tmp_path / "src"), store, manifest=str(tmp_path / "m.jsonl"))
    assert report.ok and report.verified == 2
    assert sorted(report.warnings) == ["f00.txt", "f01.txt"] and "SHA-256" in report.warnings["f00.txt"]


def test_ctrl_c_during_verification_still_writes_the_mapping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file is copied; Ctrl-C comes while the run checks the stored blobs: the
    mapping on disk names every copied file (it was the last periodic rewrite, or
    none at all for a run under 2 seconds)."""
    _tree(tmp_path / "src", 3)
    store, mapping = BlobStore("memory://"), tmp_path / "map.json"
    real = migrate_module._verify

    def interrupted(store: BlobStore, key: str, *args: Any) -> Any:
        if key == max(b.key for b in store.list()):
            raise KeyboardInterrupt
        return real(store, key, *args)

    monkeypatch.setattr(migrate_module, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        migrate(str(tmp_path / "src"), store, manifest=str(tmp_path / "m.jsonl"), mapping=str(mapping))
    assert set(json.loads(mapping.read_text()).values()) == {b.key for b in store.list()}


def test_a_file_that_fails_verification_is_left_out_of_the_mapping(tmp_path: Path) -> None:
    """The mapping is what the application rewrites its references with: a file whose
    blob is gone (or differs) is a failure and gets no key there until a run copies it
    again (it kept the missing blob's key)."""
    _tree(tmp_path / "src", 2)
    store, manifest, mapping = BlobStore("memory://"), str(tmp_path / "m.jsonl"), tmp_path / "map.json"
    first = migrate(str(tmp_path / "src"), store, manifest=manifest)
    store.delete(first.mapping["f00.txt"])
    second = migrate(str(tmp_path / "src"), store, manifest=manifest, mapping=str(mapping))
    assert list(second.failed) == ["f00.txt"] and sorted(second.mapping) == ["f01.txt"]
    assert json.loads(mapping.read_text()) == {"f01.txt": first.mapping["f01.txt"]}
