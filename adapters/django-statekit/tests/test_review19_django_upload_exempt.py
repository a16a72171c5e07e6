"""Review 19: ``BlobUploadLimitMiddleware`` leaves out a view marked
:func:`~django_statekit.uploads.upload_limit_exempt`, as ``CsrfViewMiddleware``
leaves out a ``csrf_exempt`` one.

The middleware parsed ``request.FILES`` of every multipart ``POST`` in its
``__call__``, before the view was known: a ``csrf_exempt`` view that reads the raw
body (a webhook checking a signature over the bytes, a proxy to another service) got
Django's ``RawPostDataException`` (a 500), and no view could be left out. The form is
now parsed in ``process_view`` (still before ``CsrfViewMiddleware``'s, which reads
``request.POST``), for views not marked exempt; a ``Content-Length`` past the limit is
still answered 413 before a byte is read, unless the view the path resolves to is
exempt.

Requests go through Django's real WSGI handler with the body of review 18's tests
(produced as it is read, counting what Django takes)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import tests_django_urls
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.urls import clear_url_caches, path
from django.utils.decorators import decorator_from_middleware
from django.views.decorators.csrf import csrf_exempt
from test_review18_django_upload_limit import BOUNDARY, LIMIT, MiB, _Body, spool  # noqa: F401 -- the fixture

from django_statekit.uploads import BlobUploadLimitMiddleware, upload_limit_exempt
from statekit.blobs import BlobStore

_MIDDLEWARE = ["django_statekit.uploads.BlobUploadLimitMiddleware",
               "django.contrib.sessions.middleware.SessionMiddleware",
               "django.middleware.csrf.CsrfViewMiddleware",
               "django.contrib.auth.middleware.AuthenticationMiddleware"]


@upload_limit_exempt
@csrf_exempt
def _raw(request: HttpRequest) -> HttpResponse:
    """A webhook or proxy: reads the multipart body as bytes."""
    return HttpResponse(f"{len(request.body)} {request.body[:2].decode()}")


@upload_limit_exempt
@csrf_exempt
def _own_parse(request: HttpRequest) -> HttpResponse:
    """An exempt view that parses the form itself, under its own rules."""
    return HttpResponse(str(request.FILES["file"].size))


@csrf_exempt
def _limited(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.FILES["file"].size))


def _protected(request: HttpRequest) -> HttpResponse:  # CSRF-protected: Django reads request.POST
    return HttpResponse(str(request.FILES["file"].size))


@upload_limit_exempt
@csrf_exempt
async def _async_raw(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(len(request.body)))


_per_view = decorator_from_middleware(BlobUploadLimitMiddleware)


@csrf_exempt
@_per_view
def _decorated(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.FILES["file"].size))


tests_django_urls.urlpatterns += [path("review19/raw", _raw), path("review19/own", _own_parse),
                                  path("review19/limited", _limited), path("review19/protected", _protected),
                                  path("review19/async", _async_raw), path("review19/decorated", _decorated)]
clear_url_caches()


@pytest.fixture
def store() -> BlobStore:
    """The storage's store (review 18's *spool* takes it): the middleware reads none of
    it but its limit (review 18 runs the limit on every backend)."""
    return BlobStore(f"memory://review19-{uuid.uuid4().hex}")


@pytest.fixture
def csrf_spool(spool: Path, django_settings: Any) -> Path:  # noqa: F811 - the fixture
    """Review 18's set-up (a BlobStorage of *store* limited to :data:`LIMIT`, the
    directory Django spools to), with ``CsrfViewMiddleware``."""
    django_settings.set(MIDDLEWARE=_MIDDLEWARE)
    return spool


def _post(body: _Body, where: str) -> tuple[int, bytes]:
    """POST *body* to /review19/*where* through Django's WSGI handler."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/review19/{where}", "SERVER_NAME": "testserver",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BufferedReader(body),
               "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", "CONTENT_LENGTH": str(body.total)}
    statuses: list[str] = []
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: statuses.append(status))
    content = b"".join(response)
    response.close()
    return int(statuses[0].split()[0]), content


def test_an_exempt_view_reads_the_raw_body(csrf_spool: Path) -> None:
    """Failed before: 500, ``RawPostDataException`` ("You cannot access body after
    reading from request's data stream"): the middleware had parsed the form."""
    body = _Body(1000)
    status, content = _post(body, "raw")
    assert status == 200, content
    assert content == f"{body.total} --".encode()


def test_an_exempt_view_takes_a_body_past_the_limit(csrf_spool: Path) -> None:
    """Left out means left out: a proxy may forward more than the storage keeps; the
    ``Content-Length`` check does not refuse it either."""
    body = _Body(LIMIT + MiB)
    status, content = _post(body, "raw")
    assert status == 200, content
    assert content == f"{body.total} --".encode() and body.served == body.total


def test_an_exempt_view_parses_the_form_without_the_limit(csrf_spool: Path) -> None:
    body = _Body(LIMIT + 1)
    status, content = _post(body, "own")
    assert (status, content) == (200, str(LIMIT + 1).encode())


def test_an_exempt_async_view_reads_the_raw_body(csrf_spool: Path) -> None:
    body = _Body(1000)
    assert _post(body, "async") == (200, str(body.total).encode())


def test_upload_limit_exempt_keeps_the_view(csrf_spool: Path) -> None:
    assert _raw.__name__ == "_raw" and getattr(_raw, "csrf_exempt", False)
    assert getattr(_raw, "upload_limit_exempt", False) is True
    assert getattr(_limited, "upload_limit_exempt", False) is False


@pytest.mark.parametrize("where", ["limited", "protected", "decorated"])
def test_a_view_not_exempt_is_413_before_a_byte_is_read(csrf_spool: Path, store: BlobStore,
                                                       where: str) -> None:
    body = _Body(48 * MiB)
    status, content = _post(body, where)
    assert status == 413, content
    assert body.served == 0, f"Django read {body.served} bytes"
    assert list(csrf_spool.iterdir()) == [] and list(store.list()) == []


@pytest.mark.parametrize("where", ["limited", "protected", "decorated"])
def test_a_file_past_the_limit_stops_at_the_limit_for_a_view_not_exempt(csrf_spool: Path, where: str) -> None:
    """Within the form overhead the body is parsed with the limit's handler first,
    before ``CsrfViewMiddleware`` reads ``request.POST``: 413, not Django's 400 for a
    parse error nor CSRF's 403; nothing spooled."""
    body = _Body(LIMIT + 60 * 1024)
    status, content = _post(body, where)
    assert status == 413, content
    assert b"upload larger than 1048576 bytes" in content
    assert list(csrf_spool.iterdir()) == []


@pytest.mark.parametrize("where", ["limited", "decorated"])
def test_a_file_within_the_limit_reaches_a_view_not_exempt(csrf_spool: Path, where: str) -> None:
    body = _Body(LIMIT)
    assert _post(body, where) == (200, str(LIMIT).encode())


def test_the_middleware_called_directly_holds_the_view_to_the_limit(csrf_spool: Path) -> None:
    """``BlobUploadLimitMiddleware(view)(request)`` (no handler around it, so no
    ``process_view``; docs/migration.md calls it so): a ``Content-Length`` past the
    limit is 413, and so is a file past the limit in a body within it, which the
    view's own parse stops at the limit; a file within the limit reaches the view."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import RequestFactory

    limited = BlobUploadLimitMiddleware(_limited)
    request = RequestFactory().post("/review19/limited", b"x" * (LIMIT + 70 * 1024),
                                    content_type=f"multipart/form-data; boundary={BOUNDARY}")
    assert limited(request).status_code == 413
    for size, status in ((LIMIT + 1, 413), (LIMIT, 200)):
        upload = SimpleUploadedFile("a.bin", b"x" * size, "application/octet-stream")
        response = limited(RequestFactory().post("/review19/limited", {"file": upload}))
        assert response.status_code == status, response.content


class ReplacesHandlers:
    """A middleware after the limit's that sets the request's upload handlers anew
    (Django allows it until the form is parsed)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        from django.core.files.uploadhandler import MemoryFileUploadHandler

        request.upload_handlers = [MemoryFileUploadHandler(request)]
        return self.get_response(request)


def test_an_exempt_view_behind_a_middleware_that_replaced_the_handlers(csrf_spool: Path,
                                                                       django_settings: Any) -> None:
    """The limit's handler is gone from the list when ``process_view`` leaves the view
    out: nothing to remove (a ``ValueError`` from ``list.remove``, a 500)."""
    django_settings.set(MIDDLEWARE=[_MIDDLEWARE[0], f"{__name__}.ReplacesHandlers", *_MIDDLEWARE[1:]])
    body = _Body(1000)
    assert _post(body, "raw") == (200, f"{body.total} --".encode())
