"""``statekit serve`` for ASGI apps: uvicorn workers under statekit's arbiter.

:class:`StatekitUvicornWorker` is uvicorn-worker's ``UvicornWorker`` run by
:class:`~statekit.gunicorn.StatekitArbiter` with the same hooks as the gthread
worker, so drain on SIGTERM, the rolling reload, worker recycling, the broadcaster,
the drain-state slots and the metrics directory are the ones WSGI apps get. What
differs is only where the worker is ready and how it stops:

* **Ready** once uvicorn's server has run the app's lifespan startup and listens
  (not merely once the app is imported): a rolling reload or a recycling stops the
  old worker only then.
* **SIGTERM** during the lifespan startup lets it end, then runs the lifespan
  shutdown (the master waits for such a worker as for one serving, within
  ``--graceful-timeout``; only one still importing the app is SIGKILLed at once).
  Once serving, SIGTERM makes uvicorn stop accepting, close idle keep-alive connections, let
  the requests in flight finish and run the lifespan shutdown; the worker then
  exits normally (uvicorn re-raises the signal it caught once it is done; here that
  ends nothing), so the master sees a clean exit, not a death by signal.
* gunicorn's ``max_requests`` is not uvicorn's concern: the master recycles
  workers one at a time (``statekit serve --max-requests``).

``Connection: close`` while draining comes from the lifecycle middleware
(:mod:`statekit.asgi`): uvicorn closes a connection whose response says so.

Limit: uvicorn accepts connections eagerly (asyncio accepts several per wake-up) and
keeps them alive between requests, so a worker that is SIGKILLed (the OOM killer, a
crash, gunicorn's timeout) resets what it had accepted, which may be more than the
requests it was executing; the gthread worker accepts only while a thread is free
(:class:`~statekit.gunicorn.StatekitThreadWorker`) and has no uvicorn counterpart here.
Measured with ``statekit phoenix`` (2 x 2 workers, 6 keep-alive users, a kill every 1
to 1.5 s): 3 to 14 resets for 11 to 18 requests in flight at the kills. Graceful stops
(drain, reload, recycling) fail nothing.

Use it from your own ``gunicorn.conf.py`` with
``worker_class = "statekit.gunicorn_asgi.StatekitUvicornWorker"`` beside
``from statekit.gunicorn import *``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from .errors import ConfigError
from .gunicorn import GROUP_SIGNAL_GRACE, group_sigterm, report_ready
from .lifecycle import get_drain_state

try:
    from uvicorn.server import Server
    from uvicorn_worker import UvicornWorker
except ImportError as e:  # pragma: no cover - the asgi extra missing
    raise ConfigError("statekit serve for ASGI apps needs uvicorn and uvicorn-worker: "
                      "pip install 'statekit[asgi]'") from e

from gunicorn.arbiter import Arbiter

__all__ = ["StatekitUvicornWorker"]

#: seconds a stopping worker leaves its busy connections to receive a request and be
#: answered with ``Connection: close`` before uvicorn closes the silent ones
CLOSE_GRACE = 5.0
#: a kept-alive connection idle for this long is closed at once when the worker stops
#: (its client is not in the middle of a run of requests)
IDLE_CLOSE = 1.0


class _Server(Server):
    """uvicorn's server, calling *on_started* once it has started (lifespan startup
    done, sockets served)."""

    def __init__(self, config: Any, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self._report_if_ready()

    _loop: asyncio.AbstractEventLoop | None = None
    _term_pending = False
    _reported = False
    #: the master drains on SIGTERM: the ASGI lifecycle middleware leaves our handler alone
    statekit_drains = True

    def _report_if_ready(self) -> None:
        """Report ready once started, unless told to stop meanwhile (a SIGTERM during
        the lifespan startup): a reload would stop the old worker for one that is
        about to exit."""
        if self.started and not self.should_exit and not self._term_pending and not self._reported:
            self._reported = True
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler while it serves: a SIGTERM is obeyed only once
        :data:`~statekit.gunicorn.GROUP_SIGNAL_GRACE` has shown it is not the signal
        sent to the whole process group while the master drains (see
        :meth:`statekit.gunicorn.StatekitThreadWorker.handle_exit`)."""
        loop = self._loop
        if sig != signal.SIGTERM or loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._term_pending = True
        loop.call_soon_threadsafe(loop.call_later, GROUP_SIGNAL_GRACE, self._decide_exit, sig, frame)

    def _decide_exit(self, sig: int, frame: FrameType | None) -> None:
        self._term_pending = False
        if group_sigterm(logging.getLogger("uvicorn.error")):
            self._report_if_ready()
        else:
            super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        """Stop accepting, tell clients before closing their connections, then shut
        down as uvicorn does.

        uvicorn's own shutdown closes at once every connection that has no request
        under way: one accepted a moment ago whose request is already in its buffer
        (asyncio accepts several at once), and every kept-alive connection between
        two requests. A client sending its next request just then gets a reset, not
        an answer (measured: 8 resets in 3,300 requests over 4 reloads under
        phoenix's keep-alive load, 3 in ~600 over three recyclings). Here responses
        started from now on carry ``Connection: close`` (the lifecycle middleware
        reads :meth:`~statekit.lifecycle.DrainState.close_connections`), and the
        connections get up to the keep-alive timeout (at most
        :data:`CLOSE_GRACE` seconds) to receive a request, be answered and close;
        only those still silent after it are closed by uvicorn. A connection idle for
        :data:`IDLE_CLOSE` seconds already is not waited for: its client is not in
        the middle of a run of requests (an idle pooled connection would otherwise
        hold every stop for the whole keep-alive timeout)."""
        get_drain_state().close_connections()
        for server in getattr(self, "servers", ()):
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(self.config.timeout_keep_alive), CLOSE_GRACE)
        connections = self.server_state.connections
        while loop.time() < deadline and any(self._busy(c, loop.time()) for c in connections):
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)

    def _busy(self, conn: Any, now: float) -> bool:
        """Whether *conn* (an HTTP/1 protocol of uvicorn's) is worth waiting for:
        accepted with its first request not read yet, a request under way, or
        kept alive and used within the last :data:`IDLE_CLOSE` seconds."""
        if not hasattr(conn, "cycle"):  # not an HTTP/1 connection (a websocket): uvicorn closes it
            return False
        cycle = conn.cycle
        if cycle is None:
            return True
        if not cycle.response_complete:
            return True
        timer = getattr(conn, "timeout_keep_alive_task", None)  # armed when its last response ended
        return timer is not None and now - (timer.when() - self.config.timeout_keep_alive) < IDLE_CLOSE


class StatekitUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn-worker's ``UvicornWorker`` for :class:`~statekit.gunicorn.StatekitArbiter`
    (see the module docstring): ready when its server serves, a clean exit after
    SIGTERM, no request limit of its own."""

    #: one process: uvicorn's config would read ``WEB_CONCURRENCY`` for its number of
    #: workers otherwise, with ``int()`` (``statekit serve --workers N`` may leave a
    #: variable that is not one: see :func:`statekit.gunicorn.serve_main`)
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "workers": 1}
    #: :func:`statekit.gunicorn.post_worker_init` leaves the readiness report to us
    statekit_reports_ready = True
    statekit_slot: int
    _statekit_server: _Server | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.limit_max_requests = None  # the master recycles, one worker at a time

    def init_signals(self) -> None:
        super().init_signals()
        # in effect before uvicorn's handlers (a stop while booting) and after them
        # (uvicorn re-raises the signal it caught once it has shut down)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._statekit_stop)

    def _statekit_stop(self, sig: int, frame: FrameType | None) -> None:
        server = self._statekit_server
        if server is None:
            raise SystemExit(0)  # still loading the app: nothing to finish
        server.should_exit = True  # serving (uvicorn's own handler does the same) or done

    async def _serve(self) -> None:
        # UvicornWorker._serve, with our server
        self.config.app = self.wsgi
        server = self._statekit_server = _Server(self.config, lambda: report_ready(self))
        # no longer BOOTING: a stop now lets the lifespan startup end and its shutdown run
        get_drain_state().mark_starting()
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
