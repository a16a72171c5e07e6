"""Review 19: a django-storages (``S3Storage``) user moves to ``BlobStorage``.

What they relied on and statekit did not give them:

* ``storage.url(name, expire=60)``, django-storages' per-call lifetime of a link (a
  short one for a download button, the storage's default elsewhere), was a
  ``TypeError`` (a 500 where the template or view asked for it); it is honoured, on
  S3 and on the ``serve_blob`` links of ``file://``.
* ``STORAGES["staticfiles"]`` pointing at ``BlobStorage`` started, and
  ``collectstatic`` then failed on the first script (``ContentTypeMismatch``: an
  upload store refuses active content it cannot sniff) or stored each file under a
  generated key that ``{% static %}`` never asks for. It now fails Django's start,
  saying what to use instead.
* Links and upload forms signed with SigV4 (``AWS_S3_SIGNATURE_VERSION = "s3v4"``):
  botocore presigned with SigV2 in us-east-1 and the other regions that still take
  it, which S3 refuses for buckets made since June 2020.
* ``listdir()`` reading one level, as django-storages' ``Delimiter="/"`` listing: it
  listed every object of the store to find the names of the top level.
* Options every link or save would refuse (``expires`` of 30 days on S3, 0, a
  ``max_size`` that is no size) failing Django's start, not each request.
* An ``upload_to`` too long for ``max_length`` refused before the upload is read (it
  was stored whole, then deleted).
* ``size()``, ``exists()``, ``get_modified_time()``: one ``HEAD`` each on S3, as in
  django-storages (a large file's SHA-256 tag was read too).
* A stored file saved again (``twin.file.save(doc.file.name, doc.file)``) keeping its
  uploaded filename (it took the source key's).

Against a real moto S3 server (``s3_url``) and a ``file://`` directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import tests_django_urls
from django.core.files.base import ContentFile
from django.db import models
from django.test import Client
from django.urls import clear_url_caches, path

from django_statekit.apps import check_settings
from django_statekit.storage import BlobStorage, serve_blob
from statekit.errors import ConfigError

if not any(getattr(p, "name", None) == "statekit_blob" for p in tests_django_urls.urlpatterns):
    tests_django_urls.urlpatterns.append(path("_statekit/blobs/<path:key>", serve_blob, name="statekit_blob"))
    clear_url_caches()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage(request: pytest.FixtureRequest, django_settings: Any, tmp_path: Path) -> Iterator[BlobStorage]:
    """``STORAGES["default"]``: a BlobStorage (links of 600 s, as ``OPTIONS["expires"]``)
    on S3 or on a directory."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else f"file://{tmp_path}/media?create=1"
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage",
                    "OPTIONS": {"url": url, "expires": 600}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}})
    from django.core.files.storage import storages

    s = storages["default"]
    assert isinstance(s, BlobStorage)
    yield s


def _lifetime(url: str) -> int:
    """The seconds a link made now lasts: SigV4's ``X-Amz-Expires``, or the timestamp
    of SigV2's ``Expires`` (botocore's choice for this endpoint) or of the ``expires``
    ``serve_blob`` checks, less now."""
    query = parse_qs(urlsplit(url).query)
    if "X-Amz-Expires" in query:
        return int(query["X-Amz-Expires"][0])
    return int((query.get("Expires") or query["expires"])[0]) - int(time.time())


def _get(storage: BlobStorage, url: str) -> bytes:
    if storage.store.scheme == "s3":
        response = requests.get(url, timeout=30)
        assert response.status_code == 200, response.text
        return response.content
    answered = Client().get(url)
    assert answered.status_code == 200, answered
    return b"".join(answered.streaming_content)  # type: ignore[attr-defined]


def test_url_takes_a_lifetime_per_call(storage: BlobStorage) -> None:
    """``url(name, expire=60)``: failed before (``TypeError: unexpected keyword argument
    'expire'``)."""
    name = storage.save("docs/report.txt", ContentFile(b"quarterly"))
    assert 500 <= _lifetime(storage.url(name)) <= 600  # OPTIONS["expires"]; a loaded machine's seconds
    short = storage.url(name, expire=60)
    assert 0 < _lifetime(short) <= 60
    assert _get(storage, short) == b"quarterly"
    assert 500 <= _lifetime(storage.url(name, expire=None)) <= 600  # django-storages' default


