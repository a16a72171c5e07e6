"""The statekit demo on FastAPI: the Flask demo's features (login with a server-side
session rotated on login, a cached slow report, photo uploads to the blob store, the
users count every worker shows) on ``starlette_statekit``.

``statekit serve examples.fastapi_app:app`` serves :data:`app` (built on first
access, from ``STATEKIT_REDIS_URL`` / ``STATEKIT_BLOBS_URL`` / ``DATABASE_URL``);
:func:`examples.fastapi_app.main.create_app` builds one for tests. It uses the Flask
demo's database module, page template and stylesheet, so both demos show the same
users and photos side by side. Run it from the repository's root with the store of
``make demo``, whose database holds the photos' keys (with ``statekit dev``'s
in-memory S3 endpoint instead, the photos uploaded under ``make demo`` show as broken
images)::

    statekit dev --blobs-dir examples/flask_app/instance/blobs -- statekit serve examples.fastapi_app:app
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first access: importing the package reads no settings
        from .main import create_app

        app = globals()["app"] = create_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
