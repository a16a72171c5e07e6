"""Flask: save request.files[...] into the blob store; 413 before the body is read."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from flask import Flask, jsonify

from flask_statekit import StateKit
from flask_statekit.blobs import blob_store, blob_url, save_upload
from statekit.errors import ConfigError
from statekit.phoenix import make_png

HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
#: these tests use no Redis: the capabilities that need it are switched off
NO_REDIS = {f"STATEKIT_{f}_ENABLED": False for f in ("CACHE", "SESSIONS", "BROADCAST")}


def png() -> bytes:
    """A valid 1x1 PNG (the same bytes on every call)."""
    return make_png(random.Random(0), 1, 1)


def make_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(STATEKIT_BLOBS_URL=url, STATEKIT_BLOBS_MAX_SIZE="2KiB", SECRET_KEY="x" * 32,
                      STATEKIT_BLOBS_FORM_OVERHEAD=1024, **NO_REDIS)
    StateKit(app)

    @app.post("/upload")
    def upload() -> Any:
        blob = save_upload("photo", allowed_types=["image/*"], prefix="avatars")
        return jsonify(key=blob.key, size=blob.size, type=blob.content_type, name=blob.filename,
                       url=blob_url(blob.key, expires=60))

    return app


@pytest.fixture(params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)])
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Flask:
    if request.param == "memory":
        return make_app("memory://flask")
    if request.param == "file":
        return make_app(f"file://{tmp_path}/uploads?create=1")
    return make_app(request.getfixturevalue("s3_url"))


def test_upload_is_stored(app: Flask) -> None:
    resp = app.test_client().post("/upload", data={"photo": (io.BytesIO(png()), "Me at the beach.png")})
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["key"].startswith("avatars/") and body["key"].endswith(".png")
    assert (body["size"], body["type"], body["name"]) == (len(png()), "image/png", "Me at the beach.png")
    with app.app_context():
        store = blob_store()
        with store.open(body["key"]) as f:
            assert f.read() == png()


def test_download_url_serves_the_blob(app: Flask) -> None:
    client = app.test_client()
    posted = client.post("/upload", data={"photo": (io.BytesIO(png()), "Sommer \u00e9t\u00e9.png")})
    key = posted.get_json()["key"]
    with app.test_request_context():
        url = blob_url(key, expires=60)
    if url.startswith("http"):  # S3: presigned, served by S3
        import requests

        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and resp.content == png()
        assert "filename*=UTF-8''Sommer%20%C3%A9t%C3%A9.png" in resp.headers["Content-Disposition"]
        return
    with client.get(url) as resp:
        assert resp.status_code == 200 and resp.data == png()
        assert resp.mimetype == "image/png"
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert "filename*=UTF-8''Sommer%20%C3%A9t%C3%A9.png" in resp.headers["Content-Disposition"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    with client.get(url, headers={"Range": "bytes=0-7"}) as part:
        assert part.status_code == 206 and part.data == png()[:8]
    assert client.get(url.replace("signature=", "signature=x")).status_code == 403
    other = key[:-5] + ("1" if key[-5] == "0" else "0") + ".png"  # another key, same signature
    assert client.get(url.replace(key, other)).status_code == 403
    assert client.get(url.replace("expires=", "expires=1")).status_code == 403
    assert client.get("/_statekit/blobs/../../etc/passwd?signature=x").status_code == 404


class ExplodingInput(io.RawIOBase):
    """A request body that must never be read."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.reads += 1
        raise AssertionError("the body was read")


def test_413_before_the_body_is_read(app: Flask) -> None:
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    body = ExplodingInput()
    environ = EnvironBuilder(path="/upload", method="POST",
                             content_type="multipart/form-data; boundary=xyz").get_environ()
    environ.update({"wsgi.input": body, "CONTENT_LENGTH": str(50 * 1024 * 1024)})
    app_iter, status, _headers = run_wsgi_app(app, environ)
    b"".join(app_iter)
    assert status.startswith("413")
    assert body.reads == 0
    with app.app_context():
        assert list(blob_store().list()) == []


