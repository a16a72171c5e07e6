"""Review 18: a Django upload larger than the blob storage's ``max_size`` is answered
413 before Django reads (and spools) it, as Flask's ``save_upload`` and Starlette's
answer it, by ``django_statekit.uploads.BlobUploadLimitMiddleware``.

Without it Django's upload handlers write a whole multipart file to memory or a
temporary file (``FILE_UPLOAD_MAX_MEMORY_SIZE`` only chooses which;
``DATA_UPLOAD_MAX_MEMORY_SIZE`` leaves files out) before the view's ``save()``
holds it to ``max_size``: a 48 MiB body against a 1 MiB limit was read whole (every
byte of ``wsgi.input``, spooled to ``FILE_UPLOAD_TEMP_DIR``) and then the save's
``BlobTooLarge`` was a 500.

Requests go through Django's real WSGI handler, their body read lazily from a
stream that counts what Django takes from it (never built in memory)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import tests_django_urls
from django.core.files.storage import default_storage
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.urls import path
from test_review17_limits_django_storage import store  # noqa: F401 -- memory://, file://, s3://

from django_statekit.uploads import BlobUploadLimitMiddleware, UploadTooLarge
from statekit.blobs import BlobStore
from statekit.errors import BlobTooLarge, ConfigError

MiB = 1024 * 1024
LIMIT = MiB
BOUNDARY = "review18boundary"


class _Body(io.RawIOBase):
    """A multipart body of one file of *size* bytes (and a text field), produced as it
    is read; ``served`` counts the bytes read."""

    def __init__(self, size: int) -> None:
        self.head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhi\r\n"
                     f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                     "filename=\"big.bin\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.size, self.total, self.served = size, len(self.head) + size + len(self.tail), 0

    def readable(self) -> bool:
        return True

    def _byte(self, pos: int, n: int) -> bytes:
        out = bytearray()
        while n and pos < self.total:
            if pos < len(self.head):
                piece = self.head[pos:pos + n]
            elif pos < len(self.head) + self.size:
                piece = b"x" * min(n, len(self.head) + self.size - pos)
            else:
                piece = self.tail[pos - len(self.head) - self.size:][:n]
            out += piece
            pos, n = pos + len(piece), n - len(piece)
        return bytes(out)

    def readinto(self, b: Any) -> int:
        data = self._byte(self.served, len(b))
        b[:len(data)] = data
        self.served += len(data)
        return len(data)


def _upload(request: HttpRequest) -> HttpResponse:
    f = request.FILES["file"]
    return HttpResponse(default_storage.save("up/" + f.name, f))


tests_django_urls.urlpatterns.append(path("review18/upload", _upload))

_MIDDLEWARE = ["django_statekit.uploads.BlobUploadLimitMiddleware",
               "django.contrib.sessions.middleware.SessionMiddleware",
               "django.contrib.auth.middleware.AuthenticationMiddleware"]


@pytest.fixture
def spool(django_settings: Any, store: BlobStore, tmp_path: Path) -> Path:  # noqa: F811 - the fixture
    """Django set up with a BlobStorage of *store* limited to :data:`LIMIT`, and the
    directory its upload handlers spool to (empty)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    django_settings.set(
        STORAGES={"default": {"BACKEND": "django_statekit.storage.BlobStorage",
                              "OPTIONS": {"store": store, "max_size": LIMIT}},
                  "staticfiles": {"BACKEND": "django.core.files.storage.InMemoryStorage"}},
        MIDDLEWARE=_MIDDLEWARE, FILE_UPLOAD_TEMP_DIR=str(spool))
    return spool


def _post(body: _Body, *, length: int | None = None) -> tuple[int, bytes]:
    """POST *body* to the upload view through Django's WSGI handler: status, content."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/review18/upload", "SERVER_NAME": "testserver",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BufferedReader(body),
               "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
               "CONTENT_LENGTH": str(body.total if length is None else length)}
    statuses: list[str] = []
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: statuses.append(status))
    content = b"".join(response)
    response.close()
    return int(statuses[0].split()[0]), content


def _spooled(spool: Path) -> list[str]:
    return [p.name for p in spool.iterdir()]


def test_a_body_past_the_limit_is_413_before_a_byte_is_read(
        spool: Path, store: BlobStore) -> None:  # noqa: F811 - the fixture
    body = _Body(48 * MiB)
    status, content = _post(body)
    assert status == 413, content
    assert b"upload larger than 1048576 bytes" in content
    assert body.served == 0, f"Django read {body.served} bytes"
    assert _spooled(spool) == [] and list(store.list()) == []


class CountingHandler(MemoryFileUploadHandler):
    """Django's in-memory handler, counting the file bytes it is given."""

    received: list[int] = []

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        self.activated = True  # in memory whatever the size: what it gets is what it keeps

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        CountingHandler.received.append(len(raw_data))
        return super().receive_data_chunk(raw_data, start)


def test_a_file_past_the_limit_in_a_small_enough_body_stops_at_the_limit(
        spool: Path, store: BlobStore, django_settings: Any) -> None:  # noqa: F811 - the fixture
    """Within the form overhead (64 KiB) the body may be read (Django's parser reads
    ahead), but the file part stops at the limit: the handlers after the limit's get
    at most the limit, and nothing is stored."""
    django_settings.set(FILE_UPLOAD_HANDLERS=[f"{__name__}.CountingHandler"])
    CountingHandler.received = []
    body = _Body(LIMIT + 60 * 1024)
    status, content = _post(body)
    assert status == 413, content
    assert CountingHandler.received and sum(CountingHandler.received) <= LIMIT
    assert list(store.list()) == []


def test_a_file_within_the_limit_is_stored(spool: Path, store: BlobStore) -> None:  # noqa: F811 - the fixture
    body = _Body(LIMIT)
    status, content = _post(body)
    assert status == 200, content
    assert store.stat(content.decode()).size == LIMIT
    assert body.served == body.total


def test_the_handler_alone_is_a_400_not_a_spooled_file(spool: Path, django_settings: Any,
                                                       store: BlobStore) -> None:  # noqa: F811 - the fixture
    """``BlobUploadHandler`` in ``FILE_UPLOAD_HANDLERS`` without the middleware still
    stops reading; Django answers its ``MultiPartParserError`` 400 (the middleware
    is what makes it 413); the error is a ``BlobTooLarge`` too, for a view's own
    handling."""
    django_settings.set(MIDDLEWARE=_MIDDLEWARE[1:], FILE_UPLOAD_HANDLERS=[
        "django_statekit.uploads.BlobUploadHandler",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler"])
    body = _Body(48 * MiB)
    status, _ = _post(body)
    assert status == 400
    assert body.served == 0 and _spooled(spool) == [] and list(store.list()) == []
    assert issubclass(UploadTooLarge, BlobTooLarge)


def test_a_form_overhead_that_is_no_size_refuses_to_start(django_settings: Any) -> None:
    django_settings.set(STATEKIT_BLOBS_FORM_OVERHEAD="lots")
    with pytest.raises(ConfigError, match="STATEKIT_BLOBS_FORM_OVERHEAD"):
        BlobUploadLimitMiddleware(lambda request: HttpResponse())
