"""Review 19 follow-ups on ``BlobStorage`` and blob errors, on ``file://`` and moto S3.

* ``FileField(upload_to="photos/%Y/%m/%d/")``, Django's strftime form: the key was
  ``photos/2026/12/08/2026/12/08/<random>.jpg`` (statekit's own date path after the one
  Django formatted). The key is now the directory Django gives (``FileSystemStorage``'s)
  and statekit's generated name.
* An upload declared as a script (``text/javascript``) was refused saying "the content
  looks like text"; the message now says the type is refused for uploads and what to do.
* ``ImageField`` on S3 (Pillow): dimension fields are read from the upload at save
  time (no GET), ``width``/``height`` from the stored object in one GET: no second
  download, nothing to fix.
* ``file://``: a delete removes the directories it empties, as S3 keeps none; a write
  whose directory such a delete removes meanwhile makes it again.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, models

from django_statekit.storage import BlobStorage
from statekit.errors import ContentTypeMismatch

_HEX = r"[0-9a-f]{32}"


class Review19Photo(models.Model):
    photo = models.FileField(upload_to="photos/%Y/%m/%d/")
    doc = models.FileField(upload_to="docs/", blank=True)

    class Meta:
        app_label = "django_statekit"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, django_settings: Any, tmp_path: Path) -> Iterator[BlobStorage]:
    """``STORAGES["default"]``, a BlobStorage on S3 or on a directory, with the photo
    table created in the test database."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else f"file://{tmp_path}/media?create=1"
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage", "OPTIONS": {"url": url}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}})
    from django.core.files.storage import storages

    s = storages["default"]
    assert isinstance(s, BlobStorage)
    for field in ("photo", "doc"):
        Review19Photo._meta.get_field(field).storage = s  # type: ignore[attr-defined]
    with connection.schema_editor() as editor:
        editor.create_model(Review19Photo)
    try:
        yield s
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Review19Photo)


def test_a_strftime_upload_to_gives_one_date_path(storage: BlobStorage) -> None:
    """Failed before: ``photos/2026/12/08/2026/12/08/<random>.txt``. The directory is the
    one Django formats (local time, as ``FileSystemStorage`` uses it), once."""
    before = dt.datetime.now()
    obj = Review19Photo.objects.create(photo=SimpleUploadedFile("a.txt", b"hello", "text/plain"),
                                       doc=ContentFile(b"text", name="notes.txt"))
    days = {f"photos/{d:%Y/%m/%d}" for d in (before, dt.datetime.now())}  # the day may turn meanwhile
    directory, name = obj.photo.name.rsplit("/", 1)
    assert directory in days and re.fullmatch(_HEX + r"\.txt", name), obj.photo.name
    assert re.fullmatch(rf"docs/{_HEX}\.txt", obj.doc.name), obj.doc.name  # upload_to as given
    assert storage.store.stat(obj.photo.name).filename == "a.txt"
    again = Review19Photo.objects.get(pk=obj.pk)
    assert again.photo.read() == b"hello"
    # a stored file saved again lands in the directory Django gives, not one date path deeper
    twin = Review19Photo.objects.create(photo=again.photo.file)
    assert twin.photo.name.rsplit("/", 1)[0] in {f"{d}/{again.photo.name.rsplit('/', 1)[0]}" for d in days}
    again.photo.close()
    with storage.open(twin.photo.name) as f:
        assert f.read() == b"hello"


def test_max_length_check_measures_the_key_save_makes(storage: BlobStorage) -> None:
    """``get_available_name`` measures keys without statekit's date path too: an
    ``upload_to`` whose keys fit is not refused for 11 characters it no longer adds."""
    upload_to = "u" * 62  # 62 + 1 + 32 + ".txt" = 99 characters
    name = storage.save(f"{upload_to}/report.txt", ContentFile(b"x"), max_length=100)
    assert len(name) == 99 and name.startswith(upload_to + "/")


@pytest.mark.parametrize("filename, declared", [
    ("app.js", "text/javascript"), ("app.js", "application/javascript"), ("app.js", None),
    ("page.xhtml", "application/xhtml+xml"), ("frag.html", "text/html"),
])
def test_an_active_type_refused_for_uploads_says_so(storage: BlobStorage, filename: str,
                                                   declared: str | None) -> None:
    """Failed before: "declared type 'text/javascript' but the content looks like text"."""
    content = (SimpleUploadedFile(filename, b"console.log('<p>hi</p>');\n", declared) if declared
               else ContentFile(b"console.log(1);\n", name=filename))
    with pytest.raises(ContentTypeMismatch) as refused:
        storage.save(f"assets/{filename}", content)
    message = str(refused.value)
    assert "refused for uploads" in message and "active content" in message, message
    assert "static files" in message and "looks like" not in message, message
    assert list(storage.store.list()) == []


