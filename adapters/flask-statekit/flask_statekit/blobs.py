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
``STATEKIT_BLOBS_FORM_OVERHEAD``   bytes allowed beyond the limit for the form (64 KiB)
=================================  ====================================================

Errors become HTTP errors: too large 413, wrong or disallowed type 415, missing
field 400, store unavailable 503 -- and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, current_app, request

from statekit.blobs import Blob, BlobStore, open_blob_store
from statekit.config import parse_size
from statekit.errors import (
    BackendUnavailable,
    BlobTooLarge,
    ConfigError,
    ContentTypeMismatch,
    DisallowedContentType,
)

from . import _config, get_state

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["blob_store", "blob_url", "init_app", "save_upload"]

DEFAULT_FORM_OVERHEAD = 64 * 1024


def init_app(app: Flask, state: StateKitState) -> None:
    """Open the blob store for *app* (called by ``StateKit.init_app``). Without
    ``STATEKIT_BLOBS_URL`` ``state.blobs`` is ``None`` and :func:`blob_store` says
    what to set."""
    max_size = _config(app, "STATEKIT_BLOBS_MAX_SIZE")
    allowed = _config(app, "STATEKIT_BLOBS_ALLOWED_TYPES")
    if isinstance(allowed, str):
        allowed = [t.strip() for t in allowed.split(",") if t.strip()]
    url = state.settings.blobs_url
    store: BlobStore | None = None
    limit = parse_size(max_size, name="STATEKIT_BLOBS_MAX_SIZE") if max_size not in (None, "") else None
    if url:
        store = open_blob_store(url, max_size=limit, allowed_types=list(allowed) if allowed else None)
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
    limit = max_size if max_size is not None else store.max_size
    if limit is not None:
        overhead = _config(current_app, "STATEKIT_BLOBS_FORM_OVERHEAD", DEFAULT_FORM_OVERHEAD)
        ceiling = limit + int(overhead)
        if request.content_length is not None and request.content_length > ceiling:
            abort(413, description=f"upload larger than {limit} bytes")
        current = request.max_content_length
        request.max_content_length = ceiling if current is None else min(current, ceiling)
    upload: Any = request.files.get(field)
    if upload is None or not upload.filename:
        abort(400, description=f"no file in form field {field!r}")
    try:
        return store.put(upload, max_size=limit, allowed_types=allowed_types, prefix=prefix,
                         metadata=metadata)
    except BlobTooLarge as e:
        abort(413, description=str(e))
    except (ContentTypeMismatch, DisallowedContentType) as e:
        abort(415, description=str(e))
    except BackendUnavailable as e:
        abort(503, description=str(e))


def blob_url(key: str, *, expires: int = 3600, download_name: str | None = None) -> str:
    """A time-limited download URL for *key* (presigned on S3)."""
    return blob_store().url(key, expires=expires, download_name=download_name)
