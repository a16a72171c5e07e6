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


def _upload_app(tmp_path: Path, overhead: Any) -> Flask:
    from flask import jsonify

    from flask_statekit.blobs import save_upload

    app = Flask(__name__)
    app.config.update(STATEKIT_BLOBS_URL=f"file://{tmp_path}/uploads?create=1",
                      STATEKIT_BLOBS_MAX_SIZE="2KiB", STATEKIT_BLOBS_FORM_OVERHEAD=overhead,
                      SECRET_KEY="x" * 32, **NO_REDIS)
    StateKit(app)

    @app.post("/upload")
    def upload() -> Any:
        return jsonify(size=save_upload("doc").size)

    return app


@pytest.mark.parametrize("overhead", ["1KiB", "1024", 1024])
def test_form_overhead_takes_a_size_as_the_max_size_does(tmp_path: Path, overhead: Any) -> None:
    """``STATEKIT_BLOBS_MAX_SIZE`` takes ``"2KiB"``; ``STATEKIT_BLOBS_FORM_OVERHEAD``
    (from the environment, always a text) went through ``int()`` at each upload:
    ``"1KiB"`` was a ValueError, a 500 for every upload."""
    import io

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    app = _upload_app(tmp_path, overhead)
    ok = app.test_client().post("/upload", data={"doc": (io.BytesIO(b"x" * 100), "a.txt")})
    assert ok.status_code == 200 and ok.get_json() == {"size": 100}
    environ = EnvironBuilder(path="/upload", method="POST",
                             content_type="multipart/form-data; boundary=xyz").get_environ()
    environ.update({"wsgi.input": io.BytesIO(), "CONTENT_LENGTH": str(2048 + 1024 + 1)})
    app_iter, status, _headers = run_wsgi_app(app, environ)
    b"".join(app_iter)
    assert status.startswith("413")  # past the limit and its overhead: before the body is read


@pytest.mark.parametrize("overhead", ["lots", "-5", -5])
def test_a_form_overhead_that_is_no_size_fails_at_start(tmp_path: Path, overhead: Any) -> None:
    """... and a value that is no size failed each upload (500), not StateKit(app)."""
    from statekit.errors import ConfigError

    with pytest.raises(ConfigError, match="STATEKIT_BLOBS_FORM_OVERHEAD"):
        _upload_app(tmp_path, overhead)
