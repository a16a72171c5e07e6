"""``statekit serve``: gunicorn with graceful drain, rolling reload and the broadcaster.

``statekit serve MODULE:APP`` runs the app on gunicorn (not a new server) with the
behaviour below, the same for a WSGI app (gthread workers) and an ASGI app (uvicorn
workers, :mod:`statekit.gunicorn_asgi`; told apart by importing the app once in a
short-lived child, or given by ``--interface``; that import, made either way, refuses
an app that cannot start, in one line, before any worker):

* **SIGTERM**: drain (readiness 503, ``Connection: close`` on every response, new
  requests rejected in mode ``reject``), wait ``--pre-stop-delay`` so load balancers
  notice, stop accepting, let in-flight requests finish within
  ``--graceful-timeout``, SIGKILL what is left, exit. One log line reports the
  shutdown, every count since TERM: requests in flight at TERM, completed,
  rejected, workers force-killed, requests lost. A SIGTERM sent to the whole
  process group (systemd's default ``KillMode=control-group``, dumb-init, ``kill
  -TERM -PGID``) drains the same way: a worker that gets it while the master drains
  serves the drain until the master stops it (a SIGTERM to a worker alone takes
  effect after :data:`GROUP_SIGNAL_GRACE`).
* **Reload** (SIGHUP or ``statekit reload``): workers are replaced one at a time;
  each old worker gets SIGTERM only after its replacement has loaded the app and
  reported ready (gunicorn's own HUP starts all new workers and stops the old ones
  at once, gunicorn #3394). A replacement that fails to boot aborts the reload and
  the old workers keep serving.
* **The broadcaster** (``--broadcaster MODULE:OBJ``) runs in the master: started
  after the first workers are forked, kept across reloads, stopped on exit.
* **Recycling** (``--max-requests`` with ``--max-requests-jitter``,
  ``--max-worker-age``, ``--max-worker-rss``): the master, not the worker, decides
  that a worker is due, starts its successor, and stops it once the successor is
  ready; one worker at a time, whatever the number due (gunicorn's own
  ``max_requests`` lets every worker exit as soon as it reaches the limit, several
  together, and readiness flaps: gunicorn #3427). The limits are checked on each turn
  of the master's loop (about once a second) and are soft: a due worker serves on
  until its successor is ready and its turn comes. While it waits for a successor the
  master does nothing else, as during a rolling reload (up to
  ``STATEKIT_READY_TIMEOUT``; a successor that fails puts recycling off 10 s).
* Crashed workers are replaced by gunicorn's arbiter as usual. A worker accepts a
  connection only while one of its threads is free (:class:`StatekitThreadWorker`),
  so a SIGKILLed worker loses only the requests it was executing, and the master
  logs how many (``worker N died with M requests in flight``).

Defaults (:data:`DEFAULTS`): gthread workers with 4 threads, keep-alive 5 s, worker
timeout 30 s (``--timeout``: gunicorn's, a worker whose main loop is silent that long
is aborted; a long WSGI request is not silence), graceful timeout 25 s (+ pre-stop 2 s:
inside the usual 30 s an orchestrator waits before SIGKILL), gunicorn's control
socket off. No ``gunicorn.conf.py`` is read, nor ``GUNICORN_CMD_ARGS`` (serve says
so when it is set); ``PORT`` and ``FORWARDED_ALLOW_IPS`` are read as gunicorn reads
them. ``--root-path`` is uvicorn's (the prefix a proxy strips): ``scope["root_path"]``
for an ASGI app, ``SCRIPT_NAME`` for a WSGI app. The app is wrapped in
:class:`~statekit.lifecycle.LifecycleMiddleware` (an ASGI app in
:class:`statekit.asgi.LifecycleMiddleware`) unless it already is (``StateKit(app)``,
``django_statekit.lifecycle.get_wsgi_application()``).

**Your own gunicorn.conf.py.** ``from statekit.gunicorn import *`` installs the same
behaviour through gunicorn's hooks: ``on_starting`` creates the shared drain state
and switches the arbiter's class to :class:`StatekitArbiter` (drain on TERM, rolling
HUP, broadcaster), the other hooks give workers their slot, report readiness and
close connections while draining. Options come from the environment:
``STATEKIT_PRE_STOP_DELAY`` (2), ``STATEKIT_DRAIN_MODE`` (reject),
``STATEKIT_BROADCASTER`` (``module:obj``), ``STATEKIT_READY_TIMEOUT`` (30),
``STATEKIT_MAX_REQUESTS``, ``STATEKIT_MAX_REQUESTS_JITTER``, ``STATEKIT_MAX_WORKER_AGE``
(seconds), ``STATEKIT_MAX_WORKER_RSS`` (MiB), all 0 (off); gunicorn's own
``max_requests`` and ``max_requests_jitter`` are taken over by the master when those
are unset. Wrap the
app yourself (the adapters do). If you define one of these hooks too, call ours from
it (``statekit.gunicorn.post_fork(server, worker)``). Switching the arbiter's class
relies on gunicorn internals (tested with gunicorn 27); plain gunicorn *without*
the hooks has none of this: its HUP replaces all workers at once and its TERM closes
the listeners immediately.

Limits: the master imports ``--broadcaster``'s module, so workers forked later
inherit it — a reload does not pick up changes to that module (restart for those);
keep the broadcaster out of the app's own module. ``preload_app`` (``--preload``)
defeats reloads of the app's code, as in gunicorn: serve refuses a reload then (the log
says why), where gunicorn's HUP forks new workers from the old code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import inspect
import math
import mmap
import os
import queue
import random
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import metrics
from .config import _MAX_SECONDS
from .errors import ConfigError, StatekitError
from .lifecycle import (
    BOOTING,
    DRAIN_MODES,
    EXITED,
    FREE,
    PRE_STOP_VARIABLE,
    READY,
    STARTING,
    DrainState,
    Lifecycle,
    LifecycleMiddleware,
    get_drain_state,
    set_drain_state,
)

try:
    import gunicorn as _gunicorn
except ImportError as e:  # the app is not read yet: name both extras (asgi has server's packages)
    raise ConfigError("statekit serve needs gunicorn: pip install 'statekit[server]' for a WSGI app "
                      "(Flask, Django), 'statekit[asgi]' for an ASGI app (FastAPI, Starlette, Django's "
                      "asgi.py)") from e
#: the oldest gunicorn :class:`StatekitThreadWorker` works with: gthread's
#: ``set_accept_enabled``, ``accept(listener)`` and ``finish_request(conn, fs)`` came in
#: 24.0, ``Response._emit_body`` in 26.2 (before it the body would leave before the headers)
_GUNICORN_MIN = (26, 2)
if tuple(_gunicorn.version_info[:2]) < _GUNICORN_MIN:
    raise ConfigError(f"statekit serve needs gunicorn 26.2 or later, not {_gunicorn.__version__}: "
                      "pip install --upgrade 'statekit[server]'")


@contextlib.contextmanager
def _unread_web_concurrency() -> Iterator[None]:
    """Hide ``WEB_CONCURRENCY`` from gunicorn's config module while it is imported, if
    it is not an int: that module reads it with ``int()`` at import time (its
    ``workers`` default), and the ValueError came before ``statekit serve`` had read
    its options (``statekit reload`` too, which never uses it). serve reads the
    variable itself (:func:`serve_main`: a usage error naming it, or ``--workers``
    wins) and always gives gunicorn its number of workers."""
    raw = os.environ.get("WEB_CONCURRENCY")
    hide = False
    if raw is not None and "gunicorn.config" not in sys.modules:
        try:
            int(raw)
        except ValueError:
            hide = True
    if hide:
        del os.environ["WEB_CONCURRENCY"]
    try:
        yield
    finally:
        if raw is not None and hide:
            os.environ["WEB_CONCURRENCY"] = raw


with _unread_web_concurrency():
    from gunicorn import config as gunicorn_config
    from gunicorn import sock, systemd, util
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter
    from gunicorn.errors import AppImportError, HaltServer
    from gunicorn.http import wsgi as gunicorn_wsgi
    from gunicorn.pidfile import Pidfile
    from gunicorn.workers.gthread import ThreadWorker

__all__ = [
    "DEFAULTS",
    "INTERFACES",
    "StatekitApplication",
    "StatekitArbiter",
    "StatekitThreadWorker",
    "child_exit",
    "detect_interface",
    "group_sigterm",
    "on_exit",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "pre_fork",
    "pre_request",
    "reload_main",
    "report_ready",
    "serve_main",
    "worker_exit",
]

#: gunicorn settings ``statekit serve`` uses unless told otherwise
DEFAULTS: dict[str, Any] = {
    # gthread that accepts only while a thread is free (see StatekitThreadWorker)
    "worker_class": "statekit.gunicorn.StatekitThreadWorker",
    "threads": 4,
    "keepalive": 5,  # longer than nginx's upstream keepalive_timeout below it
    "timeout": 30,
    "graceful_timeout": 25,  # + pre-stop delay 2 s < the usual 30 s kill timeout
    "control_socket_disable": True,
    "errorlog": "-",
}
_SLOTS = 256
#: ``statekit serve --interface`` choices
INTERFACES = ("auto", "asgi", "wsgi")
#: the worker class of each interface
WORKER_CLASSES = {"wsgi": DEFAULTS["worker_class"], "asgi": "statekit.gunicorn_asgi.StatekitUvicornWorker"}
#: seconds the master waits before recycling again after a successor failed to boot
RECYCLE_BACKOFF = 10.0
#: seconds a worker still importing the app gets to exit after the master's SIGTERM
#: (it exits at once, cleanly) before it is SIGKILLed (an import stuck in C code)
BOOT_STOP_GRACE = 1.0
#: seconds a gthread worker waits after SIGTERM to tell the master's stop from a signal
#: sent to the whole process group while the master drains (see StatekitThreadWorker.handle_exit)
GROUP_SIGNAL_GRACE = 0.25


@dataclass
class _Options:
    pre_stop_delay: float = 2.0
    drain_mode: str = "reject"
    broadcaster: Any = None
    ready_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_worker_age: float = 0.0
    max_worker_rss: int = 0  # bytes
    #: ``statekit serve --root-path``: the prefix a proxy serves the app under and strips
    root_path: str = ""

    @property
    def recycling(self) -> bool:
        return bool(self.max_requests or self.max_worker_age or self.max_worker_rss)

    @classmethod
    def from_env(cls) -> _Options:
        env = os.environ
        opts = cls(
            pre_stop_delay=_pre_stop_from_env(),
            drain_mode=env.get("STATEKIT_DRAIN_MODE", "reject"),
            ready_timeout=_ready_timeout_from_env(),
            **_recycling(env.get("STATEKIT_MAX_REQUESTS"), env.get("STATEKIT_MAX_REQUESTS_JITTER"),
                         env.get("STATEKIT_MAX_WORKER_AGE"), env.get("STATEKIT_MAX_WORKER_RSS"), env=True),
        )
        if env.get("STATEKIT_BROADCASTER"):
            opts.broadcaster = load_object(env["STATEKIT_BROADCASTER"])
        return opts


@dataclass
class _Runtime:
    """What the master keeps beside gunicorn's own state."""

    options: _Options
    drain: DrainState
    held: _HeldConnections = field(default_factory=lambda: _HeldConnections(_SLOTS))
    stopping: set[int] = field(default_factory=set)
    collected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("in_flight", "started", "completed", "rejected"), 0))
    lost: int = 0
    lost_at_term: int = 0
    term_at: float | None = None
    at_term: dict[str, int] | None = None
    broadcaster_started: bool = False
    reported: bool = False
    force_killing: bool = False
    recycle_after: float = 0.0  # monotonic time before which no worker is recycled
    #: pid -> monotonic time by which a worker stopped during its lifespan startup is SIGKILLed
    kill_after: dict[int, float] = field(default_factory=dict)


