"""The WSGI entry point: ``statekit serve examples.flask_app.wsgi:app``."""

from __future__ import annotations

from .app import create_app

__all__ = ["app"]

app = create_app()
