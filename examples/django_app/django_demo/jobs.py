"""The users count, computed once per interval for the whole cluster.

``statekit serve ... --broadcaster django_demo.jobs:broadcaster`` runs it in the
gunicorn master (or ``python manage.py statekit_broadcast`` on its own); every worker
reads the result with ``shared("users_count")`` / ``{{ shared.users_count }}``.
"""

from __future__ import annotations

import os

from statekit.broadcast import Broadcaster

__all__ = ["broadcaster", "users_count"]

broadcaster = Broadcaster()


@broadcaster.every(float(os.environ.get("USERS_COUNT_INTERVAL", "10")), name="users_count")
def users_count() -> int:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_demo.settings")
    django.setup()
    from django.contrib.auth import get_user_model

    return int(get_user_model().objects.count())
