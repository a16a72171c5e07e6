"""The shipped blob-store contract (statekit.testing.contracts.blobs), run on s3://
(moto's server over HTTP), file:// and memory://, and on a dict-backed backend
defined here and registered through an entry point, as another distribution would."""

from __future__ import annotations

import datetime as dt
import inspect
import threading
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from statekit import backends
from statekit.blobs import BlobStore, open_blob_store
from statekit.blobs.local import LocalBackend
from statekit.blobs.memory import MemoryBackend
from statekit.blobs.protocol import (
    Blob,
    BlobBackend,
    BlobPage,
    BlobWriter,
    BytesReader,
    WriteRequest,
    stored_blob,
)
from statekit.blobs.s3 import S3Backend
from statekit.errors import BlobExists, BlobNotFound, ConfigError
from statekit.testing.contracts.blobs import HTML, BlobStoreContract, png_bytes

__all__ = ["HTML", "png_bytes"]  # test_migrate_uploads takes them from here

MiB = 1024 * 1024


class TestMemoryBlobs(BlobStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[BlobStore]:
        with BlobStore("memory://contract") as s:
            yield s


class TestFileBlobs(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[BlobStore]:
        with BlobStore(f"file://{tmp_path}/store?create=1") as s:
            yield s


@pytest.mark.s3
class TestS3Blobs(BlobStoreContract):
    @pytest.fixture
    def store(self, s3_url: str) -> Iterator[BlobStore]:
        with BlobStore(s3_url + "&retries=0", part_size=5 * MiB, multipart_threshold=5 * MiB) as s:
            yield s


# -- a backend from outside the package ---------------------------------------------------

class _DictWriter(BlobWriter):
    def __init__(self, backend: DictBackend, req: WriteRequest) -> None:
        self.backend, self.req, self.parts = backend, req, list[bytes]()

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def commit(self, sha256: str, size: int) -> None:
        meta = dict(self.req.metadata, **{"statekit-sha256": sha256})
        with self.backend.lock:
            if self.req.key in self.backend.objects:
                raise BlobExists(self.req.key)
            self.backend.objects[self.req.key] = (b"".join(self.parts), self.req.content_type, meta)

    def abort(self) -> None:
        self.parts.clear()


class DictBackend(BlobBackend):
    """Blobs in a dict: what a third party writes to add ``dict://``."""

    scheme = "dict"

    def __init__(self, url: str) -> None:
        self.name = url.split("://", 1)[1]
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.pending: dict[str, bytes] = {}

    def describe(self) -> str:
        return f"dict://{self.name}"

    def writer(self, req: WriteRequest) -> BlobWriter:
        return _DictWriter(self, req)

    def _get(self, key: str) -> tuple[bytes, str, dict[str, str]]:
        try:
            return self.objects[key]
        except KeyError:
            raise BlobNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        return BytesReader(self._get(key)[0])

    def stat(self, key: str) -> Blob:
        data, ctype, meta = self._get(key)
        return stored_blob(key, len(data), ctype, meta, None)

    def delete(self, key: str) -> bool:
        with self.lock:
            return self.objects.pop(key, None) is not None

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        with self.lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix) and (cursor is None or k > cursor))
            items = [Blob(k, len(self.objects[k][0]), created=dt.datetime.now(dt.timezone.utc))
                     for k in keys[:page_size]]
        return BlobPage(items, keys[page_size - 1] if len(keys) > page_size else None)


@pytest.fixture
def dict_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dict://`` registered as another distribution's entry point would be."""
    real = backends._entry_points

    def entry_points(capability: str) -> list[Any]:
        mine = [EntryPoint("dict", f"{__name__}:DictBackend", "statekit.blobs")]
        return [*real(capability), *(mine if capability == "blobs" else [])]

    monkeypatch.setattr(backends, "_entry_points", entry_points)


class TestThirdPartyBlobs(BlobStoreContract):
    @pytest.fixture
    def store(self, dict_entry_point: None) -> Iterator[BlobStore]:
        with BlobStore("dict://contract") as s:
            assert isinstance(s.backend, DictBackend)
            yield s


def test_unregistered_scheme_names_the_entry_point_group() -> None:
    with pytest.raises(ConfigError, match=r"no blobs backend for dict:// URLs.*'statekit\.blobs'"):
        BlobStore("dict://x")
    with pytest.raises(ConfigError, match=r"redis:// URL cannot be used here; expected one of: s3, file"):
        BlobStore("redis://h")


def test_url_picks_backend(tmp_path: Path) -> None:
    assert isinstance(BlobStore("memory://x").backend, MemoryBackend)
    assert isinstance(open_blob_store(f"file://{tmp_path}").backend, LocalBackend)
    with pytest.raises(ConfigError, match="a URL .* or backend=, not both"):
        BlobStore("memory://x", backend=MemoryBackend("memory://x"))


def test_a_ready_backend_and_backend_options(tmp_path: Path) -> None:
    store = BlobStore(backend=LocalBackend(root=tmp_path), max_size=3)
    assert store.put(b"abc", content_type="text/plain").size == 3
    assert store.root == str(tmp_path.resolve())  # backend attributes read through the store
    with pytest.raises(TypeError):
        BlobStore(f"file://{tmp_path}", part_size=5)  # an option the backend does not take


@pytest.mark.parametrize("cls", [S3Backend, LocalBackend, MemoryBackend, DictBackend])
def test_backend_classes_implement_every_required_method(cls: type[BlobBackend]) -> None:
    assert not inspect.isabstract(cls), sorted(getattr(cls, "__abstractmethods__", ()))
    assert cls.scheme


def test_a_backend_missing_a_required_method_cannot_be_built() -> None:
    class Incomplete(BlobBackend):
        scheme = "half"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]
