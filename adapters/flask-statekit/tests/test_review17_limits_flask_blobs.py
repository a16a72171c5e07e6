"""Review 17, "a limit holds on every path": ``blob_url``'s ``expires`` is checked
on every store. On S3 it is ``BlobStore.url`` (a ValueError for 0 or less); for
``file://`` and ``memory://`` it was signed as given, a URL already expired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_statekit import StateKit
from flask_statekit.blobs import blob_store, blob_url

NO_REDIS = {f"STATEKIT_{f}_ENABLED": False for f in ("CACHE", "SESSIONS", "BROADCAST")}


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Flask:
    url = {"memory": "memory://review17-flask", "file": f"file://{tmp_path}/uploads?create=1"}.get(
        request.param) or request.getfixturevalue("s3_url")
    app = Flask(__name__)
    app.config.update(STATEKIT_BLOBS_URL=url, SECRET_KEY="x" * 32, **NO_REDIS)
    StateKit(app)
    return app


@pytest.mark.parametrize("expires", [0, -60])
def test_blob_url_refuses_an_expiry_that_is_not_positive(app: Flask, expires: Any) -> None:
    with app.test_request_context():
        key = blob_store().put(b"hello", content_type="text/plain").key
        assert "expires=" in blob_url(key, expires=60) or "Expires=" in blob_url(key, expires=60)
        with pytest.raises(ValueError, match="expires"):
            blob_url(key, expires=expires)
