"""Flask: blobs switched on without a store refuse to start, as cache, sessions and
broadcast without a Redis URL do.

``STATEKIT_BLOBS_ENABLED = True`` with no ``STATEKIT_BLOBS_URL`` started, and the first
upload was a 500 ("no blob store"). Blobs are on by default only when a store is
configured (an app that sets no blob URL uses none, as before); switched on by name,
they need one."""

from __future__ import annotations

import io

import pytest
from flask import Flask

from flask_statekit import StateKit
from flask_statekit.blobs import blob_store, save_upload
from statekit.errors import ConfigError

NO_REDIS = {f"STATEKIT_{f}_ENABLED": False for f in ("CACHE", "SESSIONS", "BROADCAST")}


def _app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x" * 32, **NO_REDIS, **config)

    @app.post("/upload")
    def upload() -> str:
        return save_upload("file").key

    return app


@pytest.mark.parametrize("where", ["config", "environment", "option"])
def test_blobs_switched_on_without_a_store_refuse_to_start(monkeypatch: pytest.MonkeyPatch,
                                                           where: str) -> None:
    monkeypatch.delenv("STATEKIT_BLOBS_URL", raising=False)
    monkeypatch.delenv("STATEKIT_BLOBS_ENABLED", raising=False)
    app = _app(STATEKIT_BLOBS_ENABLED=True) if where == "config" else _app()
    if where == "environment":
        monkeypatch.setenv("STATEKIT_BLOBS_ENABLED", "1")
    options = {"blobs_enabled": True} if where == "option" else {}
    with pytest.raises(ConfigError) as raised:
        StateKit(app, **options)
    assert str(raised.value) == (
        "StateKit: blobs enabled but no blob store is configured: set STATEKIT_BLOBS_URL "
        "(s3://bucket/prefix, file:///srv/uploads or memory://), or switch them off: "
        "STATEKIT_BLOBS_ENABLED = False")
    assert "statekit" not in app.extensions  # nothing wired


def test_blobs_switched_on_with_a_store_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKIT_BLOBS_URL", raising=False)
    app = _app(STATEKIT_BLOBS_ENABLED="on", STATEKIT_BLOBS_URL="memory://review15")
    StateKit(app)
    resp = app.test_client().post("/upload", data={"file": (io.BytesIO(b"a,b\n1,2\n"), "t.csv")})
    assert resp.status_code == 200
    with app.app_context():
        assert blob_store().exists(resp.get_data(as_text=True))


@pytest.mark.parametrize("setting", [None, "", False])
def test_blobs_not_switched_on_without_a_store_start_without_them(monkeypatch: pytest.MonkeyPatch,
                                                                  setting: object) -> None:
    """Not set (or empty: not set), blobs are on only with a store; switched off, never.
    An app without a blob URL starts as before, and the helper says what to set."""
    monkeypatch.delenv("STATEKIT_BLOBS_URL", raising=False)
    monkeypatch.delenv("STATEKIT_BLOBS_ENABLED", raising=False)
    app = _app() if setting is None else _app(STATEKIT_BLOBS_ENABLED=setting)
    StateKit(app)
    with app.app_context(), pytest.raises(ConfigError, match="no blob store: set STATEKIT_BLOBS_URL"):
        blob_store()
