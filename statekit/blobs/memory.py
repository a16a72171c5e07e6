"""``memory://[name]`` blob store: one process only, for users' tests and scripts.

Blobs live in :func:`statekit.backends.memory.get_store` stores (emptied by
:func:`statekit.backends.memory.reset`), so the contract -- no partial objects, no
overwrite, typed errors -- is the same as on S3 and disk.
"""

from __future__ import annotations

import bisect
import datetime as dt
import io
from dataclasses import dataclass
from typing import BinaryIO

from ..backends.memory import MemoryStore, get_store
from ..config import parse_url
from ..errors import BlobExists, BlobNotFound
from .protocol import META_SHA256, Blob, BlobBackend, BlobPage, BlobWriter, WriteRequest, stored_blob

__all__ = ["MemoryBackend"]


@dataclass(frozen=True)
class _Object:
    data: bytes
    content_type: str
    metadata: dict[str, str]
    created: dt.datetime


class _MemoryWriter(BlobWriter):
    def __init__(self, store: MemoryStore, req: WriteRequest) -> None:
        self._store = store
        self._req = req
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def commit(self, sha256: str, size: int) -> None:
        meta = dict(self._req.metadata, **{META_SHA256: sha256})
        obj = _Object(b"".join(self._parts), self._req.content_type, meta, self._req.created)
        self._parts = []
        if not self._store.add(self._req.key, obj):
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

    def _get(self, key: str) -> _Object:
        obj = self._objects.get(key)
        if obj is None:
            raise BlobNotFound(f"no blob {key!r} in {self.describe()}")
        assert isinstance(obj, _Object)
        return obj

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self._get(key).data)

    def stat(self, key: str) -> Blob:
        obj = self._get(key)
        return stored_blob(key, len(obj.data), obj.content_type, obj.metadata, obj.created)

    def delete(self, key: str) -> bool:
        return self._objects.delete(key)

    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        keys = sorted(self._objects.keys(prefix))
        start = bisect.bisect_right(keys, cursor) if cursor else 0
        items: list[Blob] = []
        for key in keys[start:start + page_size]:
            obj = self._objects.get(key)
            if obj is not None:
                items.append(Blob(key, len(obj.data), created=obj.created))
        more = start + page_size < len(keys)
        return BlobPage(items, items[-1].key if more and items else None)

