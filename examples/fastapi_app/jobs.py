"""The users count, computed once per interval for the whole cluster by an
:class:`~statekit.broadcast.aio.AsyncBroadcaster` that every worker's lifespan runs
(the lease in Redis lets one of them compute each interval) and pushed to every
worker, which reads it locally (``Depends(shared_value("users_count"))`` in :mod:`examples.fastapi_app.main`).

The same job as ``examples.flask_app.jobs`` (same name, same database), so a Flask
and a FastAPI deployment of the demo may share the value, each one's broadcaster
taking the lease in turn.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from examples.flask_app import db
from statekit.broadcast.aio import AsyncBroadcaster

__all__ = ["make_broadcaster"]


def make_broadcaster(interval: float | None = None) -> AsyncBroadcaster:
    """A broadcaster with the users-count job every *interval* seconds
    (``USERS_COUNT_INTERVAL``, 10 by default). Connects on its first run."""
    broadcaster = AsyncBroadcaster()
    every = interval if interval is not None else float(os.environ.get("USERS_COUNT_INTERVAL", "10"))

    @broadcaster.every(every, name="users_count")
    async def users_count() -> dict[str, Any]:
        value = await asyncio.to_thread(_count)  # sqlite: off the event loop
        return {"value": value, "computed_by": os.getpid(), "host": socket.gethostname(),
                "computed_at": time.time()}

    return broadcaster


def _count() -> int:
    db.init_db()  # idempotent; the first worker may run this before any request
    with db.connect() as conn:
        return db.count_users(conn)