@pytest.mark.parametrize("expire", [0, -1, "soon"])
def test_url_refuses_a_lifetime_that_is_no_positive_number(storage: BlobStorage, expire: Any) -> None:
    name = storage.save("docs/report.txt", ContentFile(b"quarterly"))
    with pytest.raises(ValueError, match="expires"):
        storage.url(name, expire=expire)


def test_blob_storage_as_the_staticfiles_storage_fails_start(django_settings: Any, tmp_path: Path) -> None:
    """Failed before: started; ``collectstatic`` then stopped at the first ``.js``
    (``ContentTypeMismatch``) or stored files where ``{% static %}`` does not look."""
    url = f"file://{tmp_path}/static?create=1"
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
        "staticfiles": {"BACKEND": "django_statekit.storage.BlobStorage", "OPTIONS": {"url": url}}})
    with pytest.raises(ConfigError, match=r"STORAGES\['staticfiles'\].*BlobStorage.*generated.*collectst"):
        check_settings()
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage", "OPTIONS": {"url": url}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}})
    check_settings()  # uploads in BlobStorage, static files beside it: as documented


def test_a_download_named_as_uploaded(storage: BlobStorage) -> None:
    """docs/differences.md's recipe: ``FileResponse`` names a download after the file's
    ``name``, the key; the stored filename names it as uploaded, as does ``url()``."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.http import FileResponse

    name = storage.save("docs/x", SimpleUploadedFile("Q3 report.txt", b"quarterly", "text/plain"))
    with storage.open(name) as f:
        assert FileResponse(f, as_attachment=True)["Content-Disposition"] == \
            f'attachment; filename="{name.rsplit("/", 1)[1]}"'
    with storage.open(name) as f:
        response = FileResponse(f, as_attachment=True, filename=storage.store.stat(name).filename)
        assert response["Content-Disposition"] == 'attachment; filename="Q3 report.txt"'
        assert response["Content-Length"] == "9" and response["Content-Type"].startswith("text/plain")


@pytest.mark.s3
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "eu-central-1"])
def test_s3_links_and_upload_forms_are_signed_with_sigv4(s3_url: str, region: str) -> None:
    """S3 refuses Signature Version 2 for buckets created since June 2020, and django-storages
    users set ``AWS_S3_SIGNATURE_VERSION = "s3v4"``; botocore presigns with SigV2 unless
    told (``_default_s3_presign_to_sigv2``) in every region that still takes it. Failed
    before: ``url()`` was ``?AWSAccessKeyId=...&Signature=...&Expires=...`` and the upload
    form's fields ``AWSAccessKeyId``/``signature`` in us-east-1 and eu-west-1; the 7-day
    limit statekit holds links to is SigV4's. Both work against the server."""
    from statekit.blobs import BlobStore
    from statekit.testing.contracts.blobs import direct_upload

    assert "region=us-east-1" in s3_url
    storage = BlobStorage(store=BlobStore(s3_url.replace("region=us-east-1", f"region={region}")))
    name = storage.save("docs/report.txt", ContentFile(b"quarterly"))
    url = storage.url(name, expire=60)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert f"/{region}/s3/" in query["X-Amz-Credential"][0]
    assert "AWSAccessKeyId" not in query and query["X-Amz-Expires"] == ["60"]
    assert requests.get(url, timeout=30).content == b"quarterly"
    up = storage.store.presign_upload(max_size=100, content_type_prefix="text/", expires=60)
    assert up.fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and "AWSAccessKeyId" not in up.fields
    assert direct_upload(storage.store, up, b"direct", "text/plain")
    assert storage.store.confirm(up.key).size == 6