def test_an_active_type_contradicted_by_a_signature_still_names_it(storage: BlobStorage) -> None:
    """A PNG declared ``text/html`` is a plain mismatch: the message names what it is."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    with pytest.raises(ContentTypeMismatch, match=r"'text/html' but the content looks like image/png"):
        storage.save("x/page.html", SimpleUploadedFile("page.html", png, "text/html"))


class Review19Image(models.Model):
    image = models.ImageField(upload_to="images/", width_field="w", height_field="h")
    w = models.IntegerField(null=True)
    h = models.IntegerField(null=True)
    plain = models.ImageField(upload_to="images/", blank=True)

    class Meta:
        app_label = "django_statekit"


@pytest.mark.s3
def test_an_image_field_on_s3_reads_the_object_at_most_once(django_settings: Any, s3_url: str) -> None:
    """Saving an ``ImageField`` with dimension fields reads them from the upload: no
    GET. Without them, ``width``/``height`` read the stored image (Django reopens it by
    name after a save, from any storage): one GET for both, after the save as for a
    loaded row."""
    pil = pytest.importorskip("PIL.Image")
    from statekit.blobs import BlobStore

    storage = BlobStorage(store=BlobStore(s3_url))
    for field in ("image", "plain"):
        Review19Image._meta.get_field(field).storage = storage  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    pil.new("RGB", (37, 23), "red").save(buffer, "PNG")
    png = buffer.getvalue()
    calls: list[str] = []
    storage.store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    with connection.schema_editor() as editor:
        editor.create_model(Review19Image)
    try:
        obj = Review19Image.objects.create(image=SimpleUploadedFile("a.png", png, "image/png"),
                                           plain=SimpleUploadedFile("b.png", png, "image/png"))
        assert (obj.w, obj.h) == (37, 23) and calls == ["PutObject", "PutObject"], calls
        assert (obj.plain.width, obj.plain.height) == (37, 23)
        assert calls.count("GetObject") == 1, calls
        obj.plain.close()
        loaded = Review19Image.objects.get(pk=obj.pk)
        calls.clear()
        assert (loaded.w, loaded.h) == (37, 23) and calls == []
        assert (loaded.plain.width, loaded.plain.height) == (37, 23)
        assert calls == ["HeadObject", "GetObject"], calls
        loaded.plain.close()
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Review19Image)


def _file_storage(tmp_path: Path) -> BlobStorage:
    from statekit.blobs import BlobStore

    return BlobStorage(store=BlobStore(f"file://{tmp_path}/media?create=1"))


def test_a_delete_on_file_removes_the_directories_it_empties(tmp_path: Path) -> None:
    """As on S3, where a directory is gone with its last key. Failed before:
    ``listdir("photos")`` still listed ``2026``, and the records' directories stayed."""
    storage = _file_storage(tmp_path)
    first, second = (storage.save("photos/2026/x.txt", ContentFile(b"x")) for _ in range(2))
    other = storage.save("photos/other/x.txt", ContentFile(b"y"))
    storage.delete(first)
    assert storage.listdir("photos/2026") == ([], [second.rsplit("/", 1)[1]])  # not empty: kept
    storage.delete(second)
    assert storage.listdir("photos") == (["other"], [])
    storage.delete(other)
    assert storage.listdir("") == ([], [])
    root = tmp_path / "media"
    assert root.is_dir() and sorted(p.name for p in root.iterdir()) == [".statekit"]
    assert list((root / ".statekit" / "meta").iterdir()) == []  # the records' directories too


@pytest.mark.parametrize("where", ["blob", "record"])
def test_a_put_into_a_directory_a_delete_empties_meanwhile_is_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The one window a delete can remove a write's directory in: after the write made
    it, before its temporary file is there. The delete of the directory's last blob is
    run in that window (the real backend's step, called from a wrapper); the write makes
    the directory again and is stored. Without that, ``mkstemp``'s FileNotFoundError was
    a BackendUnavailable."""
    storage = _file_storage(tmp_path)
    backend: Any = storage.store.backend
    old = storage.save("docs/a.txt", ContentFile(b"old"))
    target = os.path.dirname(backend._path(old) if where == "blob" else backend._meta_path(old))
    made = backend._makedirs
    deleted: list[str] = []

    def makedirs_then_delete(directory: str) -> None:
        made(directory)
        if directory == target and not deleted:
            deleted.append(old)
            storage.delete(old)
            assert not os.path.isdir(target)  # the delete emptied and removed it

    monkeypatch.setattr(backend, "_makedirs", makedirs_then_delete)
    new = storage.save("docs/b.txt", ContentFile(b"new"))
    assert deleted == [old] and not storage.exists(old)
    with storage.open(new) as f:
        assert f.read() == b"new"
    assert storage.store.stat(new).filename == "b.txt"  # its record is there
