"""The contract every blob backend implements, and the records it returns.

:class:`~statekit.blobs.BlobStore` does everything users see -- streaming with bounded
memory, size limits, type sniffing, generated keys, signed URLs, direct uploads --
and hands a backend only keys it has validated (:func:`~statekit.blobs.validate_key`)
and bytes it has checked. A backend only stores and finds objects. It must:

* **never show a partial object**: bytes go to a :class:`BlobWriter`, and nothing is
  visible under the key until :meth:`BlobWriter.commit` returns; :meth:`BlobWriter.abort`
  (also called after a failed commit) undoes everything it can, and what it cannot
  (the endpoint is gone) is removed later by :meth:`BlobBackend.cleanup_partial`;
* **never overwrite**: ``commit`` raises :class:`~statekit.errors.BlobExists` when the
  key is taken (a conditional create, ``link``/``O_EXCL``, a check under a lock);
* **fail typed**: a missing object is :class:`~statekit.errors.BlobNotFound`, an
  unreachable or slow backend :class:`~statekit.errors.BackendUnavailable` (every
  network call has a timeout), anything else a :class:`~statekit.errors.BlobError`;
* **be shareable between threads**: one backend object serves every thread of a
  process, and several processes (machines) may use the same store at once. Two
  writers never share a key (keys are random), so no lock is needed across writes.

A backend is a class called as ``cls(url, **options)`` with the store's URL and the
keyword options the user gave :class:`~statekit.blobs.BlobStore` that it does not
use itself. It is found by URL scheme: built in (``s3``, ``file``, ``memory``), or
from another distribution through an entry point in the group ``statekit.blobs``::

    [project.entry-points."statekit.blobs"]
    gcs = "mypackage.gcs:GCSBackend"

Subclass :class:`BlobBackend` to inherit the defaults of its optional methods, and
run the shipped contract (:mod:`statekit.testing.contracts.blobs`) against it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import re
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from ..errors import BlobError

__all__ = ["CONCURRENT_PUTS", "FORM_OVERHEAD", "MAX_METADATA_BYTES", "META_CREATED", "META_FILENAME",
           "META_SHA256", "Blob",
           "BlobBackend", "BlobPage", "BlobWriter", "BytesReader", "PresignedUpload", "WriteRequest",
           "encode_meta", "seek_position", "stored_blob"]

#: metadata keys statekit sets itself (prefixed to keep them apart from the caller's)
META_FILENAME = "statekit-filename"
META_SHA256 = "statekit-sha256"
META_CREATED = "statekit-created"
#: the puts a store is sized to run at once (an S3 store's connection pool): an
#: :class:`~statekit.blobs.AsyncBlobStore`'s upload threads by default, a threaded
#: server's threads for a sync store
CONCURRENT_PUTS = 32
#: S3's limit of an object's user metadata: the UTF-8 bytes of every key and value
#: (``x-amz-meta-`` left out), held by every backend so a put does not depend on the store
MAX_METADATA_BYTES = 2048
#: what a form upload may carry beyond a store's ``max_size`` (the multipart framing, the
#: other fields) before the web adapters answer 413 unread: the default of their
#: ``STATEKIT_BLOBS_FORM_OVERHEAD`` (Flask, Django, Starlette alike)
FORM_OVERHEAD = 64 * 1024
#: what the commit adds (:data:`META_SHA256` and 64 hex digits), counted up front
_SHA256_BYTES = len(META_SHA256) + 64


@dataclass(frozen=True)
class Blob:
    """What a store knows about one stored object.

    ``key`` is relative to the store (its URL prefix is not part of it). Listings
    fill only ``key``, ``size`` and ``created``; :meth:`BlobStore.stat` fills what
    the backend keeps (``sha256`` may be ``None`` for objects statekit did not write,
    and on S3 for a multipart object whose tag these credentials may not read).
    """

    key: str
    size: int
    content_type: str | None = None
    sha256: str | None = None
    filename: str | None = None
    created: dt.datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BlobPage:
    """One page of :meth:`BlobStore.list_page`; pass ``cursor`` back for the next."""

    items: list[Blob]
    cursor: str | None


@dataclass(frozen=True)
class PresignedUpload:
    """A direct browser upload: POST ``fields`` plus a ``file`` field to ``url``,
    then call :meth:`BlobStore.confirm` with ``key``."""

    url: str
    fields: dict[str, str]
    key: str
    expires_at: dt.datetime
    max_size: int
    content_type_prefix: str


@dataclass
class WriteRequest:
    """Everything a backend needs to start a write."""

    key: str
    content_type: str
    disposition: str  # the Content-Disposition to serve the object with
    metadata: dict[str, str]  # already encoded (encode_meta), statekit's keys included
    created: dt.datetime
    size_hint: int | None = None  # a size the input is known to have, to size parts


def encode_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """Metadata values percent-encoded to printable ASCII (what S3 headers allow).

    :raises BlobError: a key is not 1-64 lowercase letters, digits and ``-``, or the
        whole is more than :data:`MAX_METADATA_BYTES` as sent (its keys and encoded
        values, with the SHA-256 entry a commit adds): refused before a write begins."""
    out = {}
    for k, v in meta.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9\-]{0,63}", k):
            raise BlobError(f"metadata key {k!r} must be 1-64 chars of lowercase letters, digits and -")
        out[k] = quote(str(v), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
    size = sum(len(k) + len(v) for k, v in out.items() if k != META_SHA256) + _SHA256_BYTES
    if size > MAX_METADATA_BYTES:
        raise BlobError(f"metadata of {size} bytes (keys and percent-encoded values, statekit's own "
                        f"{', '.join(sorted(k for k in out if k.startswith('statekit-')) + [META_SHA256])} "
                        f"included) is more than the {MAX_METADATA_BYTES} bytes S3 stores with an object")
    return out


def stored_blob(key: str, size: int, content_type: str | None, metadata: Mapping[str, str],
                created: dt.datetime | None, *, sha256: str | None = None) -> Blob:
    """The :class:`Blob` of an object stored with :func:`encode_meta` *metadata*:
    statekit's own keys become fields (the stored creation time wins over *created*),
    the caller's stay in ``metadata``."""
    meta = {k: unquote(v) for k, v in metadata.items()}
    with contextlib.suppress(ValueError):
        created = dt.datetime.fromisoformat(meta[META_CREATED]) if META_CREATED in meta else created
    return Blob(key, size, content_type, meta.get(META_SHA256, sha256), meta.get(META_FILENAME), created,
                {k: v for k, v in meta.items() if not k.startswith("statekit-")})