def _fill(storage: BlobStorage) -> list[str]:
    """``top.txt`` (no ``upload_to``: a date path) and 12 files under ``a/`` and ``b/c/``,
    as ``upload_to`` prefixes and date paths make them; their keys."""
    keys = [storage.save(where, ContentFile(b"%d" % i))
            for i in range(6) for where in ("a/x.txt", "b/c/x.txt")]
    return [*keys, storage.store.put(b"top", filename="top.txt", content_type="text/plain").key]


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def tree(request: pytest.FixtureRequest, django_settings: Any,
         tmp_path: Path) -> tuple[BlobStorage, list[str]]:
    """A storage on each backend, :func:`_fill`ed: (storage, keys)."""
    from statekit.blobs import BlobStore

    url = {"memory": f"memory://review19-{tmp_path.name}", "file": f"file://{tmp_path}/media?create=1"}.get(
        request.param) or request.getfixturevalue("s3_url")
    storage = BlobStorage(store=BlobStore(url))
    return storage, _fill(storage)


def test_listdir_lists_one_level(tree: tuple[BlobStorage, list[str]]) -> None:
    """As Django's storages answer: the subdirectories and the files directly below,
    statekit's own ``.statekit/`` left out."""
    storage, keys = tree
    assert storage.listdir("") == (sorted(["a", "b", keys[-1].split("/")[0]]), [])
    assert storage.listdir("b") == (["c"], []) and storage.listdir("b/") == (["c"], [])
    day = keys[0].rsplit("/", 1)[0]  # a/YYYY/MM/DD: 6 files, fewer if the day turned meanwhile
    assert storage.listdir(day) == ([], sorted(k.rsplit("/", 1)[1] for k in keys if k.startswith(day + "/")))
    assert storage.listdir("nothing") == ([], [])


@pytest.mark.s3
def test_listdir_on_s3_reads_one_level(s3_url: str) -> None:
    """``listdir("")`` listed every object of the store (a page of 1000 per request:
    a bucket of a million uploads was a thousand requests) to find a few names;
    django-storages asks S3 for one level (``Delimiter="/"``). Failed before: the
    listing returned all 13 objects."""
    from statekit.blobs import BlobStore

    storage = BlobStorage(store=BlobStore(s3_url))
    keys = _fill(storage)
    returned: list[int] = []

    def count(parsed: dict[str, Any], **_: Any) -> None:
        returned.append(len(parsed.get("Contents", [])) + len(parsed.get("CommonPrefixes", [])))

    storage.store.client.meta.events.register("after-call.s3.ListObjectsV2", count)
    assert storage.listdir("")[0] == sorted(["a", "b", keys[-1].split("/")[0]])
    assert returned == [3], returned


@pytest.mark.parametrize("url, options, message", [
    ("s3://bucket/media?region=eu-west-1", {"expires": 30 * 86400}, r"expires.*7 days"),
    ("file://{tmp}?create=1", {"expires": 0}, r"expires.*at least 1"),
    ("file://{tmp}?create=1", {"expires": "a week"}, r"expires.*not a number"),
    ("file://{tmp}?create=1", {"max_size": "lots"}, r"max_size"),
    ("file://{tmp}?create=1", {"location": "media", "file_overwrite": False},
     r"unexpected keyword argument 'location'.*django-storages"),
])
def test_storage_options_that_every_link_or_save_would_refuse_fail_start(
        django_settings: Any, tmp_path: Path, url: str, options: dict[str, Any], message: str) -> None:
    """django-storages takes ``AWS_QUERYSTRING_EXPIRE`` of 30 days (S3 then refuses the
    links); ``OPTIONS["expires"]`` of 30 days on S3 made every ``url()`` a ValueError,
    a 500 on every page showing a file, and a ``max_size`` that is no size failed at
    the first use. Failed before: Django started."""
    django_settings.set(STORAGES={
        "default": {"BACKEND": "django_statekit.storage.BlobStorage",
                    "OPTIONS": {"url": url.format(tmp=tmp_path), **options}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}})
    with pytest.raises(ConfigError, match=r"STORAGES\['default'\].*" + message):
        check_settings()


