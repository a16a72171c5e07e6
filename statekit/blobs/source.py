"""Reading an upload: any supported input, in chunks, held to ``max_size`` while it
streams (werkzeug ``FileStorage``, Django ``UploadedFile``, a binary file, ``bytes``,
or an iterable of ``bytes``)."""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import BlobError, BlobTooLarge

__all__ = ["INTERRUPT", "READ_CHUNK", "Source", "read_size"]

#: size of each read from the input
READ_CHUNK = 256 * 1024

#: an event that, once set, stops the :class:`Source` made in this context before its
#: next read of the input (:class:`~statekit.blobs.AsyncBlobStore` sets one for the
#: put it runs in a worker thread, and sets it when the calling task is cancelled)
INTERRUPT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("statekit_blobs_interrupt",
                                                                                  default=None)


def read_size(max_size: int | None, total: int) -> int:
    """How much to ask a file-like input for after *total* bytes: a chunk, but no more
    than one byte past *max_size* (enough to know it is exceeded)."""
    if max_size is None:
        return READ_CHUNK
    return max(1, min(READ_CHUNK, max_size + 1 - total))


class Source:
    """Reads any supported input in chunks, enforcing ``max_size`` while reading.

    At most ``max_size + 1`` bytes are read from a file object; an iterator is
    advanced at most one chunk past the limit.
    """

    def __init__(self, stream: Any, max_size: int | None) -> None:
        self.max_size = max_size
        self.total = 0
        self.filename: str | None = None
        self.content_type: str | None = None
        self.declared_size: int | None = None  # refused early when above max_size
        self.size_hint: int | None = None  # sizes the backend's parts: only sizes we can trust
        self._head = b""
        self._interrupt = INTERRUPT.get()
        inner = stream
        # werkzeug FileStorage: .filename, .mimetype, .stream, .content_length
        if hasattr(stream, "filename") and hasattr(stream, "stream") and hasattr(stream, "mimetype"):
            self.filename = stream.filename or None
            self.content_type = stream.mimetype or None
            length = getattr(stream, "content_length", 0)  # the client's word: no size hint
            self.declared_size = int(length) if length else None
            inner = stream.stream
        # Django UploadedFile: .name, .content_type, .size, .chunks()
        elif hasattr(stream, "chunks") and hasattr(stream, "content_type") and hasattr(stream, "size"):
            self.filename = getattr(stream, "name", None) or None
            self.content_type = stream.content_type or None
            self.declared_size = self.size_hint = stream.size
        elif hasattr(stream, "fileno") and hasattr(stream, "read"):
            try:
                st = os.fstat(stream.fileno())
                if st.st_mode & 0o170000 == 0o100000:  # regular file: its remaining size
                    pos = stream.tell() if hasattr(stream, "tell") else 0
                    self.declared_size = self.size_hint = max(0, st.st_size - pos)
            except (OSError, ValueError, AttributeError):
                pass
        if isinstance(inner, (bytes, bytearray, memoryview)):
            data = bytes(inner)
            self._iter: Iterator[bytes] | None = iter((data,)) if data else iter(())
            self._read: Any = None
        elif hasattr(inner, "read"):
            self._read, self._iter = inner.read, None
        elif isinstance(inner, Iterable):
            self._read, self._iter = None, iter(inner)
        else:
            raise TypeError(f"cannot upload a {type(stream).__name__}: pass a file or an iterable of bytes")
        if self.max_size is not None and (self.declared_size or 0) > self.max_size:
            raise BlobTooLarge(f"upload of {self.declared_size} bytes exceeds max_size={self.max_size}")

    def _next(self) -> bytes:
        if self._interrupt is not None and self._interrupt.is_set():
            raise BlobError("upload interrupted: the caller was cancelled")
        if self._read is not None:
            data = self._read(read_size(self.max_size, self.total))
            if data is None:
                raise BlobError("non-blocking input returned no data")
        else:
            assert self._iter is not None
            data = b""
            for data in self._iter:
                if data:
                    break
            else:
                data = b""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"input yielded {type(data).__name__}, not bytes")
        self.total += len(data)
        if self.max_size is not None and self.total > self.max_size:
            raise BlobTooLarge(f"upload exceeds max_size={self.max_size} bytes (aborted after {self.total})")
        return bytes(data)

    def head(self, size: int) -> bytes:
        """At least the first *size* bytes (fewer at the end); iterating yields them again."""
        parts = [self._head] if self._head else []
        while self.total < size and (data := self._next()):
            parts.append(data)
        self._head = b"".join(parts)  # one chunk (the usual case) is not copied
        return self._head

    def __iter__(self) -> Iterator[bytes]:
        head, self._head = self._head, b""
        if head:
            yield head
        while data := self._next():
            yield data
