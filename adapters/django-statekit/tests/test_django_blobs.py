"""Django: BlobStorage in STORAGES; FileField save/open/url/delete/exists/size, no overwrite."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tests_django_urls
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.test import Client
from django.urls import path
from hypothesis import given, settings
from hypothesis import strategies as st

from django_statekit.storage import BlobStorage, serve_blob
from statekit.blobs import BlobStore
from statekit.errors import BlobTooLarge, ContentTypeMismatch
from statekit.phoenix import make_png

HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"


def png() -> bytes:
    """A valid 1x1 PNG (the same bytes on every call)."""
    return make_png(random.Random(0), 1, 1)


tests_django_urls.urlpatterns.append(path("_statekit/blobs/<path:key>", serve_blob, name="statekit_blob"))


class StatekitBlobDocument(models.Model):
    file = models.FileField(upload_to="docs/", storage=BlobStorage("memory://placeholder"))

    class Meta:
        app_label = "django_statekit"


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, django_settings: Any, tmp_path: Any) -> Iterator[BlobStorage]:
    if request.param == "memory":
        url = "memory://django"
    elif request.param == "file":
        url = f"file://{tmp_path}/media?create=1"
    else:
        url = request.getfixturevalue("s3_url")
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage",
                    "OPTIONS": {"url": url, "max_size": 4096}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    })
    from django.core.files.storage import default_storage, storages

    s = storages["default"]
    assert isinstance(s, BlobStorage) and default_storage.exists("nothing/here.png") is False
    StatekitBlobDocument._meta.get_field("file").storage = s  # type: ignore[attr-defined]
    yield s


def test_storage_api(storage: BlobStorage) -> None:
    key = storage.save("avatars/My Photo.png", SimpleUploadedFile("My Photo.png", png(), "image/png"))
    assert key.startswith("avatars/") and key.endswith(".png") and "Photo" not in key
    assert storage.exists(key) and storage.size(key) == len(png())
    with storage.open(key) as f:
        assert f.read() == png()
    assert storage.store.stat(key).filename == "My Photo.png"
    assert storage.url(key)
    assert storage.listdir("avatars") == ([], [key.split("/")[1]])  # upload_to is the directory
    assert storage.get_modified_time(key) is not None
    storage.delete(key)
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        storage.open(key)


def test_no_silent_overwrite(storage: BlobStorage) -> None:
    first = storage.save("docs/report.txt", ContentFile(b"version one\n"))
    second = storage.save("docs/report.txt", ContentFile(b"version two\n"))
    assert first != second
    with storage.open(first) as f:
        assert f.read() == b"version one\n"
    with storage.open(second) as f:
        assert f.read() == b"version two\n"
    with pytest.raises(ValueError):
        storage.open(first, "wb")


def test_file_field_round_trip(storage: BlobStorage) -> None:
    doc = StatekitBlobDocument()
    doc.file.save("scan.png", ContentFile(png()), save=False)
    name = doc.file.name
    assert name is not None and name.startswith("docs/") and name.endswith(".png")
    assert doc.file.size == len(png())
    doc.file.open("rb")
    assert doc.file.read() == png()
    doc.file.close()
    assert doc.file.url
    doc.file.delete(save=False)
    assert not storage.exists(name)


def test_refusals_store_nothing(storage: BlobStorage) -> None:
    with pytest.raises(ContentTypeMismatch):
        storage.save("docs/photo.png", SimpleUploadedFile("photo.png", HTML, "image/png"))
    with pytest.raises(BlobTooLarge):
        storage.save("docs/big.bin", ContentFile(b"\0" * 5000))
    with pytest.raises(SuspiciousFileOperation):
        storage.save("../../etc/passwd", ContentFile(b"x"))
    with pytest.raises(SuspiciousFileOperation):
        storage.save("/etc/passwd", ContentFile(b"x"))
    with pytest.raises(SuspiciousFileOperation):
        storage.size("../../etc/passwd")
    store: BlobStore = storage.store
    assert list(store.list()) == []


def test_url_serves_the_file(storage: BlobStorage) -> None:
    name = "r\u00e9sum\u00e9.png"
    key = storage.save(f"docs/{name}", SimpleUploadedFile(name, png(), "image/png"))
    url = storage.url(key)
    if url.startswith("http"):  # S3: presigned
        import requests

        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and resp.content == png()
        return
    client = Client()
    resp = client.get(url)
    assert resp.status_code == 200 and b"".join(resp.streaming_content) == png()  # type: ignore[attr-defined]
    resp.close()
    assert resp["Content-Type"] == "image/png" and resp["X-Content-Type-Options"] == "nosniff"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.png" in resp["Content-Disposition"]
    assert client.get(url.replace("signature=", "signature=x")).status_code == 403
    assert client.get(url.replace("expires=", "expires=1")).status_code == 403
    assert client.get("/_statekit/blobs/2020/01/01/" + "0" * 32 + ".png").status_code == 403


def test_times_follow_use_tz_like_every_django_storage(storage: BlobStorage, django_settings: Any) -> None:
    import datetime as dt

    from django.utils import timezone

    key = storage.save("docs/when.txt", ContentFile(b"timestamped\n"))
    aware = storage.get_modified_time(key)
    assert timezone.is_aware(aware)
    django_settings.set(USE_TZ=False, TIME_ZONE="Europe/Paris")
    times = [storage.get_modified_time(key), storage.get_created_time(key), storage.get_accessed_time(key)]
    for naive in times:
        assert timezone.is_naive(naive)  # what the Storage API promises with USE_TZ = False
        assert naive == timezone.make_naive(aware)
        assert naive <= dt.datetime.now()  # comparable with Django's own naive datetimes (no TypeError)


def test_s3_outage_is_a_generic_503_logged_once(django_settings: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """S3 unreachable (a closed loopback port): uploads in a view answer 503 with a
    page naming no endpoint, bucket or key; the log has them, once."""
    import socket

    from django.http import HttpRequest, HttpResponse

    from django_statekit.middleware import UNAVAILABLE_PAGE
    from statekit.lifecycle import outages

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = (f"s3://AKIDTEST:sekrit@hidden-bucket/private-prefix?endpoint_url=http://127.0.0.1:{port}"
           "&retries=0&connect_timeout=0.5&region=us-east-1")
    django_settings.set(
        STORAGES={"default": {"BACKEND": "django_statekit.storage.BlobStorage", "OPTIONS": {"url": url}},
                  "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
        MIDDLEWARE=["django_statekit.middleware.SessionOutageMiddleware"])
    outages.reset()

    def v_upload(request: HttpRequest) -> HttpResponse:
        from django.core.files.storage import default_storage

        return HttpResponse(default_storage.save("avatars/me.png", ContentFile(png(), name="me.png")))

    tests_django_urls.urlpatterns.append(path("blobs/upload-outage", v_upload))
    caplog.set_level("WARNING")
    try:
        client = Client(raise_request_exception=False)
        for resp in (client.get("/blobs/upload-outage"), client.get("/blobs/upload-outage")):
            assert resp.status_code == 503 and resp["Retry-After"]
            body = resp.content.decode()
            assert body == UNAVAILABLE_PAGE
            for detail in (str(port), "127.0.0.1", "hidden-bucket", "private-prefix", "avatars", "sekrit"):
                assert detail not in body
    finally:
        tests_django_urls.urlpatterns.pop()
    lines = [r for r in caplog.records if r.name == "statekit.outage"]
    assert len(lines) == 1 and "hidden-bucket" in lines[0].getMessage() and str(port) in lines[0].getMessage()
    assert [r for r in caplog.records if r.exc_info or r.name == "django.request"] == []


def test_serve_blob_with_the_volume_gone_is_a_generic_503(django_settings: Any, tmp_path: Path) -> None:
    import shutil

    from django_statekit.middleware import UNAVAILABLE_PAGE

    root = tmp_path / "volume"
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage",
                    "OPTIONS": {"url": f"file://{root}?create=1"}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}})
    from django.core.files.storage import storages

    storage = storages["default"]
    assert isinstance(storage, BlobStorage)
    key = storage.save("docs/a.txt", ContentFile(b"hello\n"))
    link = storage.url(key)
    served = Client().get(link)
    assert served.status_code == 200 and b"".join(served.streaming_content) == b"hello\n"
    served.close()
    shutil.rmtree(root)  # the shared volume is unmounted
    resp = Client(raise_request_exception=False).get(link)
    assert resp.status_code == 503 and resp.content.decode() == UNAVAILABLE_PAGE
    assert str(root) not in resp.content.decode() and key not in resp.content.decode()


# --- issue 16: what Django's own storages accept ------------------------------------

def test_text_content_is_stored_utf8(storage: BlobStorage, tmp_path: Path) -> None:
    """``ContentFile("...")``, a ``StringIO`` and a text-mode file raised ``TypeError:
    input yielded str, not bytes``; Django's storages write them UTF-8 encoded."""
    import io

    text_file = tmp_path / "notes.txt"
    text_file.write_text("from a text-mode file \u00e9\n", encoding="utf-8")
    with open(text_file, encoding="utf-8") as opened:
        contents = [ContentFile("hello \u00e9\n"), io.StringIO("from a StringIO\n"), opened]
        keys = [storage.save(f"docs/{n}.txt", c) for n, c in zip("abc", contents, strict=True)]
    expected = ["hello \u00e9\n", "from a StringIO\n", "from a text-mode file \u00e9\n"]
    for key, text in zip(keys, expected, strict=True):
        with storage.open(key) as f:
            assert f.read() == text.encode("utf-8")
        assert storage.size(key) == len(text.encode("utf-8"))
        with storage.open(key, "r") as f:  # text mode reads text, as with Django's storages
            assert f.read() == text


def test_file_field_reopens_after_close(storage: BlobStorage) -> None:
    """``FieldFile.open()`` on a file closed by a ``with`` block raised "The file
    cannot be reopened" (Django's File looked for a local path)."""
    doc = StatekitBlobDocument()
    doc.file.save("scan.png", ContentFile(png()), save=False)
    with doc.file.open("rb") as f:
        assert f.read() == png()
    assert doc.file.closed
    doc.file.open()
    assert doc.file.read() == png()
    doc.file.seek(0)
    assert doc.file.read(4) == png()[:4]
    doc.file.close()


def test_path_objects_and_relative_names(storage: BlobStorage) -> None:
    """``exists(Path(key))`` was False for a stored blob and ``listdir(Path(...))``
    raised AttributeError; ``listdir("./docs")`` was an InvalidKey."""
    from pathlib import PurePosixPath

    key = storage.save("docs/inner/p.png", ContentFile(png()))  # upload_to: the key's directory
    directory, base = key.rsplit("/", 1)
    assert storage.exists(PurePosixPath(key)) and storage.exists(f"./{key}")
    assert storage.size(PurePosixPath(key)) == len(png())
    with storage.open(PurePosixPath(key)) as f:
        assert f.read() == png()
    assert storage.listdir(PurePosixPath(directory)) == ([], [base])
    assert storage.listdir(f"./{directory}/.") == ([], [base])
    assert storage.listdir(PurePosixPath("docs"))[0] == [directory.split("/")[1]]
    assert storage.url(PurePosixPath(key))


@pytest.mark.parametrize("name", ["..", "../x", "docs/../../x", "/etc/passwd"])
def test_names_outside_the_storage_are_suspicious(storage: BlobStorage, name: str) -> None:
    """``exists("..")`` was False; Django's storages raise SuspiciousFileOperation."""
    for call in (storage.exists, storage.listdir, storage.size, storage.open, storage.url, storage.delete):
        with pytest.raises(SuspiciousFileOperation):
            call(name)
    assert storage.exists("docs/.hidden") is False  # a name no key can have is simply absent


def test_url_of_a_missing_file_is_a_link_not_an_error(storage: BlobStorage) -> None:
    """On file:// ``url()`` of a missing blob raised BlobNotFound, so a template's
    ``{{ obj.file.url }}`` was a 500; s3:// and Django's storages return a URL."""
    from django.template import Context, Template

    missing = "docs/2026/01/01/" + "0" * 32 + ".png"
    doc = StatekitBlobDocument(file=missing)
    rendered = Template("{{ doc.file.url }}").render(Context({"doc": doc}))
    assert rendered and rendered == Template("{{ url }}").render(Context({"url": storage.url(missing)}))
    if storage.store.scheme == "s3":
        import requests

        assert requests.get(storage.url(missing), timeout=10).status_code == 404
    else:
        assert Client().get(storage.url(missing)).status_code == 404


