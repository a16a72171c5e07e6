"""Broadcast: one computation per interval for the whole cluster, pushed to every worker.

Worker side — :class:`SharedValue`::

    users_count = SharedValue("users_count", default=0, max_age=30)
    users_count.get()          # a local read, no I/O once loaded

Publisher side — :class:`Broadcaster`::

    broadcaster = Broadcaster()            # STATEKIT_BROADCAST_URL / STATEKIT_REDIS_URL

    @broadcaster.every(10, name="users_count")
    def users_count() -> int:
        return db.count_users()

    broadcaster.publish("motd", "hello")   # event-driven update, any process

Where the publisher runs (any number of these at once, on any machines; the lease
keeps it to one computation per interval):

* standalone: ``statekit broadcast myproject.jobs:broadcaster`` (:func:`main`, which
  calls :meth:`Broadcaster.run_forever` and stops on SIGTERM/SIGINT);
* Django: ``manage.py statekit_broadcast`` (``STATEKIT_BROADCASTER = "pkg.mod:obj"``);
* inside a long-lived process, e.g. the gunicorn master, through the thread API:

  - :meth:`Broadcaster.start` starts the scheduler in a daemon thread and returns at
    once; calling it again while running does nothing. Call it in the master
    *after* the workers are forked (gunicorn's ``when_ready`` hook); the thread
    survives gunicorn reloads (HUP) because the master process does.
  - :meth:`Broadcaster.stop` (``timeout`` seconds) stops the thread and releases the
    leases it holds so another process takes over at once; call it on exit
    (gunicorn's ``on_exit`` hook).
  - A forked child never inherits a running publisher: an ``os.register_at_fork``
    hook marks every broadcaster stopped in the child and gives it a new identity,
    so a worker forked after ``start()`` runs nothing unless it calls ``start()``.

One computation per interval (lease, fencing token, claimed slots) is explained in
:mod:`statekit.broadcast.scheduler`, what workers do through outages in
:mod:`statekit.broadcast.hub`.

From asyncio (FastAPI, Starlette, Django async views): :class:`SharedValue` as is
(``await value.aget()`` to load it without blocking, ``await value.changed()``),
and :class:`~statekit.broadcast.aio.AsyncBroadcaster`, the same scheduler as a task
on the event loop (:mod:`statekit.broadcast.aio`).

Modules: :mod:`~statekit.broadcast.protocol` (the backend contract, typed results,
how a URL finds its backend), :mod:`~statekit.broadcast.redis` (the Redis backend:
Lua scripts and pub/sub, every Redis URL form or a ready redis-py client),
:mod:`~statekit.broadcast.memory` (``memory://name``: the same backend on an
in-process Redis, for your unit tests; a publish reaches every shared value of the
store in this process before it returns), :mod:`~statekit.broadcast.scheduler`
(:class:`Broadcaster`: lease, fencing, slots), :mod:`~statekit.broadcast.hub`
(the per-process subscriber), :mod:`~statekit.broadcast.values`
(:class:`SharedValue`, :class:`SharedValues`) and :mod:`~statekit.broadcast.command`
(``statekit broadcast``). Another distribution adds a backend with an entry point
in the group ``statekit.broadcast`` and checks it with
:mod:`statekit.testing.contracts.broadcast`.
"""

from __future__ import annotations

from typing import Any

from .command import load_broadcaster, main, serve
from .scheduler import Broadcaster, Job, Run, current_run
from .values import SharedValue, SharedValues

__all__ = [
    "AsyncBroadcaster",
    "Broadcaster",
    "Job",
    "Run",
    "SharedValue",
    "SharedValues",
    "current_run",
    "load_broadcaster",
    "main",
    "serve",
    "state_key",
]


def __getattr__(name: str) -> Any:
    if name == "state_key":  # the Redis backend's key layout: imports redis-py
        from .redis import state_key

        return state_key
    if name == "AsyncBroadcaster":  # the asyncio scheduler on redis-py's asyncio client
        from .aio import AsyncBroadcaster

        return AsyncBroadcaster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