def seek_position(offset: int, whence: int, position: int, size: int) -> int:
    """Where a seek of *offset* from *whence* moves a stream at *position* of *size*
    bytes, as a file's seek does: past the end is taken, before byte 0 is refused.

    :raises OSError: (``EINVAL``, what ``lseek`` answers) the position would be
        before byte 0; the stream does not move.
    :raises ValueError: *whence* is not ``SEEK_SET``, ``SEEK_CUR`` or ``SEEK_END``."""
    if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
        raise ValueError(f"invalid whence ({whence!r}, should be 0, 1 or 2)")
    base = (0, position, size)[whence]
    target = base + offset
    if target < 0:
        raise OSError(errno.EINVAL, f"seek to {target} (offset {offset} from {base}): before byte 0")
    return target


class BytesReader(io.BytesIO):
    """An object's bytes as an opened blob (:meth:`BlobBackend.open` of a backend that
    holds them): an :class:`io.BytesIO` whose seeks follow :func:`seek_position`, as a
    file's and every built-in backend's do (a plain ``BytesIO`` refuses a negative
    absolute position with a ``ValueError`` and moves a relative one to byte 0)."""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        size = self.getbuffer().nbytes
        return super().seek(seek_position(offset, whence, self.tell(), size))


class BlobWriter(Protocol):
    """One write in progress, made by :meth:`BlobBackend.writer`.

    ``write`` is called with the input in order, then exactly one of ``commit`` or
    ``abort``; one thread drives a writer. Nothing may be visible under the key
    before ``commit`` returns.
    """

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Take the next bytes (memory stays bounded: send or spool what does not fit)."""

    @abstractmethod
    def commit(self, sha256: str, size: int) -> None:
        """Make the object visible with its SHA-256, or raise
        :class:`~statekit.errors.BlobExists` if the key is taken (nothing changes)."""

    @abstractmethod
    def abort(self) -> None:
        """Undo everything; may follow a failed ``commit``. Must not raise for a
        write that was never started."""


@runtime_checkable
class BlobBackend(Protocol):
    """Where a :class:`~statekit.blobs.BlobStore` keeps its objects; see the module
    docstring for the promises every method keeps. Keys given to it are validated
    and relative to the store. The methods without a body are required; the others
    have working defaults for backends that subclass this class."""

    #: the URL scheme (``"s3"``), for messages and for the adapters
    scheme: str

    @abstractmethod
    def writer(self, req: WriteRequest) -> BlobWriter:
        """Start writing a new object under ``req.key``."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A read-only, seekable binary stream of the object; fetched in ranges or
        streamed, never loaded whole when large. A seek before byte 0 raises the
        ``OSError`` a file's raises (:func:`seek_position`; :class:`BytesReader` for
        bytes in memory). :raises BlobNotFound:"""

    @abstractmethod
    def stat(self, key: str) -> Blob:
        """The object's record (:func:`stored_blob` builds it). :raises BlobNotFound:"""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete the object and its record; ``True`` if it existed. Idempotent. A write
        of the same key committing meanwhile is deleted whole or kept whole: its
        record is never removed from under it. Of two deletes of one object at once,
        one says ``True``: each object removed is reported once (S3: by the
        ``DELETE``'s ``If-Match``; a store that ignores it, MinIO: minio/minio#21677,
        or ``conditional_writes=false`` may say ``True`` to both)."""

    @abstractmethod
    def list_page(self, prefix: str, cursor: str | None, page_size: int) -> BlobPage:
        """At most *page_size* objects whose key starts with *prefix*, in key order,
        after *cursor* (opaque: what the previous page returned; ``None`` on the last
        page). Items need only ``key``, ``size`` and ``created``. statekit keeps its own
        objects (pending direct uploads) under ``.statekit/`` through the same methods;
        a backend may leave them out of a listing whose *prefix* is not below it."""

    def head(self, key: str) -> Blob:
        """The object's record, its ``sha256`` ``None`` where reading it costs another
        request (S3: a multipart object's tag): for a size, a type or a date. The
        default is :meth:`stat`. :raises BlobNotFound:"""
        return self.stat(key)

    def describe(self) -> str:
        """A short, password-free name of the store (for counters, errors and the
        URLs :meth:`BlobStore.url` signs)."""
        return f"{self.scheme}://"

    def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """The names one level below *prefix* (``""``, or a validated prefix ending in
        ``/``): the next segments of deeper keys (the "directories") and the objects
        there, each sorted. The default reads every key below *prefix*
        (:meth:`list_page`); a store that lists one level (S3's ``Delimiter``, a
        directory) reads only that level."""
        dirs: set[str] = set()
        files: list[str] = []
        cursor: str | None = None
        while True:
            page = self.list_page(prefix, cursor, 1000)
            for blob in page.items:
                head, sep, _tail = blob.key[len(prefix):].partition("/")
                if sep:
                    dirs.add(head)
                else:
                    files.append(head)
            if page.cursor is None:
                return sorted(dirs), sorted(files)
            cursor = page.cursor

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to *length* bytes from offset *start* (fewer at the end of the object;
        both at least 0, checked by :class:`~statekit.blobs.BlobStore`). Read a
        megabyte at a time: a buffered reader asked for *length* bytes at once
        allocates them first, however few the object holds."""
        out = bytearray()
        with self.open(key) as f:
            f.seek(start)
            while len(out) < length:
                data = f.read(min(length - len(out), 1 << 20))
                if not data:
                    break
                out += data
        return bytes(out)

    def presign_get(self, key: str, expires: int, disposition: str | None) -> str | None:
        """A URL the store itself serves (S3's presigned GET), or ``None``: then
        :class:`BlobStore` signs its own, served by the adapters' view."""
        return None

    def presign_post(self, key: str, max_size: int, type_prefix: str,
                     expires: int) -> tuple[str, dict[str, str]] | None:
        """A form the store itself accepts for a direct upload to
        :meth:`upload_target`, limited to *max_size* bytes and a ``Content-Type``
        starting with *type_prefix*; or ``None``: then :class:`BlobStore` signs its
        own, received by :meth:`BlobStore.receive_upload`."""
        return None

    def upload_target(self, key: str) -> str:
        """Where a form made by :meth:`presign_post` uploads for *key*: *key* itself
        by default. A store whose forms stay usable until they expire (S3) returns a
        staging key and copies it in :meth:`accept_upload`, which no replayed form
        can reach. (Forms the façade signs itself are received by
        :meth:`BlobStore.receive_upload` under ``.statekit/incoming/`` and copied by
        the façade when confirmed; a backend does nothing for them.)"""
        return key

    def accept_upload(self, target: str, key: str) -> None:
        """Copy the direct upload at *target* to *key* (only called when
        :meth:`upload_target` differs from *key*), never over an object already
        there, as every write (the façade also checks first, for stores that ignore
        a copy's condition). :raises BlobNotFound: :raises BlobExists:"""
        raise BlobError(f"{type(self).__name__} stages direct uploads but has no accept_upload()")

    def cleanup_partial(self, older_than: float) -> int:
        """Remove what writes interrupted more than *older_than* seconds ago left
        (temporary files, multipart uploads); how many. Safe to run concurrently."""
        return 0

    def close(self) -> None:
        """Release connections and files."""
        return None
