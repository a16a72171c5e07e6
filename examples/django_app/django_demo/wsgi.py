"""WSGI entry point with /healthz, /readyz and graceful drain:
``statekit serve django_demo.wsgi:application``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_demo.settings")

from django_statekit.lifecycle import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
