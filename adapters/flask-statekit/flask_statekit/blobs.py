"""Uploaded files in Flask, stored in a :class:`statekit.blobs.BlobStore`.

``StateKit(app)`` opens the store named by ``STATEKIT_BLOBS_URL`` at
``app.extensions["statekit"].blobs``; :func:`save_upload` stores a file from the
current request::

    from flask_statekit.blobs import save_upload, blob_url

    @app.post("/avatar")
    def avatar():
        blob = save_upload("photo", max_size=5 * 2**20, allowed_types=["image/*"])
        user.avatar_key = blob.key
        return {"url": blob_url(blob.key, expires=600)}

A request whose ``Content-Length`` already exceeds the limit (plus
``STATEKIT_BLOBS_FORM_OVERHEAD`` for the multipart framing and other fields) is
answered 413 before a byte of its body is read; without a ``Content-Length`` the
body is cut off at that size while it is read. The file part itself is then held
to the exact limit while it streams to the store.

Settings (``app.config``, then the environment):

=================================  ====================================================
``STATEKIT_BLOBS_URL``             ``s3://``, ``file://`` or ``memory://`` store
``STATEKIT_BLOBS_MAX_SIZE``        default limit per file (``10MiB``, bytes)
``STATEKIT_BLOBS_ALLOWED_TYPES``   default allow-list (``image/*,application/pdf``)
``STATEKIT_BLOBS_FORM_OVERHEAD``   size allowed beyond the limit for the form (64 KiB)
``STATEKIT_BLOBS_ROUTE``           URL of the download view for non-S3 stores
                                   (``/_statekit/blobs``)
=================================  ====================================================

With S3, :func:`blob_url` is a presigned GET and S3 serves the bytes. With ``file://``
(a shared volume) or ``memory://``, it is a URL of the :func:`serve_blob` view, signed
with the app's ``SECRET_KEY`` and time-limited, so any worker can serve it.

Errors become HTTP errors: too large 413, wrong or disallowed type 415, missing
field 400, store unavailable 503 -- and nothing is stored. The 503 page is generic:
the endpoint, bucket and key of the failure go to the ``statekit.outage`` log (once
per outage), never to the visitor.

A missing extra (``pip install 'statekit[blobs]'``) or a ``file://`` directory that
does not exist (without ``?create=1``) fails ``StateKit(app)``, not the first upload,
as does ``STATEKIT_BLOBS_ENABLED = True`` without a ``STATEKIT_BLOBS_URL``. (Not set,
that switch leaves blobs off when no store is configured: an app that stores no
files needs neither setting.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, request, send_file, url_for

from statekit.blobs import Blob, BlobStore, content_disposition, open_blob_store
from statekit.blobs.protocol import FORM_OVERHEAD
from statekit.config import parse_size
from statekit.errors import (
    BackendUnavailable,
    BlobError,
    BlobNotFound,
    BlobTooLarge,
    ConfigError,
    ContentTypeMismatch,
    DisallowedContentType,
    InvalidKey,
)
from statekit.lifecycle import outages

from . import _config, get_state, unavailable_response

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["blob_store", "blob_url", "init_app", "save_upload", "serve_blob"]

DEFAULT_FORM_OVERHEAD = FORM_OVERHEAD  # one default for the three adapters


def init_app(app: Flask, state: StateKitState) -> None:
    """Open the blob store for *app* (called by ``StateKit.init_app``). Without
    ``STATEKIT_BLOBS_URL`` ``state.blobs`` is ``None`` and :func:`blob_store` says
    what to set (``StateKit.init_app`` refused to start if blobs were switched on by
    name)."""
    max_size = _config(app, "STATEKIT_BLOBS_MAX_SIZE")
    allowed = _config(app, "STATEKIT_BLOBS_ALLOWED_TYPES")
    if isinstance(allowed, str):
        allowed = [t.strip() for t in allowed.split(",") if t.strip()]
    url = state.settings.blobs_url
    store: BlobStore | None = None
    limit = parse_size(max_size, name="STATEKIT_BLOBS_MAX_SIZE") if max_size not in (None, "") else None
    # a size, as the limit is ("64KiB"), refused now rather than at each upload
    overhead = _config(app, "STATEKIT_BLOBS_FORM_OVERHEAD", DEFAULT_FORM_OVERHEAD)
    state.blobs_form_overhead = parse_size(overhead, name="STATEKIT_BLOBS_FORM_OVERHEAD")  # type: ignore[attr-defined]
    if url:
        keys = state.settings.secret_keys
        store = open_blob_store(url, max_size=limit, allowed_types=list(allowed) if allowed else None,
                                secret=("statekit-blobs:" + keys[0]) if keys else None)
        if store.scheme != "s3":  # S3 serves presigned URLs itself; other stores need a view
            route = _config(app, "STATEKIT_BLOBS_ROUTE", "/_statekit/blobs")
            app.add_url_rule(f"{route.rstrip('/')}/<path:key>", "statekit_blob", serve_blob)
    state.blobs = store  # type: ignore[attr-defined]


def blob_store(app: Flask | None = None) -> BlobStore:
    """The app's :class:`BlobStore`. :raises ConfigError: no store configured."""
    store: BlobStore | None = getattr(get_state(app), "blobs", None)
    if store is None:
        raise ConfigError("no blob store: set STATEKIT_BLOBS_URL")
    return store