def _recycling(max_requests: str | None, jitter: str | None, age: str | None, rss_mib: str | None, *,
               env: bool = False) -> dict[str, Any]:
    """The recycling options from the command line (``--max-requests``) or the
    environment (``STATEKIT_MAX_REQUESTS``, with *env*), checked; ``None`` or ``""``
    is off. The RSS limit is given in MiB and returned in bytes."""
    out: dict[str, Any] = {}
    for key, raw, kind in (("max_requests", max_requests, int), ("max_requests_jitter", jitter, int),
                           ("max_worker_age", age, float), ("max_worker_rss", rss_mib, float)):
        name = f"STATEKIT_{key.upper()}" if env else "--" + key.replace("_", "-")
        try:
            value = kind(raw or 0)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a {'number' if kind is float else 'count'}") from None
        if value < 0:
            raise ConfigError(f"{name}={raw!r} must not be negative")
        if not math.isfinite(value):  # nan and inf were taken in silence ("never" is 0)
            raise ConfigError(f"{name}={raw!r} must be a finite number (0: never)")
        out[key] = value
    out["max_worker_rss"] = int(out["max_worker_rss"] * 2**20)
    return out


#: the levels gunicorn knows (it took any other word as info, in silence)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _pre_stop_from_env() -> float:
    """``STATEKIT_PRE_STOP_DELAY`` (default 2 s), checked: the hooks' setting and
    ``statekit serve --pre-stop-delay``'s default (the workers' lifecycle reads it too)."""
    return _seconds(os.environ.get(PRE_STOP_VARIABLE, "2"), PRE_STOP_VARIABLE)


def _ready_timeout_from_env() -> float:
    """``STATEKIT_READY_TIMEOUT`` (default 30 s), checked: the hooks' setting and
    ``statekit serve``'s."""
    return _seconds(os.environ.get("STATEKIT_READY_TIMEOUT", "30"), "STATEKIT_READY_TIMEOUT")


