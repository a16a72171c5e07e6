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
read; otherwise a file part that passes the limit as soon as it does (Django's own
handlers get at most the limit, and the rest is not read). The limit is the largest
``max_size`` of the ``BlobStorage`` storages in ``STORAGES`` (a file none of them
accepts); ``save()`` still holds each file to its own storage's. With a storage
without a limit, or none, the middleware does nothing.

It parses the form in ``process_view``, as ``CsrfViewMiddleware`` reads it in its own
(so listed before it, it runs first): a view decorated with
:func:`upload_limit_exempt` is left out, as ``csrf_exempt`` leaves a view out of
``CsrfViewMiddleware``. Such a view gets the body unread and unlimited: one that
reads ``request.body`` (a webhook checking a signature, a proxy to another service)
does not meet Django's ``RawPostDataException``, and one that parses the form itself
does so with ``FILE_UPLOAD_HANDLERS`` (or the ``request.upload_handlers`` it sets)::

    @upload_limit_exempt
    @csrf_exempt
    def webhook(request):
        verify(request.headers["X-Signature"], request.body)

A ``Content-Length`` past the limit is refused before Django resolves the URL (and
before the middleware after this one run), unless the view the path resolves to (in
``ROOT_URLCONF``, or the ``request.urlconf`` a middleware before this one set) is
exempt. Otherwise the limit's handler is installed from the start, so a form parsed
before ``process_view`` (by a middleware after this one) stops at the limit too
(Django answers that one 400), and a view this middleware is called with directly
(``BlobUploadLimitMiddleware(view)(request)``) is held to it when it reads
``request.FILES``. Under ASGI, Django reads the whole body before any middleware
runs (``ASGIHandler.read_body`` spools it): limit the body's size in the server or
proxy in front of it.

``decorator_from_middleware(BlobUploadLimitMiddleware)`` holds one view to the limit
without the middleware in ``MIDDLEWARE``. :class:`BlobUploadHandler` does the
counting; listed first in ``FILE_UPLOAD_HANDLERS`` without the middleware, it still
stops the reading, and Django answers its error 400.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.conf import settings as django_settings
from django.core.files.storage import storages
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from statekit.blobs.protocol import FORM_OVERHEAD
from statekit.config import parse_size
from statekit.errors import BlobTooLarge

from .conf import get_setting

__all__ = ["DEFAULT_FORM_OVERHEAD", "BlobUploadHandler", "BlobUploadLimitMiddleware", "UploadTooLarge",
           "upload_limit", "upload_limit_exempt"]

_View = TypeVar("_View", bound=Callable[..., Any])

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


def upload_limit_exempt(view_func: _View) -> _View:
    """Leave *view_func* out of :class:`BlobUploadLimitMiddleware`, as ``csrf_exempt``
    leaves a view out of ``CsrfViewMiddleware``: its multipart body is neither
    parsed nor limited before it runs (sync or async views; a new function, marked
    ``upload_limit_exempt = True``)."""
    if iscoroutinefunction(view_func):
        async def _view_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            return await view_func(request, *args, **kwargs)
    else:
        def _view_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return view_func(request, *args, **kwargs)
    _view_wrapper.upload_limit_exempt = True  # type: ignore[attr-defined]
    return wraps(view_func)(_view_wrapper)  # type: ignore[return-value]


class BlobUploadLimitMiddleware:
    """Answers 413 to a multipart ``POST`` past the blob storage's limit, reading
    none of it or stopping at the limit, except for views marked
    :func:`upload_limit_exempt`; see the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.overhead = _form_overhead()  # a setting that is no size fails at start

    def __call__(self, request: HttpRequest) -> Any:
        """A ``Content-Length`` past the limit: 413 unless the path's view is exempt.
        Otherwise the limit's handler is installed, so whatever parses the form
        first (this middleware's :meth:`process_view`, else what runs before it)
        stops at the limit."""
        handler = self._handler(request)
        if handler is None:
            return self.get_response(request)
        try:
            handler.handle_raw_input(None, request.META, _content_length(request), None)
        except UploadTooLarge as e:
            if _exempt(_resolved_view(request)):
                return self.get_response(request)
            return _too_large(e)
        request.upload_handlers.insert(0, handler)
        request._statekit_upload_limit = handler  # type: ignore[attr-defined]
        try:
            return self.get_response(request)
        except UploadTooLarge as e:  # the view called directly (no handler around it) parsed the form
            return _too_large(e)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any,
                     view_kwargs: Any) -> HttpResponse | None:
        """Parse the form of a view not exempt, held to the limit as it is read; leave
        an exempt view's body unread and unlimited."""
        installed: BlobUploadHandler | None = getattr(request, "_statekit_upload_limit", None)
        if hasattr(request, "_files"):
            return None
        if _exempt(view_func):
            if installed is not None and installed in request.upload_handlers:  # a middleware may set it anew
                request.upload_handlers.remove(installed)
            return None
        handler = installed or self._handler(request)
        if handler is None:
            return None
        try:
            if installed is None:  # decorator_from_middleware: no __call__
                request.upload_handlers.insert(0, handler)
            request.FILES  # noqa: B018 - parsed here, held to the limit as it is read
        except UploadTooLarge as e:
            return _too_large(e)
        return None

    def _handler(self, request: HttpRequest) -> BlobUploadHandler | None:
        """The limit's handler for a multipart ``POST`` not parsed yet, else ``None``
        (nothing to hold, or no limit)."""
        if request.method != "POST" or request.content_type != "multipart/form-data" \
                or hasattr(request, "_files"):
            return None
        limit = upload_limit()
        return None if limit is None else BlobUploadHandler(request, limit=limit, overhead=self.overhead)


def _exempt(view_func: Callable[..., Any] | None) -> bool:
    return bool(getattr(view_func, "upload_limit_exempt", False))


def _resolved_view(request: HttpRequest) -> Callable[..., Any] | None:
    """The view Django will resolve *request*'s path to (the URLconf in force now),
    or ``None``."""
    try:
        return resolve(request.path_info, getattr(request, "urlconf", None)).func
    except Resolver404:
        return None


def _too_large(error: UploadTooLarge) -> HttpResponse:
    return HttpResponse(str(error), status=413, content_type="text/plain; charset=utf-8")


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
