"""Uploaded files in a shared blob store: S3, a shared volume, or memory.

::

    store = BlobStore("s3://bucket/uploads?endpoint_url=http://127.0.0.1:9000")
    blob = store.put(request.files["photo"], max_size=10 * 2**20, allowed_types=["image/*"])
    blob.key        # '2026/11/22/9f0c...e1.png' -- generated, never the user's filename
    store.url(blob.key, expires=300, download_name="holiday.png")

One contract for every backend (``s3://``, ``file://``, ``memory://``, or a scheme
another distribution registers: :mod:`statekit.blobs.protocol`):

* :meth:`BlobStore.put` streams the input in parts with bounded memory, computes its
  SHA-256 on the way, enforces ``max_size`` while reading, sniffs the type from the
  first bytes (``puremagic``) and checks it against the declared type and the
  allow-list *before* anything is written. Any failure -- an exception from the input,
  a size or type violation, a backend outage -- aborts the write: no object becomes
  visible under the key, ever.
* Keys are generated (``[prefix/]YYYY/MM/DD/<128-bit random id>.<ext>``), the extension
  comes from the sniffed type, and an existing object is never overwritten
  (conditional create on S3, ``link``/``O_EXCL`` on disk).
* The original filename is kept, sanitized (:func:`sanitize_filename`), in metadata
  and in ``Content-Disposition`` (RFC 6266 / RFC 5987, :func:`content_disposition`).

Modules: :mod:`~statekit.blobs.store` (the façade), :mod:`~statekit.blobs.protocol`
(the backend contract and records), :mod:`~statekit.blobs.keys`,
:mod:`~statekit.blobs.sniff`, :mod:`~statekit.blobs.source` (reading uploads), and one
module per backend: :mod:`~statekit.blobs.s3`, :mod:`~statekit.blobs.local`,
:mod:`~statekit.blobs.memory`. :mod:`~statekit.blobs.aio` has :class:`AsyncBlobStore`,
the same store for asyncio apps.
"""

from __future__ import annotations

from ..errors import ConfigError
from .aio import AsyncBlobReader, AsyncBlobStore
from .keys import content_disposition, generate_key, sanitize_filename, validate_key
from .protocol import Blob, BlobBackend, BlobPage, BlobWriter, PresignedUpload, WriteRequest
from .sniff import SNIFF_BYTES, check_content_type, sniff
from .store import BlobStore, open_blob_store, require_extras

__all__ = ["SNIFF_BYTES", "AsyncBlobReader", "AsyncBlobStore", "Blob", "BlobBackend", "BlobPage", "BlobStore",
           "BlobWriter", "PresignedUpload", "WriteRequest", "check_content_type", "content_disposition",
           "generate_key", "no_blob_store", "open_blob_store", "require_extras", "sanitize_filename", "sniff",
           "validate_key"]


def no_blob_store(switch_off: str) -> ConfigError:
    """The refusal to start of an app whose blobs are switched on by name
    (``STATEKIT_BLOBS_ENABLED``) with no store configured: what to set, or
    *switch_off*, the setting that turns blobs off as the framework writes it
    (Flask's ``STATEKIT_BLOBS_ENABLED = False``, the environment's ``=0``)."""
    return ConfigError("StateKit: blobs enabled but no blob store is configured: set STATEKIT_BLOBS_URL "
                       "(s3://bucket/prefix, file:///srv/uploads or memory://), or switch them off: "
                       + switch_off)