def test_file_part_over_the_limit_is_413_and_not_stored(app: Flask) -> None:
    big = png() + b"\0" * 2500  # under limit + form overhead, over the file limit
    resp = app.test_client().post("/upload", data={"photo": (io.BytesIO(big), "big.png")})
    assert resp.status_code == 413
    with app.app_context():
        assert list(blob_store().list()) == []


def test_lying_type_is_415(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/upload", data={"photo": (io.BytesIO(HTML), "photo.png")}).status_code == 415
    assert client.post("/upload", data={"photo": (io.BytesIO(b"%PDF-1.4\n"), "a.pdf")}).status_code == 415
    assert client.post("/upload", data={"other": (io.BytesIO(png()), "a.png")}).status_code == 400
    with app.app_context():
        assert list(blob_store().list()) == []


def test_without_a_blobs_url_the_helper_says_what_to_set() -> None:
    app = Flask(__name__)
    app.config.update(NO_REDIS)
    StateKit(app)
    with app.app_context(), pytest.raises(ConfigError, match="STATEKIT_BLOBS_URL"):
        blob_store()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_s3_outage_page_shows_no_endpoint_bucket_or_key(caplog: pytest.LogCaptureFixture) -> None:
    """S3 unreachable: visitors get a generic 503; the log gets the details, once."""
    from flask_statekit import UNAVAILABLE_PAGE

    port = closed_port()
    app = make_app(f"s3://AKIDTEST:sekrit@hidden-bucket/private-prefix?endpoint_url=http://127.0.0.1:{port}"
                   "&retries=0&connect_timeout=0.5&region=us-east-1")
    client = app.test_client()
    caplog.set_level("WARNING", logger="statekit.outage")
    for _ in range(3):
        resp = client.post("/upload", data={"photo": (io.BytesIO(png()), "secret-name.png")})
        assert resp.status_code == 503 and resp.headers["Retry-After"]
        body = resp.get_data(as_text=True)
        assert body == UNAVAILABLE_PAGE
        for detail in (str(port), "127.0.0.1", "hidden-bucket", "private-prefix", "avatars", "s3", ".png",
                       "AKIDTEST", "sekrit"):
            assert detail not in body
    warnings = [r for r in caplog.records if r.name == "statekit.outage"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "hidden-bucket" in warnings[0].getMessage() and str(port) in warnings[0].getMessage()
    assert "Traceback" not in caplog.text


def test_missing_file_root_fails_start(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*create=1"):
        make_app(f"file://{tmp_path}/typo")
    assert not (tmp_path / "typo").exists()


BLOCKED_EXTRA = """
import sys
sys.modules["boto3"] = None  # as if 'statekit[blobs]' were not installed
from flask import Flask
from flask_statekit import StateKit
from statekit.config import Settings
from statekit.errors import ConfigError
from statekit.lifecycle import Lifecycle

url = "s3://bucket?endpoint_url=http://127.0.0.1:9&region=us-east-1"
app = Flask(__name__)
app.config.update(STATEKIT_BLOBS_URL=url, STATEKIT_CACHE_ENABLED=False, STATEKIT_SESSIONS_ENABLED=False,
                  STATEKIT_BROADCAST_ENABLED=False)
try:
    StateKit(app)
except ConfigError as e:
    print("init:", e)
print("readyz:", Lifecycle(Settings(blobs_url=url)).readiness())
"""


def test_missing_extra_fails_start_and_readiness() -> None:
    """The blobs extra missing (boto3 made unimportable in a subprocess): StateKit(app)
    and /readyz both say which pip install fixes it, before any upload."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", BLOCKED_EXTRA], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    init, readyz = out.stdout.splitlines()
    assert init == "init: s3:// blob stores need 'boto3': pip install 'statekit[blobs]'"
    assert readyz.startswith("readyz: (503, ") and "pip install 'statekit[blobs]'" in readyz