def _seconds(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value < 86400:
        raise ConfigError(f"{name}={raw!r} must be between 0 and 86400 seconds")
    return value


def load_object(target: str) -> Any:
    """Import ``module:attribute``; a :class:`ConfigError` says what is wrong."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{target!r} must be MODULE:OBJECT")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"cannot import {module!r}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module!r} has no attribute {attr!r}") from None
    return obj


def wrap_app(app: Any, interface: str | None = None) -> Any:
    """Wrap *app* in the lifecycle middleware of its *interface* (``"wsgi"`` or
    ``"asgi"``; default: :func:`statekit.asgi.interface_of`) unless it already is
    (Flask apps set up by ``StateKit(app)``, Django's wrapped handlers, a Starlette
    app with the middleware in its stack)."""
    from . import asgi

    if isinstance(app, (LifecycleMiddleware, asgi.LifecycleMiddleware)):
        return app
    if isinstance(getattr(app, "wsgi_app", None), LifecycleMiddleware):
        return app
    if any(getattr(m, "cls", None) is asgi.LifecycleMiddleware for m in getattr(app, "user_middleware", ())):
        return app
    from .config import Settings

    lifecycle = Lifecycle(Settings.from_env())
    if (interface or asgi.interface_of(app)) == "asgi":
        return asgi.LifecycleMiddleware(app, lifecycle)
    return LifecycleMiddleware(app, lifecycle)


#: bytes of an import error's message :func:`detect_interface`'s child sends (within PIPE_BUF)
_DETECT_MESSAGE = 2048


class AppConfigError(ConfigError):
    """Importing the app raised :class:`~statekit.errors.ConfigError` (its message):
    the app refuses to start as configured (``StateKit(app)`` at module level without
    ``STATEKIT_REDIS_URL`` or ``STATEKIT_SECRET_KEYS``), which every worker would
    repeat. ``statekit serve`` says it in one line, exit 4, before starting gunicorn."""


def import_app(app_uri: str) -> Any:
    """The app ``MODULE:APP`` (or ``MODULE:factory()``), as gunicorn imports it.

    :raises AppImportError: (gunicorn's, which it reports in one line, without a
        traceback) the module does not exist, nor the attribute, or the factory's
        call is wrong. An import failing inside the app's module propagates as it is:
        its traceback is what its author needs."""
    from .cli import module_missing

    try:
        return util.import_app(app_uri)
    except ImportError as e:
        module = app_uri.partition(":")[0]
        if not module_missing(module, e):
            raise
        raise AppImportError(f"cannot import {module!r}: {e}") from e


def detect_interface(app_uri: str, timeout: float = 60.0) -> str:
    """``"asgi"`` or ``"wsgi"``: the interface of the app ``MODULE:APP`` (or
    ``MODULE:factory()``), found by importing it in a forked child. The master must
    not import the app itself: the workers it forks later would inherit the module,
    and a reload would not see new code. An app that fails to import (or takes longer
    than *timeout*) counts as WSGI: its workers then fail to boot with the import's
    own traceback, which its author needs (a bug in the app's code), as before.

    :raises ConfigError: the app's module or attribute does not exist (the one line
        of :func:`import_app`'s :exc:`AppImportError`): nothing is started.
    :raises AppConfigError: importing the app raised a ``ConfigError``: its message
        is the whole story, and every worker would fail with it."""
    from .asgi import interface_of

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        answer = b"?"
        try:
            os.close(read_end)
            answer = interface_of(import_app(app_uri)).encode()
        except AppImportError as e:
            answer = b"!" + str(e).encode(errors="replace")[:_DETECT_MESSAGE]
        except ConfigError as e:
            answer = b"C" + str(e).encode(errors="replace")[:_DETECT_MESSAGE]
        except BaseException:  # noqa: BLE001,S110 -- any other failure: the workers report it
            pass
        finally:
            with contextlib.suppress(OSError):
                os.write(write_end, answer)
            os._exit(0)
    os.close(write_end)
    answer = b""
    try:
        if select.select([read_end], [], [], timeout)[0]:
            answer = os.read(read_end, _DETECT_MESSAGE + 1)  # written at once, less than PIPE_BUF
    finally:
        os.close(read_end)
        if not answer:  # hung, or died without a word
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    kind = answer.decode(errors="replace")
    if kind.startswith("!"):
        raise ConfigError(kind[1:])
    if kind.startswith("C"):
        raise AppConfigError(kind[1:])
    return kind if kind in ("asgi", "wsgi") else "wsgi"


# -- the worker ------------------------------------------------------------------


class _HeldConnections:
    """How many connections each worker holds with a request on them not yet
    answered, one counter per drain-state slot, in anonymous shared memory created
    by the master before forking (like :class:`~statekit.lifecycle.DrainState`). A
    worker writes only its own counter; the master reads it when the worker dies."""

    _ITEM = struct.Struct("q")

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, slots * self._ITEM.size)

    def get(self, index: int) -> int:
        return int(self._ITEM.unpack_from(self._map, index * self._ITEM.size)[0])

    def add(self, index: int, delta: int) -> None:
        """Not atomic: the caller serialises the writes to *index* (one lock per worker)."""
        self._ITEM.pack_into(self._map, index * self._ITEM.size, self.get(index) + delta)

    def reset(self, index: int) -> None:
        self._ITEM.pack_into(self._map, index * self._ITEM.size, 0)


class _Captured:
    """Stands in for a socket: keeps what is sent."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


class _OneSendResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's HTTP/1 response, holding the status line and headers back until
    the first body bytes (or the end of the response) so that both leave in one
    send. gunicorn sends them apart: a worker killed between the two leaves a proxy
    with a 200 it has passed on and can no longer retry elsewhere, and a body cut
    short. Bodies over :attr:`COALESCE` bytes (no copy of large bodies), files
    sent with ``sendfile`` and the chunks after the first go out as gunicorn sends
    them."""

    COALESCE = 256 * 1024
    sock: Any
    headers_sent: bool
    _head: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        sock, captured = self.sock, _Captured()
        self.sock = captured
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._head = captured.data

    def _send_head(self) -> None:
        head, self._head = self._head, None
        if head:
            self.sock.sendall(head)

    def _emit_body(self, data: bytes) -> None:
        if self._head is None or len(data) > self.COALESCE:
            self._send_head()
            super()._emit_body(data)
            return
        sock, captured = self.sock, _Captured()
        self.sock = captured
        try:
            super()._emit_body(data)
        finally:
            self.sock = sock
        head, self._head = self._head, None
        sock.sendall(head + captured.data)

    def sendfile(self, respiter: Any) -> bool:
        self.send_headers()
        self._send_head()
        return bool(super().sendfile(respiter))

    def close(self) -> None:
        self.send_headers()
        self._send_head()
        super().close()


class StatekitThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that accepts a connection only while one of its
    threads is free.

    gthread accepts eagerly, up to ``worker_connections`` (1000), and queues what
    its threads cannot serve yet: a SIGKILL (the OOM killer, a crash, gunicorn's
    own timeout) then resets every queued connection, requests another worker could
    have served. This worker stops polling the listeners while all its threads are
    busy, so waiting connections stay in the kernel's accept queue, which belongs to
    the listening socket the master and the other workers share, and survive the
    kill. What a killed worker loses is what it was executing (at most ``threads``
    requests), plus a request that arrives on one of its kept-alive connections (a
    kept-alive connection it is not serving is closed by the kernel at the kill, as
    any server may close an idle keep-alive connection; nginx keeps none to
    ``statekit serve`` in deploy/nginx).

    Each connection is counted in shared memory from just before ``accept()`` (or
    from when its next request is handed to a thread) until its response is
    written or the thread parks it, so the master's ``died with N requests in
    flight`` counts what the kill lost. It may count one connection too many: one a
    thread waits on for its first bytes (the client's request is lost if it was on
    its way), or the one being accepted when another worker took it. A request that
    has arrived on a kept-alive connection the worker has not polled yet is lost
    and not counted.

    A request on a kept-alive connection that finds every thread busy waits in a
    line of the worker's own; freed threads take turns between that line and a new
    connection from the listeners, so busy keep-alive clients cannot starve new
    connections (a readiness probe, a client without keep-alive).

    A response's status line and headers leave with its first body bytes, in one
    send (:class:`_OneSendResponse`): a kill between the two would leave a proxy
    with a response it has started to pass on and cannot retry.

    Keep-alive, the stop sequence and the hooks are gthread's. Use it from your own
    ``gunicorn.conf.py`` with ``worker_class = "statekit.gunicorn.StatekitThreadWorker"``.
    """

    statekit_slot: int
    statekit_held: _HeldConnections | None = None

    def init_process(self) -> None:
        self._statekit_busy = 0  # handed to the pool, finish_request not run yet (main thread)
        self._statekit_reserved = False  # accept() counted the connection it is taking
        self._statekit_waiting: deque[Any] = deque()  # kept-alive requests no thread has taken yet
        self._statekit_accept_turn = False
        self._statekit_lock = threading.Lock()
        # gthread builds its responses through this module global (HTTP/2 passes its own)
        gunicorn_wsgi.Response = _OneSendResponse
        super().init_process()

    def _statekit_count(self, conn: Any, held: bool) -> None:
        """Count *conn* as held (a request on it unanswered) or no longer held."""
        if getattr(conn, "statekit_counted", False) == held:
            return
        conn.statekit_counted = held
        counters = self.statekit_held
        if counters is not None:
            with self._statekit_lock:
                counters.add(self.statekit_slot, 1 if held else -1)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop, unless the signal went to the whole process group (systemd's
        default ``KillMode=control-group``, dumb-init, ``kill -TERM -PGID``) while the
        master drains: the master sends its own SIGTERM once the pre-stop delay is
        over, and until then this worker serves the drain (503 + ``Connection:
        close``). The master may get the group's signal a moment after us, so the
        decision waits :data:`GROUP_SIGNAL_GRACE` seconds; a SIGTERM sent to this
        worker alone (not draining) takes effect then."""
        if not hasattr(self, "wsgi") and get_drain_state().workers_stopping:
            # the master's stop while the app loads: nothing to finish, so the process
            # ends here. Not SystemExit: it is raised in whatever frame the signal
            # interrupts, and where that frame swallows it (a finalizer: "Exception
            # ignored in ... __del__"), the worker loaded, reported ready and served on
            # until the master's SIGKILL at the graceful timeout
            self.alive = False
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)
        if not self.alive or getattr(self, "_statekit_exit_pending", False):
            return
        self._statekit_exit_pending = True
        timer = threading.Timer(GROUP_SIGNAL_GRACE, self._statekit_wake, (sig, frame))
        timer.daemon = True
        timer.start()

    def _statekit_wake(self, sig: int, frame: Any) -> None:
        try:  # decided in the main loop, where gthread's own handler runs
            self.method_queue.defer(self._statekit_decide_exit, sig, frame)
        except Exception:  # noqa: BLE001 -- its queue not set up yet (still booting): stop
            self.alive = False

    def _statekit_decide_exit(self, sig: int, frame: Any) -> None:
        self._statekit_exit_pending = False
        if not group_sigterm(self.log):
            super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self._statekit_busy < self.cfg.threads)

    def accept(self, listener: Any) -> None:
        # one select() may report several listeners readable; take no more than we serve
        if self._statekit_busy >= self.cfg.threads:
            return
        # counted before the accept: the connection is ours from the syscall on, and
        # the thread may wait for the GIL long after it (a kill meanwhile loses it)
        counters = self.statekit_held
        if counters is not None:
            with self._statekit_lock:
                counters.add(self.statekit_slot, 1)
        self._statekit_reserved = True
        try:
            super().accept(listener)
        finally:
            if self._statekit_reserved:  # nothing to accept: another worker took it
                self._statekit_reserved = False
                if counters is not None:
                    with self._statekit_lock:
                        counters.add(self.statekit_slot, -1)

    def enqueue_req(self, conn: Any) -> None:
        self._statekit_busy += 1
        if self._statekit_reserved:  # the connection accept() just took: counted already
            self._statekit_reserved = False
            conn.statekit_counted = True
        else:
            self._statekit_count(conn, True)
        if self._statekit_busy >= self.cfg.threads:
            super().set_accept_enabled(False)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        try:
            return super().handle(conn)
        finally:
            self._statekit_count(conn, False)

    def handle_request(self, req: Any, conn: Any) -> Any:
        try:
            return super().handle_request(req, conn)
        finally:
            # the response is written: the client has it even if we die now
            self._statekit_count(conn, False)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._statekit_busy -= 1
        if fs.cancelled():  # never ran
            self._statekit_count(conn, False)
        super().finish_request(conn, fs)
        self._statekit_dispatch()

    # -- kept-alive connections wait here, not in the pool's queue -----------------

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._statekit_arrived(conn)

    def on_pending_socket_readable(self, conn: Any, client: Any) -> None:
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        conn.data_ready = True
        self._statekit_arrived(conn)

    def _statekit_arrived(self, conn: Any) -> None:
        """A request arrived on a connection this worker holds: a free thread takes
        it, else it waits in line here (counted: a kill loses it)."""
        self._statekit_count(conn, True)
        if self._statekit_busy < self.cfg.threads and not self._statekit_waiting:
            self.enqueue_req(conn)
        else:
            self._statekit_waiting.append(conn)

    def _statekit_dispatch(self) -> None:
        """Give free threads to the waiting kept-alive requests, taking turns with
        the listeners: busy kept-alive clients alone would keep every thread busy and
        the listeners unpolled, and new connections would wait in the accept queue
        for as long as they keep sending."""
        while self._statekit_waiting and self._statekit_busy < self.cfg.threads:
            self._statekit_accept_turn = not self._statekit_accept_turn
            if self._statekit_accept_turn and self.alive and self._statekit_accept_one():
                continue
            self.enqueue_req(self._statekit_waiting.popleft())

    def _statekit_accept_one(self) -> bool:
        busy = self._statekit_busy
        for listener in self.sockets:  # non-blocking since run() first polled them
            self.accept(listener)
            if self._statekit_busy > busy:
                return True
        return False


# -- the arbiter -----------------------------------------------------------------


class StatekitArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter with drain on TERM, a rolling HUP and the broadcaster."""

    statekit: _Runtime
    LISTENERS: list[Any]
    pidfile: Any

    def handle_term(self) -> None:
        self.statekit.term_at = time.monotonic()
        raise StopIteration

    # -- broadcaster and worker count ------------------------------------------

    def manage_workers(self) -> None:
        rt = self.statekit
        self._kill_hung_startups()
        active = sorted(
            ((pid, w) for pid, w in self.WORKERS.items() if pid not in rt.stopping), key=lambda x: x[1].age
        )
        for _ in range(self.num_workers - len(active)):
            self.spawn_worker()
        while len(active) > self.num_workers:
            pid, _ = active.pop(0)
            rt.stopping.add(pid)
            self.kill_worker(pid, signal.SIGTERM)
        if rt.options.recycling and len(active) == self.num_workers and time.monotonic() >= rt.recycle_after:
            self._recycle_one(active)
        broadcaster = rt.options.broadcaster
        if broadcaster is not None and not rt.broadcaster_started and os.getpid() == self.pid:
            rt.broadcaster_started = True
            try:
                broadcaster.start()
                self.log.info("statekit: broadcaster %r started in the master", broadcaster)
            except Exception:
                self.log.exception("statekit: broadcaster failed to start; serving without it")

    # -- recycling -----------------------------------------------------------------

    def _due(self, pid: int, worker: Any) -> str | None:
        """Why the worker *pid* is due for recycling, or ``None``."""
        opts = self.statekit.options
        info = self.statekit.drain.slot_info(worker.statekit_slot)
        if info.pid != pid or info.state != READY:
            return None
        limit = getattr(worker, "statekit_max_requests", 0)
        if limit and info.started >= limit:
            return f"{info.started} requests (limit {limit})"
        if opts.max_worker_age and time.time() - info.ready_at >= opts.max_worker_age:
            return f"{time.time() - info.ready_at:.0f}s old (limit {opts.max_worker_age:g}s)"
        if opts.max_worker_rss:
            rss = _rss(pid)
            if rss >= opts.max_worker_rss:
                return f"RSS {rss / 2**20:.0f} MiB (limit {opts.max_worker_rss / 2**20:g} MiB)"
        return None

    def _recycle_one(self, active: list[tuple[int, Any]]) -> None:
        """Replace the oldest due worker, if any: successor first, then the old one
        stops. One per call, and the master does nothing else meanwhile, so at most
        one worker is ever being replaced (the others wait for the next turns)."""
        for pid, worker in active:  # oldest first
            reason = self._due(pid, worker)
            if reason is None:
                continue
            self.log.info("statekit: recycling worker %s (%s): its successor starts first", pid, reason)
            if not self._replace(pid) and not self._stop_requested():
                self.statekit.recycle_after = time.monotonic() + RECYCLE_BACKOFF
                self.log.error("statekit: recycling of worker %s put off %.0fs: its successor did not "
                               "become ready", pid, RECYCLE_BACKOFF)
            return

    def _replace(self, pid: int | None) -> bool:
        """Start a worker, wait until it is ready, then stop *pid* (when given and
        still there). ``False`` (and *pid* left serving) if the new one never got ready."""
        if not self._spawn_and_wait_ready():
            return False
        if pid is not None and pid in self.WORKERS:
            self.statekit.stopping.add(pid)
            self.kill_worker(pid, signal.SIGTERM)
        return True

    def _kill_hung_startups(self) -> None:
        """SIGKILL the workers stopped during their lifespan startup
        (:meth:`_spawn_and_wait_ready`) that are still there after the graceful timeout:
        the startup hangs (they hold no request). They stayed until the master stopped."""
        rt = self.statekit
        now = time.monotonic()
        for pid, deadline in list(rt.kill_after.items()):
            if pid not in self.WORKERS:
                del rt.kill_after[pid]
            elif now >= deadline:
                del rt.kill_after[pid]
                # gunicorn then logs "was sent SIGKILL! Perhaps out of memory?": say why
                self.log.warning("statekit: worker %s still in its lifespan startup %ss after SIGTERM: "
                                 "SIGKILL (no request lost)", pid, self.cfg.graceful_timeout)
                self.kill_worker(pid, signal.SIGKILL)

    def _stop_broadcaster(self) -> None:
        rt = self.statekit
        if rt.broadcaster_started and rt.options.broadcaster is not None:
            rt.broadcaster_started = False
            try:
                rt.options.broadcaster.stop(5.0)
            except Exception:
                self.log.exception("statekit: broadcaster did not stop cleanly")

    # -- signals while the master is busy ----------------------------------------

    def _queued(self, *signals: int) -> bool:
        """Whether one of *signals* is queued for the main loop; the queue is left as
        it was, so the main loop still handles everything once the master is free."""
        pending = []
        with contextlib.suppress(queue.Empty):
            while True:
                pending.append(self.SIG_QUEUE.get_nowait())
        for sig in pending:
            self.SIG_QUEUE.put_nowait(sig)
        return any(s in signals for s in pending)

    def _stop_requested(self) -> bool:
        return self._queued(signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def _quick_requested(self) -> bool:
        return self._queued(signal.SIGINT, signal.SIGQUIT)

    # -- rolling reload ------------------------------------------------------------

    def reload(self) -> None:
        """Reload the configuration like gunicorn, then replace the workers one at a
        time, each old one stopped only once its replacement is ready. Refused, in the
        log, when the app was imported in the master (``preload_app``, ``statekit serve
        --preload``): the new workers would be forks of the old code (gunicorn's HUP
        keeps it too)."""
        if self.cfg.preload_app:
            self.log.error("statekit: reload refused: the app was imported once in the master (--preload), "
                           "so new workers would run the code loaded at start; restart statekit serve to "
                           "run new code (or serve without --preload to reload it)")
            return
        self._stats["reloads"] += 1
        old_address = self.cfg.address
        for k in self.cfg.env:
            if k in self.cfg.env_orig:
                os.environ[k] = self.cfg.env_orig[k]
            else:
                os.environ.pop(k, None)
        self.app.reload()
        self.setup(self.app)
        self.log.reopen_files()
        if old_address != self.cfg.address:
            for lnr in self.LISTENERS:
                lnr.close()
            self.LISTENERS = sock.create_sockets(self.cfg, self.log)
            self.log.info("Listening at: %s", ",".join(str(lnr) for lnr in self.LISTENERS))
        self.cfg.on_reload(self)
        if self.pidfile is not None:
            self.pidfile.unlink()
        if self.cfg.pidfile is not None:
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        util._setproctitle(f"master [{self.proc_name}]")
        self.rolling_replace()

    def rolling_replace(self) -> bool:
        """Replace every current worker, one at a time. Returns whether all were."""
        rt = self.statekit
        by_age = sorted(self.WORKERS.items(), key=lambda x: x[1].age)
        old = [pid for pid, _ in by_age if pid not in rt.stopping]
        target = self.num_workers
        self.log.info("statekit: rolling reload: replacing %d workers one at a time", len(old))
        started = time.monotonic()
        for i in range(max(target, len(old))):
            pid = old[i] if i < len(old) else None
            if i >= target:  # fewer workers now: no successor
                if pid is not None and pid in self.WORKERS:
                    rt.stopping.add(pid)
                    self.kill_worker(pid, signal.SIGTERM)
            elif not self._replace(pid):
                if self._stop_requested():  # not a failure: the server stops, as asked
                    self.log.info("statekit: rolling reload aborted by a stop request; the workers stop")
                else:
                    self.log.error("statekit: rolling reload aborted; %d old workers keep serving",
                                   len([p for p in old[i:] if p in self.WORKERS]))
                return False
        self.log.info("statekit: rolling reload done in %.2fs", time.monotonic() - started)
        return True

    def _spawn_and_wait_ready(self) -> bool:
        rt = self.statekit
        pid = self.spawn_worker()
        worker = self.WORKERS[pid]
        slot = worker.statekit_slot
        deadline = time.monotonic() + rt.options.ready_timeout
        while time.monotonic() < deadline:
            info = rt.drain.slot_info(slot)
            if info.pid == pid and info.state == READY:
                return True
            try:
                self.reap_workers()
            except HaltServer as e:
                self.log.error("statekit: new worker %s failed to boot: %s", pid, e.reason)
                with contextlib.suppress(Exception):
                    worker.tmp.close()
                _collect(self, worker)
                return False
            if pid not in self.WORKERS:
                self.log.error("statekit: new worker %s exited before it was ready", pid)
                return False
            if self._stop_requested():
                return False
            time.sleep(0.02)
        info = rt.drain.slot_info(slot)
        if info.pid == pid and info.state == READY:  # just in time
            return True
        rt.stopping.add(pid)
        if info.pid == pid and info.state == STARTING:
            # the app loaded, its lifespan startup still runs: told to stop, it ends the
            # startup, never reports ready and runs its shutdown; a startup that hangs for
            # good never ends, and gunicorn's worker timeout does not end it either (it
            # counts from the worker's first heartbeat, which comes once it serves):
            # SIGKILLed after the graceful timeout (_kill_hung_startups)
            self.log.error("statekit: new worker %s not ready within %gs (lifespan startup): stopped",
                           pid, rt.options.ready_timeout)
            rt.kill_after[pid] = time.monotonic() + self.cfg.graceful_timeout
            self.kill_worker(pid, signal.SIGTERM)
            return False
        self.log.error("statekit: new worker %s not ready within %gs: killed", pid, rt.options.ready_timeout)
        # still loading the app, it holds no request; a SIGTERM would only take effect
        # once the import ends (gthread checks it in its loop), and the worker would
        # hang on until gunicorn's worker timeout (as stop() does for booting workers)
        self.kill_worker(pid, signal.SIGKILL)
        return False

    # -- shutdown ------------------------------------------------------------------

    def _totals(self) -> dict[str, int]:
        live = self.statekit.drain.totals()
        return {k: v + self.statekit.collected[k] for k, v in live.items()}

    def _drain(self) -> None:
        rt = self.statekit
        delay = rt.options.pre_stop_delay
        rt.drain.start_drain(serve_for=delay)
        self.log.info("statekit: draining (mode %s): readiness 503, Connection: close; "
                      "stopping to accept in %.1fs", rt.drain.mode, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._quick_requested():
            with contextlib.suppress(HaltServer):
                self.reap_workers()
            time.sleep(max(min(0.05, deadline - time.monotonic()), 0))

    def _kill_booting(self) -> None:
        """SIGKILL the workers still importing the app (stuck: they hold no request)."""
        rt = self.statekit
        for pid, w in list(self.WORKERS.items()):
            slot = getattr(w, "statekit_slot", None)
            if slot is not None and rt.drain.slot_info(slot).state == BOOTING:
                # gunicorn then logs "was sent SIGKILL! Perhaps out of memory?": say why
                self.log.warning("statekit: worker %s still loading the app %gs after SIGTERM: SIGKILL "
                                 "(no request lost)", pid, BOOT_STOP_GRACE)
                self.kill_worker(pid, signal.SIGKILL)

    def stop(self, graceful: bool = True) -> None:
        """Drain (after TERM), close the listeners, stop the workers within the
        graceful timeout, SIGKILL the rest, stop the broadcaster, report.

        Every counter of the report covers the same period, from TERM (or the start
        of the stop) to exit: ``in_flight_at_term`` the requests inside the app at
        TERM, ``completed`` and ``rejected`` the requests that ended so since,
        ``force_killed`` the workers SIGKILLed at the graceful timeout,
        ``lost_in_flight`` the requests lost since TERM (force-killed workers' and any
        worker that died or gave up meanwhile; a worker killed earlier had its own
        ``died with N requests in flight`` line)."""
        rt = self.statekit
        if rt.reported:
            return
        # after USR2 another master accepts on these same listeners: hand them over at
        # once (as gunicorn does) instead of answering this master's share of new
        # connections 503 for the pre-stop delay
        shared = self.reexec_pid != 0 or self.master_pid != 0
        drain = graceful and rt.term_at is not None and not rt.drain.draining and not shared
        if rt.at_term is None:
            rt.term_at = rt.term_at or time.monotonic()
            rt.at_term = self._totals()
            rt.lost_at_term = rt.lost
        if drain:
            self._drain()
        unlink = self.reexec_pid == self.master_pid == 0 and not self.systemd and not self.cfg.reuse_port
        sock.close_sockets(self.LISTENERS, unlink)
        self.LISTENERS = []
        sig = signal.SIGTERM if graceful and not self._quick_requested() else signal.SIGQUIT
        limit = time.monotonic() + (self.cfg.graceful_timeout if sig == signal.SIGTERM else 2.0)
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(sig)
        rt.drain.stop_workers()
        self.kill_workers(sig)
        # a worker still loading the app holds no request: it exits at once (its
        # SIGTERM handler), or is SIGKILLed soon (before a short graceful timeout
        # ends too: it is not force-killed); one running its lifespan startup
        # (STARTING) is waited for like one serving: its shutdown runs
        booting_until: float | None = min(time.monotonic() + BOOT_STOP_GRACE, limit - 0.2)
        while (self.WORKERS or self.dirty_arbiter_pid) and time.monotonic() < limit:
            if booting_until is not None and time.monotonic() >= booting_until:
                booting_until = None
                self._kill_booting()
            if sig == signal.SIGTERM and self._quick_requested():
                self.log.info("Quick shutdown requested")
                sig = signal.SIGQUIT
                self.kill_workers(signal.SIGQUIT)
                limit = time.monotonic() + 2.0
            with contextlib.suppress(HaltServer):
                self.reap_workers()
            self.reap_dirty_arbiter()
            time.sleep(0.05)
        forced = list(self.WORKERS.values())
        with contextlib.suppress(HaltServer):
            self.reap_workers()  # count workers that gave up on their own before the kill
        forced = [w for w in forced if w.pid in self.WORKERS]
        rt.force_killing = True
        waited = f"the graceful timeout ({self.cfg.graceful_timeout}s)" if sig == signal.SIGTERM else "2s"
        for w in forced:
            held = 0
            with contextlib.suppress(IndexError, AttributeError):
                held = _held(rt, w.statekit_slot)
            rt.lost += held
            # gunicorn then logs "was sent SIGKILL! Perhaps out of memory?": say why
            self.log.warning("statekit: worker %s still running after %s: SIGKILL, %d requests in "
                             "flight lost", w.pid, waited, held)
        self.kill_workers(signal.SIGKILL)
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(signal.SIGKILL)
        time.sleep(0.05 if forced else 0)
        with contextlib.suppress(HaltServer):
            self.reap_workers()
        self.reap_dirty_arbiter()
        self._stop_broadcaster()
        now = self._totals()
        at = rt.at_term or now
        rt.reported = True
        self.log.info(
            "statekit: shutdown: in_flight_at_term=%d completed=%d rejected=%d force_killed=%d "
            "lost_in_flight=%d seconds=%.2f",
            at["in_flight"], now["completed"] - at["completed"], now["rejected"] - at["rejected"],
            len(forced), rt.lost - rt.lost_at_term, time.monotonic() - (rt.term_at or time.monotonic()),
        )


# -- hooks (also for users' own gunicorn.conf.py) -----------------------------------


def _runtime(server: Any) -> _Runtime:
    return server.statekit  # type: ignore[no-any-return]


def on_starting(server: Any) -> None:
    """Master, before anything forks: create the shared drain state and switch the
    arbiter to :class:`StatekitArbiter`."""
    if not isinstance(server, StatekitArbiter):
        server.__class__ = StatekitArbiter
    # USR2 re-executes the master: with the interpreter's own command line, so that
    # ``python -m statekit serve`` (whose sys.argv[0] is a package's __main__.py that
    # cannot run as a script) comes back as itself
    server.START_CTX["args"] = [sys.executable, *sys.orig_argv[1:]]
    # prometheus_client's multiprocess mode: a scrape of any worker reports them all
    server.statekit_metrics_dir = metrics._private_dir()
    if getattr(server, "statekit", None) is None:
        options = getattr(server.app, "statekit_options", None) or _Options.from_env()
        if options.drain_mode not in DRAIN_MODES:
            raise ConfigError(f"drain mode {options.drain_mode!r} must be one of {', '.join(DRAIN_MODES)}")
        if not options.max_requests and server.cfg.max_requests:
            # gunicorn's own: every worker would exit at its limit, several at once
            options.max_requests = server.cfg.max_requests
            options.max_requests_jitter = server.cfg.max_requests_jitter
        drain = DrainState(_SLOTS, mode=options.drain_mode)
        set_drain_state(drain)
        server.statekit = _Runtime(options=options, drain=drain)


def pre_fork(server: Any, worker: Any) -> None:
    """Master: give the new worker a free slot in the drain state."""
    rt = _runtime(server)
    used = {getattr(w, "statekit_slot", None) for w in server.WORKERS.values()}
    for index in range(1, rt.drain.slots):
        if index not in used:
            if rt.drain.slot_info(index).state != FREE:
                _collect_slot(server, index)
            worker.statekit_slot = index
            opts = rt.options
            worker.statekit_max_requests = (
                opts.max_requests + random.randint(0, opts.max_requests_jitter)  # noqa: S311 -- spreading only
                if opts.max_requests else 0)
            rt.drain.reset_slot(index, state=BOOTING, forked_at=time.time())
            rt.held.reset(index)
            return
    raise HaltServer("statekit: no free worker slot (more than 255 workers?)")


def post_fork(server: Any, worker: Any) -> None:
    """Worker, just forked: bind our slot; the master's broadcaster is not ours."""
    rt = _runtime(server)
    rt.drain.bind(worker.statekit_slot)
    worker.statekit_held = rt.held
    rt.options.broadcaster = None
    rt.broadcaster_started = False
    worker.statekit_root_path = rt.options.root_path
    # the master recycles (one worker at a time): no worker stops itself at a request count
    worker.max_requests = sys.maxsize
    config = getattr(worker, "config", None)  # uvicorn-worker's uvicorn Config
    if config is not None and hasattr(config, "limit_max_requests"):
        config.limit_max_requests = None
        if rt.options.root_path:  # uvicorn's --root-path: scope["root_path"]
            config.root_path = rt.options.root_path


def post_worker_init(worker: Any) -> None:
    """Worker, app loaded: report ready (the master's rolling reload waits for it), and
    make every response that starts while draining close its connection. A worker
    that reports readiness itself once it serves (:mod:`statekit.gunicorn_asgi`) is
    left to do so; any ASGI worker's app closes connections through the ASGI
    lifecycle middleware."""
    from .asgi import interface_of

    if getattr(worker, "statekit_reports_ready", False):
        return
    if interface_of(worker.wsgi) == "wsgi":
        lifecycle = _lifecycle_of(worker.wsgi)
        if lifecycle is not None:
            # the readiness checks run once before the worker reports ready, as an ASGI
            # worker's do in its lifespan startup: the first probe finds the clients built
            lifecycle.warm()
        worker.wsgi = _close_when_draining(worker.wsgi, getattr(worker, "statekit_root_path", ""))
    if getattr(worker, "alive", True) and not getattr(worker, "_statekit_exit_pending", False):
        # not when told to stop while loading the app: a reload would stop the old
        # worker for one about to exit
        report_ready(worker)


def _lifecycle_of(app: Any) -> Lifecycle | None:
    """The :class:`~statekit.lifecycle.Lifecycle` of a WSGI *app* wrapped in its
    middleware: Django's ``get_wsgi_application()`` is the middleware, a Flask app's
    ``wsgi_app`` is (``StateKit(app)``); ``None`` for any other app."""
    for candidate in (app, getattr(app, "wsgi_app", None)):
        if isinstance(candidate, LifecycleMiddleware):
            return candidate.lifecycle
    return None


def report_ready(worker: Any) -> None:
    """Worker: log that it is ready and set its slot READY (the master's rolling
    reload and recycling stop an old worker only after this)."""
    drain = get_drain_state()
    forked_at = drain.slot_info(drain.slot).forked_at
    # logged before the flag is set, so the line precedes the old worker's exit in the log
    worker.log.info("statekit: worker %s ready %.3fs after fork", os.getpid(), time.time() - forked_at)
    drain.mark_ready()


def group_sigterm(log: Any) -> bool:
    """Worker, :data:`GROUP_SIGNAL_GRACE` after a SIGTERM: whether it was the signal
    sent to the whole process group while the master drains (logged; the worker
    then serves the drain until the master's own SIGTERM), not one to obey now."""
    drain = get_drain_state()
    if drain.draining and not drain.workers_stopping:
        log.info("statekit: worker %s: SIGTERM sent to the process group; serving the drain until "
                 "the master stops the workers", os.getpid())
        return True
    return False


def _close_when_draining(app: Any, root_path: str = "") -> Any:
    """Wrap the worker's WSGI callable: a response that starts while draining closes
    its connection, also for a request that began before the drain (``pre_request``
    only sees requests that begin during it). gunicorn drops the ``Connection``
    header the lifecycle middleware sets and decides on its own response object.

    A *root_path* (``statekit serve --root-path``: the prefix a proxy serves the app
    under and strips) goes before ``SCRIPT_NAME``; ``PATH_INFO`` is the path received,
    as uvicorn's ``root_path`` is for an ASGI app."""

    def wsgi(environ: Any, start_response: Any) -> Any:
        if root_path:
            environ["SCRIPT_NAME"] = root_path + environ.get("SCRIPT_NAME", "")
        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            if get_drain_state().draining:
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wsgi


def pre_request(worker: Any, req: Any) -> None:
    """Worker: while draining, close the connection after this response (gunicorn
    drops a ``Connection`` header set by the app, so this is how it gets there)."""
    if get_drain_state().draining:
        req.must_close = True


def worker_exit(server: Any, worker: Any) -> None:
    """Worker exiting on its own: mark the slot, so the master knows it was not killed."""
    if os.getpid() == getattr(worker, "pid", None):
        metrics.flush()  # its last counts, for the scrapes that other workers answer
        with contextlib.suppress(Exception):
            get_drain_state().mark_exited()
    elif hasattr(server, "statekit"):  # gunicorn calls it in the master for a vanished pid
        _collect(server, worker)


def child_exit(server: Any, worker: Any) -> None:
    """Master, a worker was reaped: add its counters to the totals, free its slot."""
    metrics.mark_process_dead(worker.pid)
    _collect(server, worker)


def on_exit(server: Any) -> None:
    """Master, exiting: remove the metrics directory :func:`on_starting` created."""
    metrics._remove_private_dir(getattr(server, "statekit_metrics_dir", None))


def _collect(server: Any, worker: Any) -> None:
    rt = _runtime(server)
    rt.stopping.discard(worker.pid)
    slot = getattr(worker, "statekit_slot", None)
    if slot is not None and rt.drain.slot_info(slot).pid in (worker.pid, 0):
        _collect_slot(server, slot)


def _collect_slot(server: Any, index: int) -> None:
    rt = _runtime(server)
    info = rt.drain.slot_info(index)
    if info.state == FREE:
        return
    for k in rt.collected:
        rt.collected[k] += getattr(info, k)
    held = _held(rt, index)
    if info.pid and not rt.force_killing and (info.state != EXITED or held > 0):
        # killed, crashed, or gave up on requests at its own graceful timeout
        rt.lost += held
        how = "exited" if info.state == EXITED else "died"
        server.log.warning("statekit: worker %s %s with %d requests in flight", info.pid, how, held)
    rt.collected["in_flight"] -= info.in_flight
    rt.drain.reset_slot(index)
    rt.held.reset(index)


def _rss(pid: int) -> int:
    """Resident memory of *pid* in bytes (Linux ``/proc``; 0 when unknown)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _held(rt: _Runtime, index: int) -> int:
    """Requests the worker in slot *index* holds unanswered: the connections its
    threads hold (:class:`StatekitThreadWorker`), at least the requests inside the
    app (any worker class: the lifecycle middleware counts those)."""
    return max(rt.drain.slot_info(index).in_flight, rt.held.get(index), 0)


_HOOKS = {
    "on_starting": on_starting,
    "pre_fork": pre_fork,
    "post_fork": post_fork,
    "post_worker_init": post_worker_init,
    "pre_request": pre_request,
    "worker_exit": worker_exit,
    "child_exit": child_exit,
    "on_exit": on_exit,
}


# -- the application and the commands ------------------------------------------------


class StatekitApplication(BaseApplication):  # type: ignore[misc]
    """A gunicorn application: statekit's :data:`DEFAULTS`, the hooks above, the app
    from ``MODULE:APP`` (or ``MODULE:create_app()``) wrapped in the lifecycle
    middleware unless it already is. No ``gunicorn.conf.py`` is read.

    :param interface: ``"wsgi"`` (gthread workers, :class:`StatekitThreadWorker`) or
        ``"asgi"`` (uvicorn workers, ``statekit.gunicorn_asgi.StatekitUvicornWorker``);
        an explicit ``worker_class`` in *options* wins.
    :param max_requests: recycle a worker after this many requests (plus up to
        *max_requests_jitter*), one worker at a time; 0: never. Likewise
        *max_worker_age* (seconds since ready) and *max_worker_rss* (bytes).
    """

    def __init__(self, app_uri: str, options: dict[str, Any] | None = None, *,
                 pre_stop_delay: float = 2.0, drain_mode: str = "reject",
                 broadcaster: Any = None, ready_timeout: float = 30.0, interface: str = "wsgi",
                 max_requests: int = 0, max_requests_jitter: int = 0, max_worker_age: float = 0.0,
                 max_worker_rss: int = 0, root_path: str = "") -> None:
        if drain_mode not in DRAIN_MODES:
            raise ConfigError(f"drain mode {drain_mode!r} must be one of {', '.join(DRAIN_MODES)}")
        if interface not in WORKER_CLASSES:
            raise ConfigError(f"interface {interface!r} must be 'wsgi' or 'asgi'")
        self.app_uri = app_uri
        self.interface = interface
        self.options = {**DEFAULTS, "worker_class": WORKER_CLASSES[interface], **(options or {})}
        self.statekit_options = _Options(pre_stop_delay, drain_mode, broadcaster, ready_timeout,
                                         max_requests, max_requests_jitter, max_worker_age, max_worker_rss,
                                         root_path)
        super().__init__(prog="statekit serve")

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)
        for name, hook in _HOOKS.items():
            self.cfg.set(name, hook)

    def load(self) -> Any:
        try:
            return wrap_app(import_app(self.app_uri), self.interface)
        except Exception as e:
            if not self.cfg.preload_app:  # in a worker: gunicorn reports it (exit 3, or 4)
                raise
            # in the master (--preload): as a worker's failure would be (gunicorn: the
            # message alone, "Error: ...", exit 1)
            if isinstance(e, AppImportError):
                print(f"statekit serve: {e}", file=sys.stderr)
                sys.exit(Arbiter.APP_LOAD_ERROR)
            traceback.print_exc()
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def run(self) -> None:
        try:
            StatekitArbiter(self).run()
        except RuntimeError as e:
            print(f"\nError: {e}\n", file=sys.stderr)
            sys.exit(1)


def _bind(text: str) -> str:
    """An argparse type: *text* if gunicorn's parser reads it as an address with a
    port of 0 to 65535 (``HOST:PORT``, ``[V6]:PORT``), a ``unix:PATH`` or ``fd://N``.
    A host alone is refused, not served on gunicorn's default port 8000."""
    from .cli import port_number

    try:
        address = util.parse_address(text, default_port="")
    except RuntimeError as e:
        said = "names no port" if str(e).startswith("''") else str(e).rstrip(".")
        raise argparse.ArgumentTypeError(
            f"{text!r}: {said}; write HOST:PORT (127.0.0.1:8000), unix:PATH or fd://N") from None
    if isinstance(address, tuple):
        port_number(str(address[1]))
    return text


def _binds(parser: argparse.ArgumentParser, given: list[str] | None) -> tuple[list[str], str | None]:
    """The addresses serve listens on, and the variable they came from (``None``: the
    command line or the default). Every ``--bind`` given (gunicorn listens on each;
    serve kept the last one alone, in silence); else ``STATEKIT_BIND``; else
    ``0.0.0.0:$PORT`` when ``PORT`` is set, gunicorn's default, which platforms that
    give the app its port rely on (Heroku, Cloud Run, Render: serve listened on
    127.0.0.1:8000 there, out of their reach); else ``127.0.0.1:8000``."""
    from .cli import port_number

    if given:
        return given, None
    if "STATEKIT_BIND" in os.environ or os.environ.get("PORT") is None:
        bind = _or_env(parser, None, "--bind", "STATEKIT_BIND", "127.0.0.1:8000", _bind)
        return [bind], "STATEKIT_BIND" if "STATEKIT_BIND" in os.environ else None
    return [_or_env(parser, None, "--bind", "PORT", "", lambda raw: f"0.0.0.0:{port_number(raw)}")], "PORT"


def _forwarded_allow_ips(text: str) -> str:
    """An argparse type: *text* if gunicorn's setting takes it (addresses and networks,
    comma-separated, or ``*``); gunicorn said it as ``Error:`` after loading its config."""
    try:
        gunicorn_config.validate_string_to_addr_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return text


def _keep_alive(text: str) -> int:
    """An argparse type: whole seconds, 0 (no keep-alive) to 86400, as gunicorn's and
    uvicorn's keep-alive timeouts take them."""
    from .cli import bounded_int

    return bounded_int(text, 0, _MAX_SECONDS, "a number of seconds (a whole number, 0 to 86400)")


def _timeout(text: str) -> int:
    """An argparse type: gunicorn's worker timeout, whole seconds, 0 (none) to 86400."""
    from .cli import bounded_int

    return bounded_int(text, 0, _MAX_SECONDS,
                       "a number of seconds (a whole number, 0 to 86400; 0: no timeout)")


def _root_path(text: str) -> str:
    """An argparse type: a path prefix, ``""`` or ``/`` then ASCII, no ``/`` at the end
    (uvicorn puts it before each request's path as it is)."""
    if text and not (text.startswith("/") and not text.endswith("/") and text.isascii()
                     and text.isprintable() and " " not in text and "?" not in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a path prefix: '/' then ASCII, no '/' at the end (for example /api)")
    return text


def _workers(text: str) -> int:
    """An argparse type: a number of workers, 1 or more."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1 or more)")
    return count


def _or_env(parser: argparse.ArgumentParser, given: Any, option: str, variable: str, default: str,
            check: Callable[[str], Any]) -> Any:
    """*option*'s value: *given* on the command line, else the environment's *variable*
    (read by *check*, the option's argparse type: a value it refuses is a usage error
    naming the variable), else *default*."""
    if given is not None:
        return given
    raw = os.environ.get(variable)
    try:
        return check(default if raw is None else raw)
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument {option}, from {variable} in the environment: {e}")


#: what serve says of an address it cannot listen on, by errno ({other}: where to choose another)
_BIND_REFUSALS = {
    errno.EADDRINUSE: "is in use (another server listens there): stop it, or choose {other}",
    errno.EADDRNOTAVAIL: "is not an address of this machine: choose {other} (one of its addresses; "
                         "0.0.0.0 or [::] for all of them)",
    errno.EACCES: "needs privileges (a port below 1024: root, or CAP_NET_BIND_SERVICE): run it so, "
                  "or choose {other}",
}


def _bind_refusal(bind: str) -> str | None:
    """Why *bind* cannot be listened on (one of :data:`_BIND_REFUSALS`), for serve to say
    so at once, exit 2: the exact TCP address bound and released
    (:func:`statekit.embedded.bind_error`); ``None`` if it can be. gunicorn tries five
    times, a second apart, then logs it and exits 1. ``None`` too, gunicorn's handling
    kept: a ``unix:`` or ``fd://`` bind, a host name that does not resolve (a lookup
    may pass on a retry), another error; and when the master is handed its listening
    sockets (systemd's socket activation, the re-exec after USR2): it binds nothing
    then, and the address is in use by that very socket. A check, then a bind: an
    address taken in between still gets gunicorn's retries."""
    from .embedded import bind_error

    if "GUNICORN_FD" in os.environ or systemd.listen_fds(unset_environment=False):
        return None
    address = util.parse_address(bind)
    if not isinstance(address, tuple):
        return None
    error = bind_error(f"{address[0]}:{address[1]}")
    if error is None or error.errno is None:
        return None
    return _BIND_REFUSALS.get(error.errno)  # a gaierror's errno is an EAI_* code: none of these


#: ``statekit serve``'s exit status when an option or an environment variable is refused
#: (argparse's); when the app cannot be loaded, gunicorn's ``Arbiter.APP_LOAD_ERROR`` (4);
#: gunicorn's master exits ``Arbiter.WORKER_BOOT_ERROR`` (3) when a worker fails to boot.
#: A ``ConfigError`` serve raises carries its status as ``exit_status`` (statekit.cli.main)
_USAGE_ERROR = 2


def serve_main(argv: Sequence[str]) -> int:
    """``statekit serve MODULE:APP [...]``: run a WSGI or ASGI app on gunicorn with
    drain, rolling reload, worker recycling and the broadcaster. Exits when the
    master stops.

    Exit status: 0 stopped (SIGTERM, SIGINT); 2 a usage error (an option or an
    environment variable refused, an address it cannot listen on), nothing started;
    4 the app cannot be loaded (its module or attribute does not exist, or importing
    it raised ConfigError: one line), nothing started, as gunicorn's "App failed to
    load"; 3 a worker failed to boot (the app's import raised its own error, whose
    traceback the worker logs, or the master's with --preload; an ASGI lifespan startup
    failed), as gunicorn's; 1
    anything else (a missing extra, an address gunicorn could not bind after its
    retries)."""
    from .cli import PlainHelpFormatter, default_pid_file

    p = argparse.ArgumentParser(prog="statekit serve", description=serve_main.__doc__,
                                formatter_class=PlainHelpFormatter)
    p.add_argument("app", metavar="MODULE:APP",
                   help="WSGI or ASGI app, or an app factory: MODULE:create_app()")
    p.add_argument("--interface", choices=INTERFACES, default="auto",
                   help="wsgi: gthread workers; asgi: uvicorn workers (pip install 'statekit[asgi]'); auto "
                        "(default): asgi when the app is an async callable. Either way the app is imported "
                        "once in a short-lived child process first: a missing module, or a ConfigError of "
                        "the app's, is one line before anything starts")
    p.add_argument("--bind", type=_bind, action="append", metavar="HOST:PORT",
                   help="address to listen on: HOST:PORT, unix:PATH or fd://N; repeat it to listen on "
                        "several (default $STATEKIT_BIND, else 0.0.0.0:$PORT when PORT is set, as gunicorn "
                        "does, else 127.0.0.1:8000)")
    p.add_argument("--forwarded-allow-ips", type=_forwarded_allow_ips, metavar="IPS",
                   help="the proxies trusted for X-Forwarded-Proto (the scheme the app sees; under ASGI "
                        "X-Forwarded-For too): addresses or networks, comma-separated, or '*' for any, as "
                        "gunicorn's and uvicorn's option (default $FORWARDED_ALLOW_IPS or 127.0.0.1,::1)")
    p.add_argument("--keep-alive", type=_keep_alive, default=DEFAULTS["keepalive"], metavar="S",
                   help="seconds an idle keep-alive connection is kept open (default 5); behind a load "
                        "balancer, longer than its idle timeout (AWS ALB: 60), so it never sends a request "
                        "on a connection the server is closing")
    p.add_argument("--access-logfile", metavar="FILE",
                   help="write an access log line per request to FILE ('-': standard output), as gunicorn's "
                        "option (default: none)")
    p.add_argument("--timeout", type=_timeout, default=DEFAULTS["timeout"], metavar="S",
                   help="gunicorn's worker timeout: a worker silent for S seconds (hung: no heartbeat "
                        "from its main loop) is aborted and replaced. A long WSGI request is not silence "
                        "(the worker's main thread beats on), an ASGI app blocking its event loop is "
                        "(default 30; 0: none)")
    p.add_argument("--root-path", type=_root_path, default="", metavar="PATH",
                   help="the prefix a proxy serves the app under and strips before passing requests on "
                        "(uvicorn's option): ASGI apps get it as scope['root_path'] (FastAPI's url_for and "
                        "docs use it), WSGI apps as SCRIPT_NAME, PATH_INFO being the path received "
                        "(default none)")
    p.add_argument("--preload", action="store_true",
                   help="import the app once in the master, then fork the workers (gunicorn's preload_app): "
                        "statekit's clients built at import (a Cache, a session store) start afresh in "
                        "each worker, with connections of their own. A reload (SIGHUP, statekit reload) is "
                        "then refused, in the log: the workers would run the code loaded at start; restart "
                        "to deploy")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="worker processes, 4 threads each for WSGI, one event loop each for ASGI "
                        "(default $WEB_CONCURRENCY or 2)")
    p.add_argument("--graceful-timeout", default=str(DEFAULTS["graceful_timeout"]), metavar="S",
                   help="seconds in-flight requests get after accepting stops (default 25)")
    p.add_argument("--pre-stop-delay", metavar="S",
                   help="seconds to drain before accepting stops (default $STATEKIT_PRE_STOP_DELAY or 2)")
    p.add_argument("--drain-mode", choices=DRAIN_MODES, default="reject",
                   help="while draining: reject new requests with 503 at once (default; a proxy retries "
                        "them elsewhere) or serve them until the pre-stop delay ends")
    p.add_argument("--pid", metavar="FILE",
                   help="write the master's pid here, for statekit reload (default "
                        "./.statekit/serve-HOST-PORT.pid, which statekit reload finds from this directory; "
                        "'' for none)")
    p.add_argument("--broadcaster", metavar="MODULE:OBJ", help="a statekit Broadcaster to run in the master")
    p.add_argument("--max-requests", metavar="N",
                   help="recycle a worker after N requests: its successor starts first, one worker at a time "
                        "(default $STATEKIT_MAX_REQUESTS or 0: never)")
    p.add_argument("--max-requests-jitter", metavar="N",
                   help="add 0 to N requests to each worker's limit, so workers come due apart "
                        "(default $STATEKIT_MAX_REQUESTS_JITTER or 0)")
    p.add_argument("--max-worker-age", metavar="S",
                   help="recycle a worker S seconds after it became ready (default $STATEKIT_MAX_WORKER_AGE "
                        "or 0: never)")
    p.add_argument("--max-worker-rss", metavar="MIB",
                   help="recycle a worker whose resident memory reaches MIB mebibytes (Linux; "
                        "default $STATEKIT_MAX_WORKER_RSS or 0: never)")
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info", metavar="L",
                   help=f"gunicorn's log level: {', '.join(LOG_LEVELS)} (default info)")
    opts = p.parse_args(list(argv))
    try:  # what the command line and the environment say: a ConfigError is a usage error
        binds, bind_variable = _binds(p, opts.bind)
        opts.workers = _or_env(p, opts.workers, "--workers", "WEB_CONCURRENCY", "2", _workers)
        if opts.forwarded_allow_ips is None and os.environ.get("FORWARDED_ALLOW_IPS") is not None:
            # gunicorn's own default reads it too, unchecked: a wrong one was its "Error:" line
            opts.forwarded_allow_ips = _or_env(p, None, "--forwarded-allow-ips", "FORWARDED_ALLOW_IPS", "",
                                               _forwarded_allow_ips)
        # each option's default is its variable (as the gunicorn hooks read them): serve ignored
        # STATEKIT_MAX_REQUESTS & co. in silence
        given = {"max_requests": opts.max_requests, "max_requests_jitter": opts.max_requests_jitter,
                 "max_worker_age": opts.max_worker_age, "max_worker_rss": opts.max_worker_rss}
        from_env = _recycling(*(os.environ.get(f"STATEKIT_{key.upper()}") if raw is None else None
                                for key, raw in given.items()), env=True)
        from_cli = _recycling(*given.values())
        recycling = {key: from_env[key] if raw is None else from_cli[key] for key, raw in given.items()}
        if ":" not in opts.app:
            raise ConfigError(f"{opts.app!r} must be MODULE:APP (for example myproject.wsgi:application)")
        if os.environ.get("GUNICORN_CMD_ARGS", "").strip():
            # gunicorn's command reads it, a BaseApplication does not: ignored in silence, a
            # --bind or --workers there too (no gunicorn.conf.py is read either)
            print(f"statekit serve: GUNICORN_CMD_ARGS is not read ({os.environ['GUNICORN_CMD_ARGS']!r}): "
                  "give statekit serve's own options (statekit serve --help)", file=sys.stderr)
        # finite: inf was an OverflowError traceback, nan a delay that never ended
        opts.graceful_timeout = _seconds(opts.graceful_timeout, "--graceful-timeout")
        opts.pre_stop_delay = (_pre_stop_from_env() if opts.pre_stop_delay is None
                               else _seconds(opts.pre_stop_delay, "--pre-stop-delay"))
        ready_timeout = _ready_timeout_from_env()
        for bind in binds:
            refusal = _bind_refusal(bind)
            if refusal is not None:  # in one line, as statekit dev says it of its ports
                other = f"another with --bind or {bind_variable}" if bind_variable else "another --bind"
                print(f"statekit serve: {bind} {refusal.format(other=other)}", file=sys.stderr)
                return _USAGE_ERROR
        if opts.pid is None:
            opts.pid = default_pid_file(binds[0])
            os.makedirs(os.path.dirname(opts.pid), exist_ok=True)
        if recycling["max_worker_rss"] and not os.path.exists(f"/proc/{os.getpid()}/statm"):
            raise ConfigError("--max-worker-rss reads /proc (Linux): not available here")
        sys.path.insert(0, os.getcwd())
        broadcaster = load_object(opts.broadcaster) if opts.broadcaster else None
        if broadcaster is not None and not (callable(getattr(broadcaster, "start", None))
                                            and callable(getattr(broadcaster, "stop", None))):
            raise ConfigError(f"{opts.broadcaster!r} has no start() and stop(timeout) methods")
        if broadcaster is not None and inspect.iscoroutinefunction(broadcaster.stop):
            raise ConfigError(f"{opts.broadcaster!r} is an asyncio broadcaster: the master runs no event "
                              "loop. Give --broadcaster a statekit Broadcaster (same keys and values: the "
                              "app reads them with SharedValue.aget()), or run the AsyncBroadcaster in the "
                              "app's lifespan")
    except ConfigError as e:
        e.exit_status = _USAGE_ERROR  # type: ignore[attr-defined]  # for statekit.cli.main
        raise
    interface = opts.interface
    if interface == "asgi":  # a missing extra: one line, before anything starts (the app's check too)
        importlib.import_module("statekit.gunicorn_asgi")
    # the app imported once, in a short-lived child, whatever --interface says (which
    # wins over what it finds): a missing app module or attribute, or the app's own
    # ConfigError, is one line here, nothing started, exit 4 (gunicorn's APP_LOAD_ERROR)
    try:
        found = detect_interface(opts.app)
    except AppConfigError as e:  # the app refuses to start as configured
        print(f"statekit serve: {opts.app}: ConfigError: {e}", file=sys.stderr)
        return int(Arbiter.APP_LOAD_ERROR)
    except ConfigError as e:  # no such module or attribute
        e.exit_status = Arbiter.APP_LOAD_ERROR  # type: ignore[attr-defined]  # for statekit.cli.main
        raise
    if interface == "auto":
        interface = found
        if interface == "asgi":
            importlib.import_module("statekit.gunicorn_asgi")
    application = StatekitApplication(
        opts.app,
        {"bind": binds, "workers": opts.workers, "graceful_timeout": math.ceil(opts.graceful_timeout),
         "pidfile": opts.pid or None, "loglevel": opts.log_level,
         "forwarded_allow_ips": opts.forwarded_allow_ips, "keepalive": opts.keep_alive,
         "accesslog": opts.access_logfile, "timeout": opts.timeout,
         "preload_app": opts.preload},
        pre_stop_delay=opts.pre_stop_delay,
        drain_mode=opts.drain_mode,
        broadcaster=broadcaster,
        ready_timeout=ready_timeout,
        interface=interface,
        root_path=opts.root_path,
        **recycling,
    )
    try:
        application.run()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def reload_main(argv: Sequence[str]) -> int:
    """``statekit reload [--pid FILE | PID]``: zero-downtime reload of a running
    ``statekit serve`` (sends SIGHUP to its master). Without arguments, the one
    started from the current directory (its pid file under ``.statekit/``). A pid
    file is stale, and refused, when the process it names started after it was
    written (its server died without removing it and the pid went to another)."""
    from .cli import PlainHelpFormatter, check_pid_file, check_serve_master, find_pid_file

    p = argparse.ArgumentParser(prog="statekit reload", description=reload_main.__doc__,
                                formatter_class=PlainHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pid", dest="pidfile", metavar="FILE",
                   help="the master's pid file (serve --pid; default: the one under ./.statekit/)")
    g.add_argument("pid", nargs="?", type=int, help="the master's pid")
    opts = p.parse_args(list(argv))
    pid = opts.pid
    if pid is None and not opts.pidfile:
        opts.pidfile = find_pid_file()
    if opts.pidfile:
        try:
            with open(opts.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read a pid from {opts.pidfile}: {e}") from e
        check_pid_file(opts.pidfile, pid)
    if pid is None or pid <= 1:
        raise ConfigError(f"{pid!r} is not a master pid")
    check_serve_master(pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise StatekitError(f"no process {pid}: is statekit serve running?") from e
        raise StatekitError(f"cannot signal {pid}: {e}") from e
    print(f"statekit reload: sent SIGHUP to {pid}; workers are replaced one at a time")
    return 0
