"""Uploaded files in Starlette and FastAPI, stored in a :class:`statekit.AsyncBlobStore`.

``StateKit(app)`` opens the store named by ``STATEKIT_BLOBS_URL`` at
``app.state.statekit.blobs`` (``Depends(blobs)``); :func:`save_upload` stores a file
from the current request, :func:`blob_url` gives a download URL::

    from starlette_statekit.uploads import blob_url, save_upload

    @app.post("/avatar")
    async def avatar(request: Request):
        blob = await save_upload(request, "photo", max_size=5 * 2**20, allowed_types=["image/*"])
        return {"url": await blob_url(request, blob.key, expires=600)}

A request whose ``Content-Length`` already exceeds the limit (plus
``STATEKIT_BLOBS_FORM_OVERHEAD`` for the multipart framing) is answered 413 before
its body is read; one without ``Content-Length`` (chunked) as soon as the body read
passes that size. Starlette's form parser spools a file part to a temporary file, and
the part is held to the exact limit while it streams to the store (no more than one
chunk past it is read from the spool). FastAPI reads the whole form of a route with
an ``UploadFile`` parameter before the handler runs, so ``save_upload(request,
upload=...)`` refuses a file past the limit only once it was read and spooled: add
:class:`UploadLimitMiddleware`, which holds every multipart request to the limit
before the app reads it. Errors become HTTP errors: too large 413,
wrong or disallowed type 415, missing field 400, store unavailable 503 (a generic
page; the details go to the ``statekit.outage`` log) -- and nothing is stored.

With S3, :func:`blob_url` is a presigned GET. With ``file://`` or ``memory://`` it is
a URL of :func:`serve_blob` (route ``STATEKIT_BLOBS_ROUTE``, ``/_statekit/blobs`` by
default), signed with the store's secret (from ``STATEKIT_SECRET_KEYS``, the same
derivation as the Flask adapter's, so either app's URLs work in the other) and
time-limited, so any worker serves it.

Settings: ``STATEKIT_BLOBS_URL``, ``STATEKIT_BLOBS_MAX_SIZE``,
``STATEKIT_BLOBS_ALLOWED_TYPES``, ``STATEKIT_BLOBS_FORM_OVERHEAD``,
``STATEKIT_BLOBS_ROUTE`` (``docs/settings.md``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from statekit import errors
from statekit.blobs import AsyncBlobStore, Blob, content_disposition
from statekit.blobs.protocol import FORM_OVERHEAD
from statekit.config import parse_size
from statekit.errors import BackendUnavailable, BlobError
from statekit.lifecycle import outages

from . import blob_store

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["DEFAULT_FORM_OVERHEAD", "UploadLimitMiddleware", "blob_url", "init_app", "save_upload",
           "serve_blob"]

DEFAULT_FORM_OVERHEAD = FORM_OVERHEAD  # one default for the three adapters


def init_app(app: Any, state: StateKitState) -> None:
    """Open the blob store for *app* (called by ``StateKit``). Without
    ``STATEKIT_BLOBS_URL`` ``state.blobs`` is ``None`` and :func:`~starlette_statekit.blob_store`
    says what to set."""
    url = state.settings.blobs_url
    store: AsyncBlobStore | None = None
    if url:
        raw_size = state.get("STATEKIT_BLOBS_MAX_SIZE")
        allowed = state.get("STATEKIT_BLOBS_ALLOWED_TYPES")
        if isinstance(allowed, str):
            allowed = [t.strip() for t in allowed.split(",") if t.strip()]
        keys = state.settings.secret_keys
        limit = parse_size(raw_size, name="STATEKIT_BLOBS_MAX_SIZE") if raw_size not in (None, "") else None
        # a size, as the limit is ("64KiB"), refused now rather than at each upload
        overhead = state.get("STATEKIT_BLOBS_FORM_OVERHEAD", DEFAULT_FORM_OVERHEAD)
        state.blobs_form_overhead = parse_size(overhead, name="STATEKIT_BLOBS_FORM_OVERHEAD")  # type: ignore[attr-defined]
        state.open_blobs = functools.partial(  # type: ignore[attr-defined]
            AsyncBlobStore, url, max_size=limit, allowed_types=list(allowed) if allowed else None,
            secret=("statekit-blobs:" + keys[0]) if keys else None,
        )
        store = state.open_blobs()
        if store.scheme != "s3":  # S3 serves presigned URLs itself; other stores need a route
            route = str(state.get("STATEKIT_BLOBS_ROUTE", "/_statekit/blobs")).rstrip("/")
            app.add_route(f"{route}/{{key:path}}", serve_blob, methods=["GET", "HEAD"], name="statekit_blob")
    state.blobs = store  # type: ignore[attr-defined]


def _unavailable(store: AsyncBlobStore, error: BackendUnavailable) -> HTTPException:
    outages.down(f"blob store {store.describe()}", error)  # the details: for the log only
    headers = {"Retry-After": "5", "Cache-Control": "no-store"}
    return HTTPException(503, "Service Unavailable", headers=headers)


async def save_upload(
    request: Request,
    field: str = "file",
    *,
    upload: UploadFile | None = None,
    max_size: int | None = None,
    allowed_types: Sequence[str] | None = None,
    prefix: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Blob:
    """Store the file posted in form field *field* of *request* (or *upload*, an
    ``UploadFile`` FastAPI already parsed) and return its :class:`~statekit.blobs.Blob`.
    A form parsed here has its files closed on return (its text fields stay readable).

    :raises HTTPException: 400 no file, 413 too large, 415 refused type, 503 store
        unavailable; nothing is stored then.
    """
    store: AsyncBlobStore = blob_store(request)
    limit = store.sync.limit(max_size)
    if limit is not None:
        overhead: int = getattr(request.app.state.statekit, "blobs_form_overhead", DEFAULT_FORM_OVERHEAD)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + overhead:
            raise _too_large(limit)
        if upload is None and getattr(request, "_form", None) is None:
            # a body without Content-Length (chunked) is counted as the form parser
            # reads it (the form stays the request's own): it would otherwise spool a
            # file part of any size to disk before the limit is checked
            request._receive = _bounded(request.receive, limit, limit + overhead)
    form = None
    if upload is None:
        form = await request.form()
        part = form.get(field)
        upload = part if isinstance(part, UploadFile) else None
    try:
        if upload is None or not upload.filename:
            raise HTTPException(400, f"no file in form field {field!r}")
        blob = await store.put(upload, max_size=limit, allowed_types=allowed_types, prefix=prefix,
                               metadata=metadata)
    except errors.BlobTooLarge as e:
        raise HTTPException(413, str(e)) from None
    except (errors.ContentTypeMismatch, errors.DisallowedContentType) as e:
        raise HTTPException(415, str(e)) from None
    except BackendUnavailable as e:
        raise _unavailable(store, e) from None
    finally:
        if form is not None:  # the spooled files of a form parsed here
            await form.close()
    outages.up(f"blob store {store.describe()}")
    return blob


#: the methods whose requests :class:`UploadLimitMiddleware` looks at (a form is sent with them)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UploadLimitMiddleware:
    """Hold every multipart request to the blob store's limit before the app reads it:
    FastAPI parses the form of a route with an ``UploadFile`` (or ``Form``) parameter
    before the handler runs, spooling a file part of any size to disk, so
    :func:`save_upload`'s ``upload=`` refuses it (413) only after the whole body was read.
    Add it after ``StateKit(app)``: ``app.add_middleware(UploadLimitMiddleware)``.

    A ``multipart/form-data`` ``POST``, ``PUT`` or ``PATCH`` whose ``Content-Length``
    passes the limit plus ``STATEKIT_BLOBS_FORM_OVERHEAD`` is answered 413 when the app
    first reads its body, before a byte of it is read; one without ``Content-Length``
    (chunked) as soon as the body read passes that size. The 413 is the app's ``HTTPException`` (FastAPI's
    ``{"detail": ...}``), through its exception handlers. Other bodies, and a route that
    never reads the body, are left alone.

    :param max_size: the limit (bytes, or a size: ``"8MiB"``); default: the app's blob
        store's ``max_size`` (``STATEKIT_BLOBS_MAX_SIZE``). No limit: nothing is held.
    """

    def __init__(self, app: Any, max_size: int | str | None = None) -> None:
        self.app = app
        self.max_size = parse_size(max_size, name="max_size") if max_size not in (None, "") else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in _BODY_METHODS:
            headers = dict(scope["headers"])  # names in lower case
            if headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
                app = scope.get("app")  # Starlette's: StateKit(app)'s state, if any
                state = getattr(getattr(app, "state", None), "statekit", None)
                store: AsyncBlobStore | None = getattr(state, "blobs", None)
                limit = self.max_size
                if limit is None and store is not None:
                    limit = store.sync.limit()
                if limit is not None:
                    overhead: int = getattr(state, "blobs_form_overhead", DEFAULT_FORM_OVERHEAD)
                    length = headers.get(b"content-length", b"")
                    declared = int(length) if length.isdigit() else 0
                    receive = _bounded(receive, limit, limit + overhead, declared)
        await self.app(scope, receive, send)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload larger than {limit} bytes")


def _bounded(receive: Any, limit: int, most: int, declared: int = 0) -> Any:
    """*receive*, answering 413 once the request body passes *most* bytes, or before
    reading any when its *declared* length (``Content-Length``) does."""
    seen = 0

    async def bounded() -> Any:
        nonlocal seen
        if declared > most:
            raise _too_large(limit)
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > most:
            raise _too_large(limit)
        return message

    return bounded


async def blob_url(request: Request, key: str, *, expires: int = 3600,
                   download_name: str | None = None) -> str:
    """A time-limited download URL for *key*: presigned on S3, else a signed URL of
    :func:`serve_blob` (a path under the app's root path)."""
    store: AsyncBlobStore = blob_store(request)
    if store.scheme == "s3":
        return await store.url(key, expires=expires, download_name=download_name)
    disposition = content_disposition(download_name) if download_name else None
    params = await asyncio.to_thread(store.sync.signed_params, key, expires=expires, disposition=disposition)
    path = request.app.url_path_for("statekit_blob", key=key)
    return f"{request.scope.get('root_path', '')}{path}?{urlencode(params)}"


async def serve_blob(request: Request) -> Response:
    """The route behind :func:`blob_url` for ``file://`` and ``memory://`` stores:
    checks the signature and expiry (403), streams the blob with its stored type as
    an attachment, with ``nosniff`` and a sandboxing CSP (no range requests)."""
    store: AsyncBlobStore = blob_store(request)
    key = request.path_params["key"]
    try:
        disposition = store.sync.check_params(key, request.query_params)
        blob = await store.stat(key)
        reader = await store.open(key)
    except (errors.InvalidKey, errors.BlobNotFound):
        raise HTTPException(404) from None
    except BlobError:
        raise HTTPException(403) from None
    except BackendUnavailable as e:
        raise _unavailable(store, e) from None

    async def body() -> AsyncIterator[bytes]:
        async with reader:
            async for chunk in reader:
                yield chunk

    headers = {"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'; sandbox", "Content-Length": str(blob.size),
               "Cache-Control": "private, max-age=0"}
    if blob.sha256:
        headers["ETag"] = f'"{blob.sha256}"'
    media_type = blob.content_type or "application/octet-stream"
    return StreamingResponse(body(), media_type=media_type, headers=headers)
