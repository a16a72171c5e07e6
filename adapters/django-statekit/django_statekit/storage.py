"""``django_statekit.storage.BlobStorage``: a Django ``Storage`` backed by a statekit
:class:`~statekit.blobs.BlobStore` (S3, a shared volume, or memory)::

    STORAGES = {
        "default": {
            "BACKEND": "django_statekit.storage.BlobStorage",
            "OPTIONS": {"url": "s3://bucket/media?region=eu-west-1",   # else STATEKIT_BLOBS_URL
                        "max_size": 10 * 2**20, "allowed_types": ["image/*", "application/pdf"]},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

(An upload store, not a static files one: ``STORAGES["staticfiles"]`` on it fails
Django's start, see :mod:`django_statekit.apps`.)

``FileField`` save/open/url/delete/exists/size work as usual, with statekit's rules:
the stored name is a generated key in the directory Django gives, as
``FileSystemStorage`` would place the file (``upload_to``, its ``%Y/%m/%d`` formatted:
``photos/2026/12/08/<random>.<ext>``, about 40 characters plus ``upload_to``), never
the uploaded filename, so nothing is ever overwritten (saving the same name twice
gives two keys); the upload is streamed with
bounded memory, its type sniffed and checked, and its size limited. Refusals raise
:class:`~statekit.errors.BlobTooLarge`, :class:`~statekit.errors.ContentTypeMismatch`
or :class:`~statekit.errors.DisallowedContentType` from ``save()``, and nothing is
stored. Text content (``ContentFile("hello")``, a ``StringIO``, a text-mode file) is
stored UTF-8 encoded, as Django's own storages write it. Files are read-only once
stored (``open(name, "w")`` is refused); ``open(name, "r")`` reads text (UTF-8), and a
closed file reopens (``FieldFile.open()``). Names may be ``pathlib.Path`` objects and
are normalised like paths (``./a/b`` is ``a/b``); one that leaves the storage (``..``,
``/etc/passwd``) raises ``SuspiciousFileOperation``, from ``exists()`` too.

A missing extra or a ``file://`` directory that does not exist (without
``?create=1``) fails Django's start (see :mod:`django_statekit.apps`). When the store
is unreachable, ``save()`` raises :class:`~statekit.errors.BackendUnavailable`, which
:class:`~django_statekit.middleware.SessionOutageMiddleware` answers with a generic 503
(the endpoint, bucket and key go to the ``statekit.outage`` log only), as
:func:`serve_blob` does.

``url()`` is a presigned GET on S3, valid for ``OPTIONS["expires"]`` seconds or, as in
django-storages, ``url(name, expire=60)``'s. For ``file://`` and ``memory://`` stores
it is a signed, expiring URL of :func:`serve_blob`, which you add to your URLconf::

    from django_statekit.storage import serve_blob
    urlpatterns += [path("_statekit/blobs/<path:key>", serve_blob, name="statekit_blob")]
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlencode

from django.conf import settings as django_settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpRequest, HttpResponseForbidden, HttpResponseNotAllowed
from django.http.response import HttpResponseBase
from django.urls import NoReverseMatch, reverse
from django.utils.deconstruct import deconstructible

from statekit.blobs import Blob, BlobStore, generate_key, open_blob_store, validate_key
from statekit.config import number, parse_size
from statekit.errors import BackendUnavailable, BlobError, BlobNotFound, ConfigError, InvalidKey
from statekit.lifecycle import outages

from .conf import get_settings
from .middleware import unavailable_response

__all__ = ["BlobStorage", "serve_blob"]

#: a file's name in the Storage API: Django passes ``str`` or ``pathlib.Path``
_Name = str | os.PathLike[str]


@deconstructible(path="django_statekit.storage.BlobStorage")
class BlobStorage(Storage):
    """A Django storage over a statekit blob store; see the module docstring.

    :param url: the store URL (default ``STATEKIT_BLOBS_URL``).
    :param max_size: largest accepted file, in bytes or as a size (``"10MiB"``, as
        ``STATEKIT_BLOBS_MAX_SIZE`` takes it; default: the store's).
    :param allowed_types: allowed content types (``"image/*"`` patterns; default: the
        store's). Both hold for a ready *store* too.
    :param expires: lifetime of URLs from :meth:`url`, in seconds (at least 1; at most 7
        days on S3, checked at Django's start).
    :param store: a ready :class:`BlobStore` instead of *url*.

    Thread-safe; the store is opened on first use.
    """

    def __init__(self, url: str | None = None, *, max_size: int | str | None = None,
                 allowed_types: Sequence[str] | None = None, expires: int = 3600,
                 store: BlobStore | None = None) -> None:
        self._url = url
        # a size as STATEKIT_BLOBS_MAX_SIZE takes it ("10MiB") or a number of bytes
        self.max_size = parse_size(max_size, name="max_size") if max_size is not None else None
        self.allowed_types = list(allowed_types) if allowed_types is not None else None
        # whole seconds, at least 1, as every link takes them (S3's 7 days: at use, and at start)
        self.expires = int(number(expires, "expires", minimum=1, unit="seconds"))
        self._store = store

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            url = self._url or get_settings().blobs_url
            if not url:
                raise ConfigError("BlobStorage needs OPTIONS['url'] or STATEKIT_BLOBS_URL")
            keys = get_settings().secret_keys
            self._store = open_blob_store(url, max_size=self.max_size, allowed_types=self.allowed_types,
                                          secret=("statekit-blobs:" + keys[0]) if keys else None)
        return self._store

    @property
    def limit(self) -> int | None:
        """The size of the largest file :meth:`save` accepts (``max_size``, else the
        store's; ``None``: no limit), which
        :class:`~django_statekit.uploads.BlobUploadLimitMiddleware` holds uploads to."""
        return self.max_size if self.max_size is not None else self.store.max_size

    # -- Django's Storage API --------------------------------------------------------
    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        return _BlobFile(self, self._key(name), mode)

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Store *content* under a new generated key and return the key (what
        ``FileField`` keeps). Django validates *name* first (no ``..``, no absolute
        paths); its directory part (``upload_to``) becomes the key prefix."""
        key = super().save(name, content, max_length=max_length)
        if max_length is not None and len(key) > max_length:
            self.store.delete(key)
            raise SuspiciousFileOperation(
                f"generated key {key!r} is longer than the field's max_length={max_length}; "
                "raise max_length or shorten upload_to")
        return key

    def _save(self, name: str, content: Any) -> str:
        directory, base = _split(name)
        original = _filename(content)
        if getattr(content, "seekable", lambda: False)():
            content.seek(0)  # form validation (ImageField) may have read it
        try:
            blob = self.store.put(_Chunks(content), filename=os.path.basename(str(original or base)),
                                  prefix=directory, date_path=False, max_size=self.max_size,
                                  allowed_types=self.allowed_types)
        except InvalidKey as e:
            raise SuspiciousFileOperation(f"unusable upload_to directory {directory!r}: {e}") from e
        return blob.key

    def get_valid_name(self, name: str) -> str:
        return name  # only used as the blob's display filename, sanitized by statekit

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        """*name*: keys are generated, every save gets a new one. :raises
        SuspiciousFileOperation: a key under *name*'s directory (``upload_to``) is
        longer than *max_length* whatever the file (before it is read; the
        extension, known once it is sniffed, is checked by :meth:`save`)."""
        directory = _split(name)[0]
        if max_length is not None:
            try:
                shortest = generate_key(None, prefix=directory, date_path=False)  # no extension: shortest
            except InvalidKey:
                return name  # refused by _save, with the reason
            if len(shortest) > max_length:
                raise SuspiciousFileOperation(
                    f"keys under {directory!r} are at least {len(shortest)} characters, more than the "
                    f"field's max_length={max_length}; raise max_length or shorten upload_to")
        return name

    def path(self, name: str) -> str:
        raise NotImplementedError("BlobStorage files have no local path; use open()")

    def delete(self, name: _Name) -> None:
        if not name:
            raise ValueError("The name must be given to delete().")
        self.store.delete(self._key(name))

    def exists(self, name: _Name) -> bool:
        """Whether a blob is stored under *name*. A name outside the storage (``..``,
        an absolute path) raises ``SuspiciousFileOperation``, as in Django's storages;
        one that no key can have (a dotted segment) is ``False``."""
        try:
            return self.store.exists(validate_key(_clean(name)))
        except InvalidKey:
            return False

    def listdir(self, path: _Name) -> tuple[list[str], list[str]]:
        """The subdirectories and files directly in *path*, each sorted; S3 and
        ``file://`` read that level only (:meth:`BlobStore.list_dir`)."""
        prefix = _clean(path)
        return self.store.list_dir(self._key(prefix) if prefix else "")

    def size(self, name: _Name) -> int:
        return self._stat(name).size

    def url(self, name: _Name | None, expire: int | None = None) -> str:
        """A link that reads *name* for *expire* seconds (default: ``expires``, as
        django-storages' ``url(name, expire=...)``): a presigned GET on S3, else a
        signed link to :func:`serve_blob`. :raises ValueError: *expire* is not a
        positive number of seconds (S3: at most 7 days)."""
        if not name:
            raise ValueError("the name must be given to url()")
        key = self._key(name)
        expires = self.expires if expire is None else expire
        if self.store.scheme == "s3":
            return self.store.url(key, expires=expires)
        try:
            view = reverse("statekit_blob", kwargs={"key": key})
        except NoReverseMatch:
            raise ConfigError(
                "BlobStorage.url() for a file:// or memory:// store needs the serve_blob view: "
                "path('_statekit/blobs/<path:key>', serve_blob, name='statekit_blob')") from None
        return f"{view}?{urlencode(self.store.signed_params(key, expires=expires))}"

    def get_accessed_time(self, name: _Name) -> dt.datetime:
        return self.get_modified_time(name)

    def get_created_time(self, name: _Name) -> dt.datetime:
        return self.get_modified_time(name)

    def get_modified_time(self, name: _Name) -> dt.datetime:
        """When the blob was stored (blobs never change): aware in UTC with ``USE_TZ =
        True``, else naive in the process's local time (which Django sets to
        ``TIME_ZONE``), as ``FileSystemStorage`` returns it -- not in the time zone a
        ``timezone.override()`` activates."""
        created = self._stat(name).created
        if created is None:
            raise NotImplementedError("this store does not record creation times")
        if django_settings.USE_TZ:
            return created.astimezone(dt.timezone.utc)
        return dt.datetime.fromtimestamp(created.timestamp())

    def get_alternative_name(self, file_root: str, file_ext: str) -> str:
        return f"{file_root}{file_ext}"

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _key(name: _Name) -> str:
        try:
            return validate_key(_clean(name))
        except InvalidKey as e:
            raise SuspiciousFileOperation(str(e)) from e

    def _stat(self, name: _Name) -> Blob:
        try:
            return self.store.stat(self._key(name), sha256=False)  # one HEAD on S3, as django-storages
        except BlobNotFound as e:
            raise FileNotFoundError(str(e)) from None


def _filename(content: Any) -> str | None:
    """The filename *content* brings: an upload's (the client's), or a stored blob's
    that is saved again (a ``FieldFile`` of a ``BlobStorage`` or an opened blob, as a
    "duplicate" copies one); else ``None`` (the saved name's is used)."""
    if hasattr(content, "content_type"):
        return getattr(content, "name", None)
    if isinstance(content, FieldFile) and isinstance(content.storage, BlobStorage):
        content = content.file
    return content.stored_filename() if isinstance(content, _BlobFile) else None


def _split(name: str) -> tuple[str, str]:
    """*name*'s directory (the key prefix, ``upload_to``) and base name."""
    return posixpath.split(str(name).replace("\\", "/"))


def _clean(name: _Name) -> str:
    """*name* (a ``str`` or ``pathlib.Path``) as a normalised relative key, ``""`` for
    the storage's top. :raises SuspiciousFileOperation: it leaves the storage, as
    Django's ``safe_join`` decides for its file system storage."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
    if text.startswith("/"):
        raise SuspiciousFileOperation(f"{text[:80]!r} is an absolute path, outside the storage")
    norm = posixpath.normpath(text) if text else "."
    if norm == ".." or norm.startswith("../"):
        raise SuspiciousFileOperation(f"{text[:80]!r} is outside the storage")
    return "" if norm == "." else norm


def _read_only(mode: str) -> str:
    if any(c in mode for c in "wax+"):
        raise ValueError("BlobStorage files are read-only once stored; save a new file instead")
    return mode


class _BlobFile(File):  # type: ignore[type-arg]
    """A stored blob, opened by :meth:`BlobStorage.open`: binary for ``"rb"``, UTF-8
    text for ``"r"``; reopened from the store after it was closed (``FieldFile.open()``
    on a file closed by a ``with`` block), where Django's ``File`` would look for a
    local path."""

    def __init__(self, storage: BlobStorage, key: str, mode: str) -> None:
        self._storage, self._key = storage, key
        super().__init__(self._stream(_read_only(mode)), name=key)
        self.mode = mode

    def _stream(self, mode: str) -> Any:
        try:
            stream = self._storage.store.open(self._key)
        except BlobNotFound as e:
            raise FileNotFoundError(str(e)) from None
        return stream if "b" in mode else io.TextIOWrapper(stream, encoding="utf-8")

    def stored_filename(self) -> str | None:
        """The filename the blob was uploaded with (``None``: none kept, or deleted)."""
        try:
            return self._storage.store.stat(self._key, sha256=False).filename
        except BlobNotFound:
            return None

    def open(self, mode: str | None = None, *args: Any, **kwargs: Any) -> _BlobFile:
        mode = _read_only(mode or self.mode)
        if not self.closed and mode == self.mode:
            self.seek(0)
        else:
            if not self.closed:
                self.close()
            self.file, self.mode = self._stream(mode), mode
        return self


class _Chunks:
    """A Django ``File`` as :meth:`BlobStore.put` reads it: its ``chunks()`` (so a
    failing file fails the save), text encoded to UTF-8 as Django's storages write it,
    and -- for an ``UploadedFile`` -- the client's type; the size only for binary
    content (text's is counted in characters)."""

    def __init__(self, content: Any) -> None:
        self.name = getattr(content, "name", None)
        self.content_type = getattr(content, "content_type", None)
        chunks = content.chunks() if hasattr(content, "chunks") else iter((content.read(),))
        self._chunks: Iterator[Any] = iter(chunks)
        self._first = next(self._chunks, b"")
        self.size = None if isinstance(self._first, str) else getattr(content, "size", None)

    def chunks(self) -> Iterator[bytes]:
        return iter(self)

    def __iter__(self) -> Iterator[bytes]:
        for data in itertools.chain((self._first,), self._chunks):
            yield data.encode("utf-8") if isinstance(data, str) else data


def serve_blob(request: HttpRequest, key: str, storage: str = "default") -> HttpResponseBase:
    """Serve a blob of ``STORAGES[storage]`` (a :class:`BlobStorage` over a ``file://``
    or ``memory://`` store) from a URL made by :meth:`BlobStorage.url`: the signature
    and expiry are checked (403), the blob streamed as an attachment with its stored
    type, ``nosniff`` and a sandboxing Content-Security-Policy."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    backend = storages[storage]
    if not isinstance(backend, BlobStorage):
        raise Http404("not a statekit blob storage")
    store = backend.store
    try:
        disposition = store.check_params(key, request.GET.dict())
        blob = store.stat(key, sha256=False)
        stream = store.open(key)
    except (InvalidKey, BlobNotFound):
        raise Http404("no such file") from None
    except BlobError:
        return HttpResponseForbidden("expired or invalid link")
    except BackendUnavailable as e:  # the details go to the log, not to the visitor
        outages.down(f"blob store {store.describe()}", e)
        return unavailable_response()
    if outages.is_down():
        outages.up(f"blob store {store.describe()}")
    resp = FileResponse(stream, content_type=blob.content_type or "application/octet-stream")
    resp["Content-Length"] = str(blob.size)
    resp["Content-Disposition"] = disposition
    resp["X-Content-Type-Options"] = "nosniff"
    resp["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp
