"""Django: BlobStorage in STORAGES; FileField save/open/url/delete/exists/size, no overwrite."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import tests_django_urls
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models
from django.test import Client
from django.urls import path

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
    assert storage.listdir("avatars")[0] == [key.split("/")[1]]
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
