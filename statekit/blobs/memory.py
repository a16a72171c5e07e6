"""``memory://[name]`` blob store: one process only, for users' tests and scripts.

Blobs live in :func:`statekit.backends.memory.get_store` stores (emptied by
:func:`statekit.backends.memory.reset`), so the contract -- no partial objects, no
overwrite, typed errors -- is the same as on S3 and disk.
"""

from __future__ import annotations

import bisect
from typing import BinaryIO

from ..backends.memory import MemoryStore, get_store
from ..config import parse_url
from ..errors import BlobExists, BlobNotFound
from .protocol import Blob, BlobBackend, BlobPage, BlobWriter, BytesReader, WriteRequest, stored_blob

__all__ = ["MemoryBackend"]


class _MemoryWriter(BlobWriter):
    def __init__(self, store: MemoryStore, req: WriteRequest) -> None:
        self._store, self._req, self._parts = store, req, list[bytes]()

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def commit(self, sha256: str, size: int) -> None:
        data, self._parts = b"".join(self._parts), []
        if not self._store.add(self._req.key, (data, self._req, sha256)):
            raise BlobExists(f"a blob already exists under {self._req.key!r}")

    def abort(self) -> None:
        self._parts = []


class MemoryBackend(BlobBackend):
    """Blobs in this process's memory (``memory://name``); see the module docstring.

    Thread-safe: every operation is one step under the store's lock.
    """

    scheme = "memory"

    def __init__(self, url: str | None = "memory://", *, name: str | None = None) -> None:
        self.name = name or (parse_url(url or "memory://", kinds=("memory",)).name)
        self._objects = get_store(f"statekit-blobs:{self.name}")

    def describe(self) -> str:
        return f"memory://{self.name}"

    def writer(self, req: WriteRequest) -> BlobWriter:
        return _MemoryWriter(self._objects, req)

    def _get(self, key: str) -> tuple[bytes, WriteRequest, str]:
        obj = self._objects.get(key)
        if obj is None:
            raise BlobNotFound(f"no blob {key!r} in {self.describe()}")
        return obj  # type: ignore[no-any-return]

    def open(self, key: str) -> BinaryIO:
        return BytesReader(self._get(key)[0])

    def stat(self, key: str) -> Blob:
        data, req, sha256 = self._get(key)
        return stored_blob(key, len(data), req.content_type, req.metadata, req.created, sha256=sha256)

    def delete(self, key: str) -> bool:
        return self._objects.delete(key)

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        keys = sorted(self._objects.keys(prefix))
        start = bisect.bisect_right(keys, cursor) if cursor else 0
        items: list[Blob] = []
        for key in keys[start:start + page_size]:
            obj = self._objects.get(key)
            if obj is not None:
                items.append(Blob(key, len(obj[0]), created=obj[1].created))
        more = start + page_size < len(keys)
        return BlobPage(items, items[-1].key if more and items else None)

