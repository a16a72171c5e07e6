"""Objects that must start afresh in a forked child.

gunicorn forks its workers from a master that may already hold sockets, threads
and locks. An object passed to :func:`reset_in_child` has its ``reset_after_fork()``
called in every forked child, before the child runs any other code, so the child
opens its own connections and starts its own threads; the parent's are never used
from two processes. Objects are held weakly. A reset that raises is logged and the
others still run: one failing object must not leave every object after it with its
parent's connections (the child would then send on the parent's sockets).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

__all__ = ["reset_in_child"]

_log = logging.getLogger("statekit")
_objects: weakref.WeakSet[Any] = weakref.WeakSet()


def reset_in_child(obj: Any) -> None:
    """Call ``obj.reset_after_fork()`` in each forked child of this process."""
    _objects.add(obj)


def _reset_all() -> None:
    for obj in list(_objects):
        try:
            obj.reset_after_fork()
        except Exception:
            _log.exception("statekit: %r could not start afresh in the forked child", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