class _Counted(ContentFile):  # type: ignore[type-arg]
    """Content that counts the chunks a save reads."""

    chunks_read = 0

    def chunks(self, chunk_size: int | None = None) -> Any:
        for chunk in super().chunks(chunk_size):
            type(self).chunks_read += 1
            yield chunk


def test_an_upload_to_too_long_for_max_length_is_refused_before_the_upload(storage: BlobStorage) -> None:
    """A callable ``upload_to`` of django-storages days (``tenants/<uuid>/documents/<uuid>/``)
    makes keys past ``FileField``'s ``max_length=100`` whatever the file: the save read
    and stored the whole upload, then deleted it and refused. Failed before: the
    content was read. The refusal now comes from ``get_available_name``, before."""
    from django.core.exceptions import SuspiciousFileOperation

    upload_to = "tenants/" + "t" * 36 + "/documents/" + "d" * 36
    _Counted.chunks_read = 0
    with pytest.raises(SuspiciousFileOperation, match=r"max_length=100.*upload_to"):
        storage.save(f"{upload_to}/report.txt", _Counted(b"x" * 4096), max_length=100)
    assert _Counted.chunks_read == 0 and list(storage.store.list()) == []
    name = storage.save("docs/report.txt", _Counted(b"x" * 4096), max_length=100)  # fits: stored
    assert _Counted.chunks_read > 0 and storage.size(name) == 4096


@pytest.mark.s3
def test_size_exists_and_times_of_a_large_file_are_one_request(s3_url: str) -> None:
    """``size()``, ``exists()`` and ``get_modified_time()`` are one ``HEAD`` each, as in
    django-storages. For a multipart object (past 5 MiB) each also read its SHA-256
    tag (``GetObjectTagging``), which none of them uses: a page showing the sizes of
    50 videos was 100 requests. Failed before: 2 requests each."""
    from statekit.blobs import BlobStore

    storage = BlobStorage(store=BlobStore(s3_url))
    name = storage.save("videos/clip.bin", ContentFile(b"\0" * (6 * 2**20)))
    assert storage.store.stat(name).sha256 is not None  # the record still has it
    calls: list[str] = []
    storage.store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    assert storage.size(name) == 6 * 2**20
    assert storage.exists(name) and storage.get_modified_time(name).tzinfo is not None
    assert calls == ["HeadObject"] * 3, calls


class Review19Document(models.Model):
    file = models.FileField(upload_to="docs/", storage=BlobStorage("memory://review19-documents"))

    class Meta:
        app_label = "django_statekit"


def test_a_file_saved_from_another_stored_file_keeps_its_filename(storage: BlobStorage) -> None:
    """``copy.file.save(doc.file.name, doc.file)`` (a "duplicate" button): the copy was
    named after the source's key (``9f0c...e1.txt``), its uploaded filename lost, so
    its link downloaded under that. Failed before: the key's name."""
    from django.core.files import File
    from django.core.files.uploadedfile import SimpleUploadedFile

    name = storage.save("docs/x", SimpleUploadedFile("Q3 report.txt", b"quarterly", "text/plain"))
    with storage.open(name) as source:
        copy = storage.save(name, source)
    assert copy != name and storage.store.stat(copy).filename == "Q3 report.txt"
    doc, twin = Review19Document(), Review19Document()
    Review19Document._meta.get_field("file").storage = storage  # type: ignore[attr-defined]
    doc.file.save("Q3 report.txt", SimpleUploadedFile("Q3 report.txt", b"quarterly", "text/plain"),
                  save=False)
    twin.file.save(doc.file.name, doc.file, save=False)  # type: ignore[arg-type]
    doc.file.close()  # read by the copy, as Django leaves it
    assert storage.store.stat(twin.file.name).filename == "Q3 report.txt"  # type: ignore[arg-type]
    with storage.open(name) as source:  # another File around it: the name given is the filename
        again = storage.save("docs/renamed.txt", File(source, name="other.txt"))
    assert storage.store.stat(again).filename == "renamed.txt"