def save_upload(
    field: str = "file",
    *,
    max_size: int | None = None,
    allowed_types: Sequence[str] | None = None,
    prefix: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Blob:
    """Store the file posted in form field *field* of the current request.

    Checks ``Content-Length`` first (413 without reading the body), then streams the
    file part into the store (werkzeug spools large parts to a temporary file, so
    memory stays bounded). Aborts with 400/413/415/503 on failure.
    """
    store = blob_store()
    limit = store.limit(max_size)
    if limit is not None:
        ceiling = limit + int(getattr(get_state(), "blobs_form_overhead", DEFAULT_FORM_OVERHEAD))
        if request.content_length is not None and request.content_length > ceiling:
            abort(413, description=f"upload larger than {limit} bytes")
        current = request.max_content_length
        request.max_content_length = ceiling if current is None else min(current, ceiling)
    upload: Any = request.files.get(field)
    if upload is None or not upload.filename:
        abort(400, description=f"no file in form field {field!r}")
    try:
        blob = store.put(upload, max_size=limit, allowed_types=allowed_types, prefix=prefix,
                         metadata=metadata)
    except BlobTooLarge as e:
        abort(413, description=str(e))
    except (ContentTypeMismatch, DisallowedContentType) as e:
        abort(415, description=str(e))
    except BackendUnavailable as e:
        outages.down(_outage_name(store), e)  # the details: for the log only
        abort(unavailable_response())
    outages.up(_outage_name(store))
    return blob


def _outage_name(store: BlobStore) -> str:
    return f"blob store {store.describe()}"


def blob_url(key: str, *, expires: int = 3600, download_name: str | None = None) -> str:
    """A time-limited download URL for *key*: presigned on S3, else a signed URL of
    this app's ``statekit_blob`` view (keys signed with ``SECRET_KEY``, so any
    worker serves it)."""
    store = blob_store()
    if store.scheme == "s3":
        return store.url(key, expires=expires, download_name=download_name)
    disposition = content_disposition(download_name) if download_name else None
    params: dict[str, Any] = store.signed_params(key, expires=expires, disposition=disposition)
    return url_for("statekit_blob", key=key, **params)


def serve_blob(key: str) -> Response:
    """The view behind :func:`blob_url` for ``file://`` and ``memory://`` stores:
    checks the signature and expiry (403), streams the blob with its stored type as an
    attachment, ``nosniff`` and a sandboxing CSP, with conditional/range support."""
    store = blob_store()
    try:
        disposition = store.check_params(key, request.args)
        blob = store.stat(key)
        stream = store.open(key)
    except (InvalidKey, BlobNotFound):
        abort(404)
    except BlobError:
        abort(403)
    except BackendUnavailable as e:
        outages.down(_outage_name(store), e)
        abort(unavailable_response())
    outages.up(_outage_name(store))
    resp = send_file(stream, mimetype=blob.content_type or "application/octet-stream", conditional=False,
                     etag=blob.sha256 or False, last_modified=blob.created, max_age=0)
    resp.content_length = blob.size
    resp.make_conditional(request, accept_ranges=True, complete_length=blob.size)  # modifies resp
    resp.headers["Content-Disposition"] = disposition
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp
