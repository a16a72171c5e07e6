"""Health endpoints and graceful drain for Flask (:mod:`statekit.lifecycle`).

``StateKit(app)`` wraps ``app.wsgi_app`` in
:class:`~statekit.lifecycle.LifecycleMiddleware`, so ``/healthz`` (liveness) and
``/readyz`` (readiness: not draining, Redis and the blob store reachable within a
small budget) answer before Flask's routing, sessions or ``before_request`` hooks
run, and a draining process refuses new requests with a 503 the load balancer can
retry elsewhere. The :class:`~statekit.lifecycle.Lifecycle` is
``app.extensions["statekit"].lifecycle``; add checks with
``lifecycle.add_check("db", lambda timeout: engine.connect().close())``.

Draining itself is started by ``statekit serve`` (or statekit's gunicorn hooks) on
SIGTERM; under another server the app never drains unless you call
``statekit.lifecycle.get_drain_state().start_drain()``.

Settings (``app.config``, then the environment):

==============================  ===============================================
``STATEKIT_HEALTH_PATH``        liveness path (``/healthz``)
``STATEKIT_READY_PATH``         readiness path (``/readyz``)
``STATEKIT_DRAIN_MODE``         ``reject`` or ``serve``; default: what
                                ``statekit serve --drain-mode`` set
``STATEKIT_READY_BUDGET``       seconds all readiness checks may take (0.5)
``STATEKIT_RETRY_AFTER``        seconds in the drain 503's ``Retry-After`` (1)
==============================  ===============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from statekit.lifecycle import Lifecycle, LifecycleMiddleware

from . import _config, _config_number

if TYPE_CHECKING:
    from . import StateKitState

__all__ = ["init_app", "lifecycle_from_app"]


def lifecycle_from_app(app: Flask, state: StateKitState) -> Lifecycle:
    """A :class:`Lifecycle` configured from the app's ``STATEKIT_*`` settings."""
    return Lifecycle(
        state.settings,
        health_path=_config(app, "STATEKIT_HEALTH_PATH", "/healthz"),
        ready_path=_config(app, "STATEKIT_READY_PATH", "/readyz"),
        mode=_config(app, "STATEKIT_DRAIN_MODE") or None,
        budget=_config_number(app, "STATEKIT_READY_BUDGET", 0.5),
        retry_after=int(_config_number(app, "STATEKIT_RETRY_AFTER", 1)),
    )


def init_app(app: Flask, state: StateKitState) -> None:
    """Wrap ``app.wsgi_app`` in the lifecycle middleware; set ``state.lifecycle``."""
    lifecycle = lifecycle_from_app(app, state)
    state.lifecycle = lifecycle  # type: ignore[attr-defined]
    app.wsgi_app = LifecycleMiddleware(app.wsgi_app, lifecycle)  # type: ignore[method-assign]
