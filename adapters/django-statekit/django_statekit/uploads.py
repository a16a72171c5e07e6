"""Uploads held to the blob storage's ``max_size`` before Django reads them.

Django's upload handlers write a whole multipart file to memory or to a temporary
file before a view runs (``FILE_UPLOAD_MAX_MEMORY_SIZE`` only chooses which, and
``DATA_UPLOAD_MAX_MEMORY_SIZE`` leaves files out); :class:`~django_statekit.storage.BlobStorage`
then refuses a file past its ``max_size`` when it is saved, after a hostile 5 GB
upload has filled the temporary disk. Add the middleware, before
``CsrfViewMiddleware`` (which reads the form of a ``POST``)::

    MIDDLEWARE = [
        "django_statekit.uploads.BlobUploadLimitMiddleware",
        ...,
        "django.middleware.csrf.CsrfViewMiddleware",
        ...,
    ]

It answers ``413`` as Flask's and Starlette's ``save_upload`` do: a multipart
``POST`` whose ``Content-Length`` passes the limit plus ``STATEKIT_BLOBS_FORM_OVERHEAD``
(64 KiB by default, for the form's framing and other fields) before a byte of it is
read; otherwise a file part that passes the limit as soon as it does (Django's
own handlers get at most the limit, and the rest is not read). The limit is the
largest ``max_size`` of the ``BlobStorage`` storages in ``STORAGES`` (a file none of
them accepts); ``save()`` still holds each file to its own storage's. With a
storage without a limit, or none, the middleware does nothing.

It parses the form of every multipart ``POST`` itself, as ``CsrfViewMiddleware``
does: a view that sets its own ``request.upload_handlers`` must be
``csrf_exempt`` already, and must be left out of this middleware too. Under ASGI,
Django reads the whole body before any middleware runs (``ASGIHandler.read_body``
spools it): limit the body's size in the server or proxy in front of it.

:class:`BlobUploadHandler` does the counting; listed first in
``FILE_UPLOAD_HANDLERS`` without the middleware, it still stops the reading, and
Django answers its error 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core.files.storage import storages
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.module_loading import import_string

from statekit.blobs.protocol import FORM_OVERHEAD
from statekit.config import parse_size
from statekit.errors import BlobTooLarge

from .conf import get_setting

__all__ = ["DEFAULT_FORM_OVERHEAD", "BlobUploadHandler", "BlobUploadLimitMiddleware", "UploadTooLarge",
           "upload_limit"]

#: bytes a request may hold beyond the file limit (the multipart framing, other fields)
DEFAULT_FORM_OVERHEAD = FORM_OVERHEAD  # one default for the three adapters


class UploadTooLarge(BlobTooLarge, MultiPartParserError):
    """A multipart upload passed the blob storage's limit; the rest was not read.
    :class:`BlobUploadLimitMiddleware` answers it 413; Django alone answers a
    ``MultiPartParserError`` 400."""


def upload_limit() -> int | None:
    """The largest ``max_size`` of the ``BlobStorage`` storages in ``STORAGES``;
    ``None`` when one of them has no limit, or there is none."""
    from .storage import BlobStorage

    limits = []
    for alias, config in getattr(django_settings, "STORAGES", {}).items():
        backend = config.get("BACKEND")
        if not isinstance(backend, str) or not issubclass(import_string(backend), BlobStorage):
            continue  # not made here: others may need settings this request does not (STATIC_URL)
        storage = storages[alias]
        if isinstance(storage, BlobStorage):
            limit = storage.limit
            if limit is None:
                return None
            limits.append(limit)
    return max(limits) if limits else None


def _form_overhead() -> int:
    """``STATEKIT_BLOBS_FORM_OVERHEAD`` as a size. :raises ConfigError: it is none."""
    return parse_size(get_setting("STATEKIT_BLOBS_FORM_OVERHEAD", DEFAULT_FORM_OVERHEAD),
                      name="STATEKIT_BLOBS_FORM_OVERHEAD")


class BlobUploadHandler(FileUploadHandler):
    """Stops the reading of a multipart body (:class:`UploadTooLarge`) whose
    ``Content-Length`` passes *limit* plus the form overhead, or a file part of
    which passes *limit*, before the handlers after it (Django's, which spool) get
    a byte past it. By default *limit* is :func:`upload_limit` and the overhead
    ``STATEKIT_BLOBS_FORM_OVERHEAD``."""

    def __init__(self, request: HttpRequest | None = None, *, limit: int | None = None,
                 overhead: int | None = None) -> None:
        super().__init__(request)
        self.limit = upload_limit() if limit is None else limit
        self.overhead = _form_overhead() if overhead is None else overhead
        self.received = 0

    def handle_raw_input(self, input_data: Any, META: Any, content_length: int, boundary: Any,
                         encoding: str | None = None) -> None:
        if self.limit is not None and content_length > self.limit + self.overhead:
            raise UploadTooLarge(f"upload larger than {self.limit} bytes")

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.limit is not None and self.received > self.limit:
            raise UploadTooLarge(f"upload larger than {self.limit} bytes")
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the handlers after this one make the file


class BlobUploadLimitMiddleware:
    """Answers 413 to a multipart ``POST`` past the blob storage's limit, reading
    none of it or stopping at the limit; see the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.overhead = _form_overhead()  # a setting that is no size fails at start

    def __call__(self, request: HttpRequest) -> Any:
        if request.method != "POST" or request.content_type != "multipart/form-data" \
                or hasattr(request, "_files"):
            return self.get_response(request)
        limit = upload_limit()
        if limit is None:
            return self.get_response(request)
        handler = BlobUploadHandler(request, limit=limit, overhead=self.overhead)
        try:
            handler.handle_raw_input(None, request.META, _content_length(request), None)
            request.upload_handlers.insert(0, handler)
            request.FILES  # noqa: B018 - parsed here, held to the limit as it is read
        except UploadTooLarge as e:
            return HttpResponse(str(e), status=413, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
