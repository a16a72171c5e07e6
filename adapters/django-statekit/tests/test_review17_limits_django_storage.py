"""Review 17, "a limit holds on every path": ``BlobStorage``'s ``max_size`` and
``allowed_types`` (its ``OPTIONS``) hold whichever way the storage gets its store.

With ``url=`` (or ``STATEKIT_BLOBS_URL``) the storage opens a store with those limits.
With ``store=`` (a ready :class:`~statekit.blobs.BlobStore`, shared with the rest of
the project) it kept the store as given and put into it without them: a 500-byte file
passed ``max_size=100`` and a PDF passed ``allowed_types=["image/*"]``. Both are now
passed to every ``put``; a store's own limits still apply when the storage sets none.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from django_statekit.storage import BlobStorage
from statekit.blobs import BlobStore
from statekit.errors import BlobTooLarge, DisallowedContentType
from statekit.phoenix import make_png

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return BlobStore(f"memory://review17-{uuid.uuid4().hex}")
    if request.param == "file":
        return BlobStore(f"file://{tmp_path}/media?create=1")
    return BlobStore(request.getfixturevalue("s3_url"))


def test_options_limits_hold_on_a_ready_store(django_settings: Any, store: BlobStore) -> None:
    storage = BlobStorage(store=store, max_size=100, allowed_types=["image/*"])
    with pytest.raises(BlobTooLarge):
        storage.save("docs/big.bin", ContentFile(b"x" * 500))
    with pytest.raises(DisallowedContentType):
        storage.save("docs/doc.pdf", ContentFile(PDF))
    assert list(store.list()) == []
    png = make_png(random.Random(0), 1, 1)
    assert len(png) <= 100
    key = storage.save("docs/pixel.png", ContentFile(png))
    assert key.startswith("docs/") and store.stat(key).content_type == "image/png"


def test_a_ready_stores_own_limits_apply_when_the_storage_sets_none(django_settings: Any,
                                                                     store: BlobStore) -> None:
    store.max_size, store.allowed_types = 100, ["image/*"]
    storage = BlobStorage(store=store)
    with pytest.raises(BlobTooLarge):
        storage.save("docs/big.bin", ContentFile(b"x" * 500))
    with pytest.raises(DisallowedContentType):
        storage.save("docs/doc.pdf", ContentFile(PDF))
    assert list(store.list()) == []


@pytest.mark.parametrize("expires", [0, -60])
def test_url_refuses_an_expiry_that_is_not_positive(django_settings: Any, store: BlobStore,
                                                    expires: int) -> None:
    """``BlobStorage(expires=...)``: ``url()`` went through ``BlobStore.url`` on S3 (a
    ValueError for 0 or less) and through ``signed_params`` on ``file://`` and
    ``memory://``, which signed a URL already expired."""
    import tests_django_urls
    from django.urls import clear_url_caches, path

    from django_statekit.storage import serve_blob

    if not any(getattr(p, "name", None) == "statekit_blob" for p in tests_django_urls.urlpatterns):
        tests_django_urls.urlpatterns.append(path("_statekit/blobs/<path:key>", serve_blob,
                                                  name="statekit_blob"))
        clear_url_caches()
    key = BlobStorage(store=store).save("docs/a.txt", ContentFile(b"hello"))
    assert key in BlobStorage(store=store, expires=60).url(key) or store.scheme == "s3"
    with pytest.raises(ValueError, match="expires"):
        BlobStorage(store=store, expires=expires).url(key)


def test_options_max_size_takes_a_size_as_the_flask_setting_does(django_settings: Any,
                                                                   store: BlobStore) -> None:
    """``STATEKIT_BLOBS_MAX_SIZE`` (Flask, Starlette) takes ``"10MiB"``; Django's
    ``OPTIONS["max_size"]`` passed such a text to the store, and every save failed
    with a TypeError (a 500)."""
    storage = BlobStorage(store=store, max_size="1KiB")  # type: ignore[arg-type]
    with pytest.raises(BlobTooLarge):
        storage.save("docs/big.bin", ContentFile(b"x" * 1025))
    key = storage.save("docs/small.bin", ContentFile(b"x" * 1024))
    assert store.stat(key).size == 1024
    assert BlobStorage(store=store, max_size=1024).max_size == storage.max_size == 1024
