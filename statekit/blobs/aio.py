"""The :class:`AsyncBlobStore`: the blob store for asyncio apps (Starlette, FastAPI,
Django async views), on the same objects, keys and metadata as :class:`BlobStore`.

::

    blobs = AsyncBlobStore("s3://bucket/uploads?endpoint_url=http://127.0.0.1:9000")

    async def upload(request: Request) -> JSONResponse:
        blob = await blobs.put(request.stream(), filename="photo.png", max_size=10 * 2**20,
                               allowed_types=["image/*"])
        return JSONResponse({"key": blob.key, "url": await blobs.url(blob.key)})

**One put pipeline.** An async store runs the sync :class:`BlobStore`'s own pipeline
(sniffing, limits, generated keys, SHA-256, S3's conditional multipart writes with
boto3) in a worker thread, fed from the event loop through a small bounded queue
(:data:`QUEUE_BYTES`). The event loop only reads the body: memory stays
bounded (the queue plus the backend's part buffers, whatever the body's size), and a
slow backend holds the body back (backpressure) instead of letting it pile up in
memory. An async S3 client (aiobotocore) would need a second copy of the multipart,
checksum and abort logic; ``bench/blobs_async.py`` measured it against this design on
moto's server (``bench/RESULTS.md``, "Async blobs"): no faster, as the bytes are
hashed and sent outside the event loop either way.

**Inputs.** :meth:`AsyncBlobStore.put` takes an async iterator of ``bytes`` (Starlette's
``request.stream()``), an object with ``async read(n)`` (Starlette's ``UploadFile``:
its ``filename``, ``content_type`` and ``size`` are used as the sync store uses a form
file's), or anything the sync :meth:`BlobStore.put` takes (``bytes``, a binary file, an
iterable of ``bytes``), which is then read in the worker thread.

**Failures and cancellation.** Whatever stops a put -- a limit, a refused type, an
exception from the body (a client that disconnected), the backend, or the calling
task being cancelled -- aborts the write: no object is ever visible under the key.
A cancelled put returns (re-raising :class:`asyncio.CancelledError`) only once its
worker has aborted, or at once when its write has not started (every upload thread
busy with other clients: it is dropped, not waited for). The worker stops at once:
it reads no more of the body, a sync body (a file, an iterator) read in the worker
included, once the read under way returns (a read blocked on a pipe or a socket is
not interrupted); S3's parts being sent finish, then the multipart upload is
aborted. If the write had already been committed when the cancellation came, the
new blob is deleted, since its key never reached the caller.
:meth:`AsyncBlobStore.receive_upload` holds the body to the form's ``max_size`` as
:meth:`AsyncBlobStore.put` holds it to its own.

Reads, listings, deletes, signed URLs and direct uploads run the sync store's methods
in a worker thread (``asyncio.to_thread``). What touches no backend -- checking a
signed URL (``verify_url``, ``check_params``), the counters -- is called on
:attr:`AsyncBlobStore.sync` directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar, cast

from .._fork import reset_in_child
from .._settle import settle
from ..config import parse_url
from ..errors import BlobError, ConfigError
from .protocol import CONCURRENT_PUTS, Blob, BlobPage, PresignedUpload
from .s3 import S3Backend
from .source import INTERRUPT, READ_CHUNK, read_size
from .store import BlobStore, backend_class

__all__ = ["QUEUE_BYTES", "AsyncBlobReader", "AsyncBlobStore"]

#: bytes held between the event loop and the worker thread of one put (the worker
#: takes them all at once; one chunk more may wait in the body's own reader)
QUEUE_BYTES = 1024 * 1024

_log = logging.getLogger("statekit.blobs")

_T = TypeVar("_T")


class _Channel:
    """A bounded hand-over of chunks from the event loop to one worker thread.

    The loop side :meth:`send`\\ s (waiting while :data:`QUEUE_BYTES` are queued), then
    :meth:`close`\\ s or :meth:`fail`\\ s; the worker iterates, taking everything queued
    at once (so a wake-up moves many small chunks), and raises :class:`BlobError` after
    :meth:`fail` so the sync pipeline aborts its write. Each side is woken only when
    it waits: thread wake-ups, not bytes, are what a busy machine makes slow.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int | None = None) -> None:
        self._loop, self._limit = loop, QUEUE_BYTES if limit is None else limit
        self._cond = threading.Condition()
        self._items: list[bytes] = []
        self._queued = 0
        self._closed = self._failed = self._sender_waits = False
        self._space = asyncio.Event()

    # -- the event loop's side -------------------------------------------------------
    async def send(self, data: bytes, worker: concurrent.futures.Future[Any]) -> None:
        """Queue *data*, waiting for room; return at once when *worker* has stopped."""
        while True:
            with self._cond:
                if self._queued < self._limit:
                    self._items.append(data)
                    self._queued += len(data)
                    self._cond.notify()
                    return
                self._space.clear()
                self._sender_waits = True
            if worker.done():
                return
            await self._space.wait()

    def close(self) -> None:
        """The body has ended: the worker reads what is queued, then the end."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def fail(self) -> None:
        """The body failed or the caller gave up: the worker's next read raises."""
        with self._cond:
            self._failed = True
            self._items, self._queued = [], 0
            self._cond.notify()

    def wake(self) -> None:
        """Wake :meth:`send` (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._space.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return

    # -- the worker's side -----------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not self._items and not self._closed and not self._failed:
                    self._cond.wait()
                if self._failed:
                    raise BlobError("upload interrupted: the body failed or the caller was cancelled")
                if not self._items:
                    return
                batch, self._items, self._queued = self._items, [], 0
                wake, self._sender_waits = self._sender_waits, False
            if wake:
                self.wake()
            yield batch[0] if len(batch) == 1 else b"".join(batch)


class _FormFile:
    """The async body as the sync pipeline's :class:`~statekit.blobs.source.Source`
    reads a form file (werkzeug's shape): its chunks, name, type and declared size."""

    def __init__(self, stream: _Channel, body: Any) -> None:
        self.stream = stream
        self.filename: str | None = getattr(body, "filename", None)
        ctype = getattr(body, "content_type", None)
        self.mimetype: str | None = ctype if isinstance(ctype, str) else None
        size = getattr(body, "size", None)
        self.content_length: int | None = size if isinstance(size, int) else None


def _chunks(body: Any) -> Callable[[int], Awaitable[bytes]] | None:
    """A function returning the next chunk of an async *body* (``b""`` at its end),
    given how many bytes are wanted (an ``async read(n)`` reads no more; an iterator
    yields what it has), or ``None`` when *body* is not async (the worker reads it)."""
    read = getattr(body, "read", None)
    if read is not None and inspect.iscoroutinefunction(read):
        return cast("Callable[[int], Awaitable[bytes]]", read)
    if hasattr(body, "__aiter__"):
        it: AsyncIterator[bytes] = body.__aiter__()

        async def anext_chunk(_: int) -> bytes:
            async for data in it:
                if data:
                    return data
            return b""

        return anext_chunk
    return None


async def _settle(worker: concurrent.futures.Future[_T],
                  on_cancel: Callable[[], object] | None = None) -> asyncio.Future[_T]:
    """Wait until *worker* has finished, however often the caller is cancelled
    meanwhile (:func:`statekit._settle.settle`, which calls *on_cancel* at each
    cancellation); its result as a done future."""
    return await settle(asyncio.wrap_future(worker), on_cancel)


class AsyncBlobReader:
    """An open blob for asyncio: ``await reader.read(n)``, ``await reader.seek(pos)``,
    ``async for chunk in reader`` (chunks of :data:`~statekit.blobs.source.READ_CHUNK`
    bytes, e.g. for Starlette's ``StreamingResponse``), ``async with``. Each read runs
    the sync stream's read (ranged GETs on S3) in a worker thread. One task reads a
    reader at a time."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    async def read(self, size: int = -1) -> bytes:
        """Up to *size* bytes (all that is left with ``-1``; ``b""`` at the end)."""
        return await asyncio.to_thread(self.raw.read, size)

    async def seek(self, offset: int, whence: int = 0) -> int:
        """Move to *offset* (``io.SEEK_*`` *whence*); the new position."""
        return await asyncio.to_thread(self.raw.seek, offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self.raw.tell()

    async def aclose(self) -> None:
        """Release the stream's connection or file."""
        await asyncio.to_thread(self.raw.close)

    def __aiter__(self) -> AsyncBlobReader:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read(READ_CHUNK)
        if not data:
            raise StopAsyncIteration
        return data

    async def __aenter__(self) -> AsyncBlobReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncBlobStore:
    """Uploaded files for asyncio apps, in a store chosen by URL (``s3://``,
    ``file://``, ``memory://`` or a registered scheme), stored exactly as
    :class:`BlobStore` stores them: a blob put by one is read, listed, confirmed and
    deleted by the other. See the module docstring for the design.

    :param url: the store's URL, with the options :class:`BlobStore` takes
        (``max_size=``, ``allowed_types=``, ``secret=``, backend options).
    :param store: a ready sync :class:`BlobStore` to share (a Django project's, say)
        instead of *url*; :attr:`sync` is the one in use either way.
    :param upload_threads: puts writing at once; more wait (their bodies held back
        by the bounded queue) until a worker is free. A put holds its worker while
        its client sends, so size this to the uploads you expect at once. An S3
        store made here sizes its connection pool for them (``concurrent_puts``,
        unless its URL's ``?concurrent_puts=`` or a keyword says otherwise); a ready
        *store* keeps its own.

    Safe to share between tasks and event loops of one process; a forked child (a
    ``--preload`` master's worker) gets an upload pool of its own. Failures raise what
    the sync store raises (:class:`~statekit.errors.BackendUnavailable`, ...).
    """

    def __init__(self, url: str | None = None, *, store: BlobStore | None = None,
                 upload_threads: int = CONCURRENT_PUTS, **options: Any) -> None:
        if upload_threads < 1:
            raise ConfigError("upload_threads must be at least 1")
        if store is None:
            if url is not None and issubclass(backend_class(url), S3Backend) \
                    and "concurrent_puts" not in parse_url(url).options:  # (the URL's wins)
                options.setdefault("concurrent_puts", upload_threads)  # its connection pool
            store = BlobStore(url, **options)
        elif url is not None or options:
            raise ConfigError("AsyncBlobStore takes a URL (with its options) or store=, not both")
        #: the sync store this one runs (the same objects, counters and secret)
        self.sync = store
        self._upload_threads = upload_threads
        self.reset_after_fork()
        reset_in_child(self)

    def reset_after_fork(self) -> None:
        """A new upload pool (also in a forked child: the parent's pool counts its
        idle workers, threads the child does not have, and gave them the child's
        puts, which then waited for ever)."""
        self._uploads = concurrent.futures.ThreadPoolExecutor(self._upload_threads,
                                                              thread_name_prefix="statekit-blobs-put")

    @property
    def scheme(self) -> str:
        """The backend's URL scheme (``"s3"``)."""
        return self.sync.scheme

    def describe(self) -> str:
        """A short, password-free name of the store."""
        return self.sync.describe()

    # -- writing -------------------------------------------------------------------
    async def put(self, body: Any, **options: Any) -> Blob:
        """Store *body* under a new generated key and return its :class:`Blob`: the
        keyword arguments, limits, checks and errors of :meth:`BlobStore.put`
        (``filename=``, ``content_type=``, ``max_size=``, ``allowed_types=``,
        ``metadata=``, ``prefix=``), which runs it.

        :param body: an async iterator of ``bytes`` (``request.stream()``), an object
            with ``async read(n)`` (``UploadFile``), or what :meth:`BlobStore.put` takes.

        ``max_size`` is enforced while the body streams, as the sync store enforces it:
        an ``async read(n)`` body is read at most one byte past it, an async iterator
        one chunk past it. Cancelling the calling task aborts the write (see the module
        docstring); nothing is left under any key.
        """
        limit = self.sync.limit(options.get("max_size"))
        return await self._stream(body, limit, functools.partial(self.sync.put, **options))

    async def _stream(self, body: Any, limit: int | None, write: Callable[[Any], _T]) -> _T:
        """Run ``write(stream)`` (a sync store method) in an upload worker, *body*
        fed to it from this event loop; see the module docstring."""
        loop = asyncio.get_running_loop()
        next_chunk = _chunks(body)
        channel = _Channel(loop)
        source = body if next_chunk is None else _FormFile(channel, body)
        stop = threading.Event()  # the worker's Source reads no more once it is set
        ctx = contextvars.copy_context()
        ctx.run(INTERRUPT.set, stop)
        worker = self._uploads.submit(ctx.run, write, source)
        worker.add_done_callback(lambda _: channel.wake())

        def interrupt() -> None:
            """Abort the write: the worker reads the body no further (a sync body's
            read under way ends first), and one not started (all upload threads busy)
            never runs."""
            stop.set()
            channel.fail()
            worker.cancel()

        if next_chunk is not None:
            try:
                total = 0
                while not worker.done() and (data := await next_chunk(read_size(limit, total))):
                    await channel.send(data, worker)
                    total += len(data)
                    if limit is not None and total > limit:
                        break  # the worker refuses it: read no further
                channel.close()
            except BaseException:
                interrupt()
                await _settle(worker, interrupt)
                raise
        try:
            return (await _settle(worker, interrupt)).result()
        except asyncio.CancelledError:
            if not worker.cancelled() and worker.exception() is None:
                await _settle(self._uploads.submit(self._forget, worker.result()))
            raise

    def _forget(self, result: object) -> None:
        """Delete the blob a cancelled put committed: its key never reached anyone. When
        the delete fails, the key is logged: no caller is left to be told."""
        if isinstance(result, Blob):
            try:
                self.sync.delete(result.key)
            except Exception as e:
                _log.warning("a cancelled put committed %r (%s) and deleting it failed: %s: %s; "
                             "nothing refers to it", result.key, self.describe(), type(e).__name__, e)
                raise

    # -- reading -------------------------------------------------------------------
    async def open(self, key: str) -> AsyncBlobReader:
        """The blob as an :class:`AsyncBlobReader` (fetched in ranges as it is read;
        close it, or use ``async with``). :raises BlobNotFound:"""
        return AsyncBlobReader(await asyncio.to_thread(self.sync.open, key))

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to *length* bytes from offset *start* (fewer at the end of the blob)."""
        return await asyncio.to_thread(self.sync.read_range, key, start, length)

    async def stat(self, key: str, *, sha256: bool = True) -> Blob:
        """The blob's :class:`Blob` record; without *sha256*, one request on S3
        (:meth:`BlobStore.stat`). :raises BlobNotFound:"""
        return await asyncio.to_thread(self.sync.stat, key, sha256=sha256)

    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under *key*."""
        return await asyncio.to_thread(self.sync.exists, key)

    async def delete(self, key: str) -> bool:
        """Delete the blob; ``True`` if it existed. Idempotent."""
        return await asyncio.to_thread(self.sync.delete, key)

    async def list_page(self, prefix: str = "", *, cursor: str | None = None,
                        page_size: int = 1000) -> BlobPage:
        """One page of blobs under *prefix* (:meth:`BlobStore.list_page`)."""
        return await asyncio.to_thread(self.sync.list_page, prefix, cursor=cursor, page_size=page_size)

    async def list_dir(self, prefix: str = "") -> tuple[list[str], list[str]]:
        """One level below *prefix*: subdirectory and blob names (:meth:`BlobStore.list_dir`)."""
        return await asyncio.to_thread(self.sync.list_dir, prefix)

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[Blob]:
        """Every blob under *prefix*, fetched a page at a time: ``async for blob in
        store.list("avatars/")``."""
        cursor: str | None = None
        while True:
            page = await self.list_page(prefix, cursor=cursor, page_size=page_size)
            for blob in page.items:
                yield blob
            if page.cursor is None:
                return
            cursor = page.cursor

    # -- URLs ----------------------------------------------------------------------
    async def url(self, key: str, *, expires: int = 3600, download_name: str | None = None) -> str:
        """A URL reading the blob for *expires* seconds (:meth:`BlobStore.url`); run
        in a worker because S3's signer may fetch credentials on first use."""
        return await asyncio.to_thread(self.sync.url, key, expires=expires, download_name=download_name)

    # -- direct uploads ------------------------------------------------------------
    async def presign_upload(self, *, max_size: int, content_type_prefix: str = "", expires: int = 3600,
                             prefix: str = "") -> PresignedUpload:
        """Let a browser upload one file directly (:meth:`BlobStore.presign_upload`)."""
        return await asyncio.to_thread(self.sync.presign_upload, max_size=max_size, expires=expires,
                                       content_type_prefix=content_type_prefix, prefix=prefix)

    async def receive_upload(self, fields: Mapping[str, str], body: Any, *,
                             content_type: str | None = None) -> None:
        """The server side of a direct upload for stores without their own
        (:meth:`BlobStore.receive_upload`), *body* streamed as :meth:`put` streams it."""
        try:  # the signed limit, checked by the sync store's Source as it reads
            limit: int | None = int(fields.get("max_size", "0"))
        except ValueError:
            limit = None  # refused by the signature check
        await self._stream(body, limit, lambda stream: self.sync.receive_upload(fields, stream,
                                                                                content_type=content_type))

    async def confirm(self, key: str, *, allowed_types: Sequence[str] | None = None) -> Blob:
        """Check a direct upload against its policy and accept it (:meth:`BlobStore.confirm`)."""
        return await asyncio.to_thread(self.sync.confirm, key, allowed_types=allowed_types)

    async def cleanup_incomplete(self, older_than: float = 86400.0) -> int:
        """Remove what interrupted writes left (:meth:`BlobStore.cleanup_incomplete`)."""
        return await asyncio.to_thread(self.sync.cleanup_incomplete, older_than)

    async def aclose(self) -> None:
        """Wait for the puts under way, then release the store's connections and
        files (the store is unusable afterwards)."""
        await asyncio.to_thread(self._uploads.shutdown, wait=True)
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncBlobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
