"""The users count: computed once per interval for the whole cluster, seen by every worker.

``statekit serve ... --broadcaster examples.flask_app.jobs:broadcaster`` runs
:data:`broadcaster` in the gunicorn master of every instance; a lease in Redis lets
exactly one of them run the query each interval, and the result is pushed to every
worker of every instance, which reads it locally
(``flask_statekit.broadcast.shared_value("users_count")``).
Nothing here connects at import time.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from statekit.broadcast import Broadcaster

from . import db

__all__ = ["INTERVAL", "broadcaster", "users_count_job"]

INTERVAL = float(os.environ.get("USERS_COUNT_INTERVAL", "10"))

broadcaster = Broadcaster()


@broadcaster.every(INTERVAL, name="users_count")
def users_count_job() -> dict[str, Any]:
    db.init_db()  # idempotent; the master may run this before any worker has
    with db.connect() as conn:
        value = db.count_users(conn)
    return {"value": value, "computed_by": os.getpid(), "host": socket.gethostname(),
            "computed_at": time.time()}