def test_compressed_and_application_named_text_uploads(storage: BlobStorage) -> None:
    """``.tar.gz`` / ``.csv.gz`` were refused (the name's guess dropped ``.gz``),
    ``application/gzip`` was not accepted, and ``schema.sql`` sent as octet-stream
    was refused as ``application/sql``."""
    import gzip

    data = gzip.compress(b"id,name\n1,a\n", mtime=0)
    uploads = [ContentFile(data), SimpleUploadedFile("export.csv.gz", data, "application/gzip"),
               SimpleUploadedFile("backup.tar.gz", data, "application/x-gzip"),
               SimpleUploadedFile("backup.tar.gz", data, "application/octet-stream")]
    for upload in uploads:
        key = storage.save("exports/backup.tar.gz", upload)
        assert key.endswith(".gz") and storage.store.stat(key).content_type == "application/gzip"
        with storage.open(key) as f:
            assert f.read() == data
    sql = SimpleUploadedFile("schema.sql", b"CREATE TABLE t (id int);\n", "application/octet-stream")
    key = storage.save("exports/schema.sql", sql)
    assert storage.store.stat(key).content_type == "text/plain"
    for disguised in (SimpleUploadedFile("backup.tar.gz", HTML, "application/gzip"),
                      SimpleUploadedFile("schema.sql", HTML, "application/octet-stream"),
                      ContentFile(HTML.decode())):
        with pytest.raises(ContentTypeMismatch):
            storage.save("exports/backup.tar.gz" if disguised.name is None else f"exports/{disguised.name}",
                         disguised)


def test_naive_times_are_local_time_whatever_zone_is_active(
    storage: BlobStorage, django_settings: Any,
) -> None:
    """With ``USE_TZ = False`` the time was made naive in the zone a
    ``timezone.override()`` activated (6 h off Django's own test, which expects the
    process's local time, as FileSystemStorage gives)."""
    import datetime as dt

    from django.utils import timezone

    key = storage.save("docs/when.txt", ContentFile(b"timestamped\n"))
    stored = storage.store.stat(key).created
    assert stored is not None
    django_settings.set(USE_TZ=False, TIME_ZONE="Africa/Algiers")
    with timezone.override(timezone.get_fixed_timezone(-300)):
        naive = storage.get_modified_time(key)
    assert timezone.is_naive(naive) and naive == dt.datetime.fromtimestamp(stored.timestamp())
    django_settings.set(USE_TZ=True)
    with timezone.override(timezone.get_fixed_timezone(-300)):
        aware = storage.get_modified_time(key)
    assert aware == stored and aware.utcoffset() == dt.timedelta(0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "", "a", "b.png", "docs", "..a", "a..", " "]), min_size=1,
                max_size=6).map("/".join),
       st.sampled_from(["", "/", "./"]))
def test_name_normalisation_never_leaves_the_storage(name: str, lead: str) -> None:
    """Property: a name is either refused as suspicious or normalised to a relative
    key that, joined to any root, stays inside it (the ``./``/``Path`` relaxation)."""
    import posixpath

    from django_statekit.storage import _clean

    try:
        clean = _clean(lead + name)
    except SuspiciousFileOperation:
        assert (lead + name).startswith("/") or ".." in (lead + name).split("/")
        return
    inside = posixpath.normpath(posixpath.join("/root", clean))
    assert inside == "/root" or inside.startswith("/root/")
    assert not clean.startswith("/") and ".." not in clean.split("/") and "." not in clean.split("/")
