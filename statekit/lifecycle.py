"""Process lifecycle: a drain state shared by a master and its workers, liveness and
readiness endpoints, and the WSGI middleware that drains.

The pattern: when a process is told to stop (SIGTERM), it first *drains* — its
readiness endpoint answers 503 and every response carries ``Connection: close`` so a
load balancer stops sending it work and retries elsewhere — then stops accepting,
lets in-flight requests finish, and exits.

* :class:`DrainState` is a small anonymous shared-memory block (``mmap``). Created in
  a master process before it forks, every worker sees the same drain flag, and each
  worker counts its requests in its own slot so the master can report them. Created
  anywhere else (a dev server, a unit test), it is simply process-local.
* :class:`Lifecycle` holds the endpoint paths, the drain mode and the readiness checks
  (Redis and S3 reachable within a small time budget).
* :class:`LifecycleMiddleware` wraps a WSGI app: it answers ``/healthz`` and
  ``/readyz`` itself and, while draining, either answers new requests
  ``503 + Retry-After`` before the app runs (mode ``reject``) or keeps serving until
  the pre-stop delay ends (mode ``serve``). :class:`statekit.asgi.LifecycleMiddleware`
  does the same for an ASGI app, and ``django_statekit.lifecycle`` for Django: every
  one of them asks :meth:`Lifecycle.admit` what to do with a request and answers
  with :meth:`Lifecycle.reply`, so the decisions and the answers are made here once.

Nothing here connects to anything at import or construction time; :meth:`Lifecycle.warm`
runs the readiness checks once when a worker starts (an ASGI app's lifespan startup:
:mod:`statekit.asgi`), so the first probe does not build their clients.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import _MAX_SECONDS, Settings, number, parse_url
from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "APP",
    "COUNTED",
    "DRAIN_MODES",
    "DrainState",
    "HEALTH",
    "Lifecycle",
    "LifecycleMiddleware",
    "OutageLog",
    "PRE_STOP_VARIABLE",
    "READINESS",
    "REJECT",
    "Reply",
    "SlotInfo",
    "WARM_TIMEOUT",
    "check_extras",
    "get_drain_state",
    "outage_name",
    "outages",
    "redis_check",
    "s3_check",
    "set_drain_state",
]

DRAIN_MODES = ("reject", "serve")

_MAGIC = b"SKLC"
_HEADER = struct.Struct("<4sIIIddQ")  # magic, draining, mode, pad, drain_started, serve_until, stopping
_HEADER_SIZE = 64
#: WSGI environ key set by :class:`LifecycleMiddleware` on the requests it counts
COUNTED = "statekit.lifecycle.counted"
_SLOT = struct.Struct("<qqqqqqdd")  # pid, state, in_flight, started, completed, rejected, forked, ready
_SLOT_SIZE = 64

#: slot states: STARTING is a worker that loaded the app and runs its lifespan
#: startup (an ASGI worker): unlike BOOTING, stopping it must let its shutdown run
FREE, BOOTING, READY, EXITED, STARTING = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SlotInfo:
    """What one worker's slot says (read by the master)."""

    pid: int
    state: int
    in_flight: int
    started: int
    completed: int
    rejected: int
    forked_at: float
    ready_at: float


class DrainState:
    """The drain flag and per-worker request counters, in anonymous shared memory.

    Create it in the master *before* forking: the mapping is ``MAP_SHARED``, so the
    flag the master sets is seen by every worker at its next request, with no
    syscall. Each worker writes only its own slot (``slot``, set after fork) and the
    master only reads slots, so no cross-process lock is needed; a worker killed with
    SIGKILL cannot leave a lock held. Within a process a :class:`threading.Lock`
    guards the read-modify-write of counters (threaded workers).

    :param slots: how many worker slots to reserve (the master needs one per live
        worker plus replacements during a rolling reload).
    :param mode: ``"reject"`` or ``"serve"`` (see :class:`LifecycleMiddleware`).
    """

    def __init__(self, slots: int = 1, *, mode: str = "reject") -> None:
        if mode not in DRAIN_MODES:
            raise ConfigError(f"drain mode {mode!r} must be one of {', '.join(DRAIN_MODES)}")
        if not 1 <= slots <= 4096:
            raise ConfigError(f"slots={slots!r} must be between 1 and 4096")
        self.slots = slots
        self.slot = 0
        self._map = mmap.mmap(-1, _HEADER_SIZE + slots * _SLOT_SIZE)
        self._lock = threading.Lock()
        self._closing = False
        _HEADER.pack_into(self._map, 0, _MAGIC, 0, DRAIN_MODES.index(mode), 0, 0.0, 0.0, 0)
        self.reset_slot(0, pid=os.getpid(), state=READY)

    # -- drain flag -------------------------------------------------------------

    def _header(self) -> tuple[Any, ...]:
        return _HEADER.unpack_from(self._map, 0)

    @property
    def draining(self) -> bool:
        """Whether the process (group) is draining. Cheap: one shared-memory read."""
        return bool(self._header()[1])

    @property
    def mode(self) -> str:
        return DRAIN_MODES[self._header()[2]]

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in DRAIN_MODES:
            raise ConfigError(f"drain mode {value!r} must be one of {', '.join(DRAIN_MODES)}")
        with self._lock:
            h = list(self._header())
            h[2] = DRAIN_MODES.index(value)
            _HEADER.pack_into(self._map, 0, *h)

    @property
    def drain_started(self) -> float:
        """``time.time()`` when draining began, 0.0 if not draining."""
        return float(self._header()[4])

    def start_drain(self, serve_for: float = 0.0) -> None:
        """Start draining (idempotent). In mode ``serve``, new requests are still
        served for *serve_for* seconds (the pre-stop delay); in mode ``reject`` they
        are refused at once."""
        with self._lock:
            h = list(self._header())
            if h[1]:
                return
            now = time.time()
            h[1], h[4], h[5] = 1, now, now + max(serve_for, 0.0)
            _HEADER.pack_into(self._map, 0, *h)

    def stop_drain(self) -> None:
        """Clear the flag (tests; a drain that was called off)."""
        with self._lock:
            h = list(self._header())
            h[1], h[4], h[5], h[6] = 0, 0.0, 0.0, 0
            _HEADER.pack_into(self._map, 0, *h)

    @property
    def workers_stopping(self) -> bool:
        """Whether the master has told the workers to stop (the pre-stop delay is
        over). Until then, a worker of a draining group that gets SIGTERM got the
        signal sent to the whole process group, not the master's."""
        return bool(self._header()[6])

    def stop_workers(self) -> None:
        """Master: the workers are told to stop now (see :attr:`workers_stopping`)."""
        with self._lock:
            h = list(self._header())
            h[6] = 1
            _HEADER.pack_into(self._map, 0, *h)

    @property
    def closing(self) -> bool:
        """Whether responses should close their connections: while draining, or
        once :meth:`close_connections` was called in this process."""
        return self._closing or self.draining

    def close_connections(self) -> None:
        """This process alone is stopping (a worker replaced by a reload or recycled
        while the others serve on): from now on its responses carry ``Connection:
        close``, so a kept-alive client is told before its connection goes, instead
        of finding it closed under its next request. Process-local: not shared."""
        self._closing = True

    def accepting(self, mode: str | None = None) -> bool:
        """Whether a new request should run the app now."""
        h = self._header()
        if not h[1]:
            return True
        if (mode or DRAIN_MODES[h[2]]) == "serve":
            return time.time() < float(h[5])
        return False

    # -- slots ------------------------------------------------------------------

    def _slot_offset(self, index: int) -> int:
        if not 0 <= index < self.slots:
            raise IndexError(f"slot {index} out of range (0..{self.slots - 1})")
        return _HEADER_SIZE + index * _SLOT_SIZE

    def slot_info(self, index: int) -> SlotInfo:
        return SlotInfo(*_SLOT.unpack_from(self._map, self._slot_offset(index)))

    def reset_slot(self, index: int, *, pid: int = 0, state: int = FREE, forked_at: float = 0.0) -> None:
        _SLOT.pack_into(self._map, self._slot_offset(index), pid, state, 0, 0, 0, 0, forked_at, 0.0)

    def _update(self, index: int, add: Mapping[str, int] = {}, put: Mapping[str, float] = {}) -> None:  # noqa: B006
        off = self._slot_offset(index)
        with self._lock:
            values = list(_SLOT.unpack_from(self._map, off))
            for name, delta in add.items():
                values[_FIELDS[name]] += delta
            for name, value in put.items():
                values[_FIELDS[name]] = value
            _SLOT.pack_into(self._map, off, *values)

    def bind(self, index: int) -> None:
        """In a freshly forked worker: use slot *index* and record our pid."""
        self.slot = index
        self._lock = threading.Lock()
        self._update(index, put={"pid": os.getpid(), "state": BOOTING})

    def mark_starting(self) -> None:
        """The worker loaded the app and runs its lifespan startup (not ready yet)."""
        self._update(self.slot, put={"state": STARTING})

    def mark_ready(self) -> None:
        """The worker loaded the app and is about to accept requests."""
        self._update(self.slot, put={"state": READY, "ready_at": time.time()})

    def mark_exited(self) -> None:
        """The worker is exiting on its own (not killed)."""
        self._update(self.slot, put={"state": EXITED})

    def request_started(self) -> None:
        self._update(self.slot, add={"in_flight": 1, "started": 1})

    def request_finished(self) -> None:
        self._update(self.slot, add={"in_flight": -1, "completed": 1})

    def request_rejected(self) -> None:
        self._update(self.slot, add={"rejected": 1})

    def totals(self) -> dict[str, int]:
        """Sums over the slots in use: ``in_flight``, ``started``, ``completed``, ``rejected``."""
        out = dict.fromkeys(("in_flight", "started", "completed", "rejected"), 0)
        for i in range(self.slots):
            info = self.slot_info(i)
            if info.state != FREE:
                for k in out:
                    out[k] += getattr(info, k)
        return out


_FIELDS = {"pid": 0, "state": 1, "in_flight": 2, "started": 3, "completed": 4, "rejected": 5,
           "forked_at": 6, "ready_at": 7}

_state: DrainState | None = None
_state_lock = threading.Lock()


def get_drain_state() -> DrainState:
    """This process's drain state: the one a gunicorn master installed before forking,
    else a process-local one created on first use."""
    global _state
    if _state is None:
        with _state_lock:
            if _state is None:
                _state = DrainState()
    return _state


def set_drain_state(state: DrainState | None) -> None:
    """Install *state* as this process's drain state (the master does this before
    forking; ``None`` resets to a fresh process-local one on next use)."""
    global _state
    _state = state


# -- readiness checks ---------------------------------------------------------

Check = Callable[[float], object]


def check_extras(url: str, *, blobs: bool = False) -> None:
    """Raise a :class:`ConfigError` with the ``pip install`` line when the packages
    the backend of *url* needs are missing: redis-py for Redis URLs; with *blobs*,
    what a blob store of that scheme needs (``boto3``, ``puremagic``). The adapters
    call it at start-up and the readiness checks on every run, so a missing extra
    fails start and ``/readyz`` instead of the first request that uses it."""
    kind = parse_url(url).kind
    if blobs:
        from .blobs import require_extras

        require_extras(kind)
    elif kind == "redis":
        from .backends import require

        require("redis", feature="redis:// URLs")


def redis_check(url: str) -> Check:
    """A readiness check that PINGs the Redis at *url* within the budget it is given."""

    def check(timeout: float) -> object:
        check_extras(url)
        from .redis import get_client, translate_errors

        client = get_client(url, socket_timeout=timeout, socket_connect_timeout=timeout, retries=0)
        with translate_errors("readiness check"):
            return client.ping()

    return check


def s3_check(url: str) -> Check:
    """A readiness check that sends ``HeadBucket`` for an ``s3://`` URL as its store
    would (:func:`statekit.blobs.s3.readiness_check`: its credentials, profile and
    errors), or checks a ``file://`` directory is writable, within the budget it is given."""
    parsed = parse_url(url, kinds=("s3", "file", "memory"))

    def check(timeout: float) -> object:
        check_extras(url, blobs=True)
        if parsed.scheme == "memory":
            return True
        if parsed.scheme == "file":
            if not os.access(parsed.path, os.W_OK | os.X_OK):
                raise OSError(f"{parsed.path} is not a writable directory")
            return True
        from .blobs.s3 import readiness_check

        readiness_check(url, timeout)  # the store's errors: a missing bucket, no credentials
        return True

    return check


class OutageLog:
    """Logs backend outages once per change of state, not once per request.

    The first failure of a backend (``down``) logs one WARNING with the reason (the
    details that 503 pages never show: host, port, bucket, key); further failures
    log nothing until the backend answers again (``up``), which logs one WARNING too
    (an operator who saw the first needs the second). Checking is one dict lookup,
    so calling :meth:`up` on every successful request costs nothing. Thread-safe;
    state is per process (each worker logs its own view).

    :param logger: default the ``statekit.outage`` logger.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("statekit.outage")
        self._down: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_down(self, name: str | None = None) -> bool:
        """Whether *name* (any backend when ``None``) is known to be down."""
        return bool(self._down) if name is None else name in self._down

    def down(self, name: str, reason: BaseException | str) -> None:
        """*name* failed: a WARNING with *reason* if it was up."""
        if name in self._down:
            return
        with self._lock:
            if name in self._down:
                return
            self._down[name] = time.monotonic()
        text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
        self.logger.warning("statekit: %s unavailable (%s); answering 503 until it is back", name, text)

    def up(self, name: str) -> None:
        """*name* answered: a WARNING saying so if it was down."""
        if name not in self._down:
            return
        with self._lock:
            since = self._down.pop(name, None)
        if since is not None:
            self.logger.warning("statekit: %s available again after %.1f s", name, time.monotonic() - since)

    def reset(self) -> None:
        """Forget every known outage without logging (tests)."""
        with self._lock:
            self._down.clear()

    def all_up(self) -> None:
        """Every backend answered (a passing readiness check)."""
        for name in list(self._down):
            self.up(name)


#: the process's outage log, shared by the Flask and Django adapters
outages = OutageLog()

#: statekit modules an outage may come from -> the capability and its URL setting
_ORIGINS = {
    "statekit.sessions": ("session store", "session_url"),
    "statekit.cache": ("cache", "cache_url"),
    "statekit.cache.near": ("cache", "cache_url"),
    "statekit.cache.redis": ("cache", "cache_url"),
    "statekit.broadcast.values": ("broadcast", "broadcast_url"),
    "statekit.broadcast.hub": ("broadcast", "broadcast_url"),
    "statekit.broadcast.scheduler": ("broadcast", "broadcast_url"),
    "statekit.broadcast.redis": ("broadcast", "broadcast_url"),
    "statekit.broadcast": ("broadcast", "broadcast_url"),
    "statekit.blobs": ("blob store", "blobs_url"),
    "statekit.blobs.s3": ("blob store", "blobs_url"),
    "statekit.blobs.local": ("blob store", "blobs_url"),
}


def outage_name(error: BaseException, settings: Settings | None = None) -> str:
    """What failed, for :class:`OutageLog`: the capability whose code raised *error*
    (found in its traceback) and, from *settings*, its backend's password-free URL,
    e.g. ``"cache redis://10.0.0.5:6379/0"``; ``"a backend"`` when unknown."""
    from .blobs import BlobStore

    tb = error.__traceback__
    origin: tuple[str, str] | None = None
    store: BlobStore | None = None
    while tb is not None:  # the innermost statekit frame that names a capability
        origin = _ORIGINS.get(str(tb.tb_frame.f_globals.get("__name__", "")), origin)
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, BlobStore):  # it knows its own URL (a Django storage's OPTIONS)
            store = owner
        tb = tb.tb_next
    if origin is None:
        return "a backend"
    if origin[0] == "blob store" and store is not None:
        return f"blob store {store.describe()}"
    url = getattr(settings, origin[1], None) if settings is not None else None
    return f"{origin[0]} {parse_url(url).redacted()}" if url else origin[0]


def _checks_from_settings(settings: Settings) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    seen: set[str] = set()
    for name in ("redis_url", "cache_url", "session_url", "broadcast_url"):
        url = getattr(settings, name)
        if url and url not in seen and parse_url(url).kind == "redis":
            seen.add(url)
            checks["redis" if len(seen) == 1 else f"redis:{name[:-4]}"] = redis_check(url)
    if settings.blobs_url and parse_url(settings.blobs_url).kind != "memory":
        checks["blobs"] = s3_check(settings.blobs_url)
    return checks


# -- lifecycle and middleware ---------------------------------------------------

#: what :meth:`Lifecycle.admit` decides for a request: answer liveness, answer
#: readiness, refuse it (draining), or run the app
HEALTH, READINESS, REJECT, APP = "health", "ready", "reject", "app"
#: seconds :meth:`Lifecycle.warm` waits at most for the checks' first run at start
WARM_TIMEOUT = 10.0
#: the variable of the drain's pre-stop delay (``statekit serve``, the gunicorn hooks,
#: plain uvicorn)
PRE_STOP_VARIABLE = "STATEKIT_PRE_STOP_DELAY"
_REASONS = {200: "OK", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    """A response the lifecycle gives itself, before any app runs: an endpoint's JSON
    or the rejection of a request while draining. Every middleware (WSGI, ASGI,
    Django) sends it as it is, adding only ``Connection: close`` where its server
    lets an app set it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def json(cls, status: int, body: Mapping[str, Any], extra: Iterable[tuple[str, str]] = ()) -> Reply:
        data = json.dumps(body, sort_keys=True).encode()
        headers = (("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                   ("Cache-Control", "no-store"), *extra)
        return cls(status, headers, data)

    @property
    def status_line(self) -> str:
        """``"503 Service Unavailable"``, as WSGI wants it."""
        return f"{self.status} {_REASONS.get(self.status, '')}".rstrip()


class Lifecycle:
    """Endpoints, drain mode and readiness checks for one app.

    :param settings: when given, readiness checks for its Redis URLs and blob store
        are added (reachable within *budget*).
    :param checks: more checks, ``name -> callable(timeout)``; a check passes when it
        returns without raising.
    :param mode: ``"reject"`` or ``"serve"``; ``None`` follows the drain state (which
        ``statekit serve --drain-mode`` sets).
    :param budget: seconds the readiness endpoint may spend on all checks (they run
        concurrently); a check still running after it counts as failed.
    :param cache_ttl: readiness results are reused this long, so probes from many
        load balancers do not multiply the load on Redis.
    :param drain: the drain state; default: :func:`get_drain_state` at request time.
    :param pre_stop_delay: seconds an ASGI app served by plain uvicorn keeps serving
        the drain after SIGTERM before uvicorn stops (:mod:`statekit.asgi`); ``None``:
        ``STATEKIT_PRE_STOP_DELAY`` from the environment, as ``statekit serve`` reads
        it, else 2; at most 86400 (a ConfigError past it).

    Readiness is 503 while draining (without running checks) or when any check
    fails; liveness is 200 whenever the process can answer, draining or not, so an
    orchestrator does not kill a process that is finishing its requests.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        checks: Mapping[str, Check] | None = None,
        health_path: str = "/healthz",
        ready_path: str = "/readyz",
        mode: str | None = None,
        budget: float = 0.5,
        retry_after: int = 1,
        cache_ttl: float = 1.0,
        drain: DrainState | None = None,
        pre_stop_delay: float | None = None,
    ) -> None:
        if mode is not None and mode not in DRAIN_MODES:
            raise ConfigError(f"drain mode {mode!r} must be one of {', '.join(DRAIN_MODES)}")
        for p in (health_path, ready_path):
            if not p.startswith("/"):
                raise ConfigError(f"endpoint path {p!r} must start with '/'")
        # finite: a probe waits up to the budget (``Future.result(timeout=inf)`` is an
        # OverflowError, so never ready), and Retry-After is a whole number of seconds
        self.budget = number(budget, "readiness budget", positive=True, maximum=threading.TIMEOUT_MAX)
        self.retry_after = int(number(retry_after, "retry_after"))
        self.cache_ttl = number(cache_ttl, "readiness cache_ttl")
        # at most a day, as statekit serve and the gunicorn hooks hold the variable
        if pre_stop_delay is None:
            self.pre_stop_delay = number(os.environ.get(PRE_STOP_VARIABLE, "2"), PRE_STOP_VARIABLE,
                                         maximum=_MAX_SECONDS, unit="seconds")
        else:
            self.pre_stop_delay = number(pre_stop_delay, "pre_stop_delay", text=False, maximum=_MAX_SECONDS,
                                         unit="seconds")
        self.health_path = health_path
        self.ready_path = ready_path
        self.mode = mode
        self.checks: dict[str, Check] = _checks_from_settings(settings) if settings else {}
        self.checks.update(checks or {})
        self._drain = drain
        self._executor: tuple[int, ThreadPoolExecutor] | None = None
        self._cached: tuple[float, bool, dict[str, str]] | None = None
        self._lock = threading.Lock()

    @property
    def drain(self) -> DrainState:
        return self._drain if self._drain is not None else get_drain_state()

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def _pool(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        if self._executor is None or self._executor[0] != pid:  # a fork gets its own threads
            self._executor = (pid, ThreadPoolExecutor(max_workers=4, thread_name_prefix="statekit-ready"))
        return self._executor[1]

    def _fresh(self) -> tuple[bool, dict[str, str]] | None:
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self.cache_ttl:
            return cached[1], cached[2]
        return None

    def run_checks(self) -> tuple[bool, dict[str, str]]:
        """Run every check concurrently within :attr:`budget`; ``(all ok, name -> "ok"
        or the error)``. Results are cached for :attr:`cache_ttl` seconds. Blocks up to
        the budget: an event loop calls it in a worker thread (:meth:`reply_now` says
        when it need not)."""
        return self._run_checks(self.budget)

    def warm(self, timeout: float = WARM_TIMEOUT) -> tuple[bool, dict[str, str]]:
        """Run the checks once as the process starts, so the first probe costs what
        every probe costs: a check's first run builds its client (boto3's first S3
        client takes most of a second on a loaded machine, more than the default
        budget) and opens its connection. Waits up to *timeout* seconds (at least the
        budget), never raises: a backend that is down, or slower than that, is a failed
        check, cached as a probe's result is (readiness 503 with the reason). Blocks:
        the ASGI middleware runs it in a worker thread during the lifespan startup."""
        return self._run_checks(max(timeout, self.budget))

    def _run_checks(self, wait: float) -> tuple[bool, dict[str, str]]:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        with self._lock:
            # probes that waited here while another ran the checks take its result
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            futures = {name: self._pool().submit(check, self.budget) for name, check in self.checks.items()}
            deadline = time.monotonic() + wait
            results: dict[str, str] = {}
            for name, fut in futures.items():
                try:
                    fut.result(timeout=max(deadline - time.monotonic(), 0.0))
                    results[name] = "ok"
                except FutureTimeout:
                    results[name] = f"no answer within {wait:g}s"
                except Exception as e:
                    results[name] = f"{type(e).__name__}: {e}"[:200]
            ok = all(v == "ok" for v in results.values())
            if ok and results:
                outages.all_up()
            self._cached = (time.monotonic(), ok, results)
            return ok, results

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, JSON body)`` of the readiness endpoint."""
        if self.drain.draining:
            return 503, {"status": "draining"}
        return self._ready_answer(self.run_checks())

    @staticmethod
    def _ready_answer(result: tuple[bool, dict[str, str]]) -> tuple[int, dict[str, Any]]:
        ok, results = result
        return (200 if ok else 503), {"status": "ready" if ok else "unavailable", "checks": results}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", "draining": self.drain.draining}

    def admit(self, path: str) -> str:
        """What a middleware does with a request for *path*: answer an endpoint
        (``"health"``, ``"ready"``), refuse it while draining (``"reject"``: counted as
        rejected here; answer :meth:`reply` before the app runs), or run the app
        (``"app"``: the middleware counts it with the drain state's
        ``request_started`` / ``request_finished``)."""
        if path == self.health_path:
            return HEALTH
        if path == self.ready_path:
            return READINESS
        state = self.drain
        if state.draining and not state.accepting(self.mode):
            state.request_rejected()
            return REJECT
        return APP

    def reply(self, kind: str) -> Reply:
        """The answer for what :meth:`admit` returned (not ``"app"``). ``"ready"`` may
        run the checks, blocking up to :attr:`budget`."""
        return self.reply_now(kind) or Reply.json(*self._ready_answer(self.run_checks()))

    def reply_now(self, kind: str) -> Reply | None:
        """:meth:`reply` without blocking: ``None`` when the readiness checks have to
        run (an async middleware then runs :meth:`reply` in a worker thread)."""
        if kind == HEALTH:
            return Reply.json(*self.liveness())
        if kind == REJECT:
            return Reply.json(503, {"status": "draining"},
                              (("Retry-After", str(self.retry_after)), ("X-Statekit-Drain", "reject")))
        if kind != READINESS:
            raise ValueError(f"no reply of the lifecycle for {kind!r}")
        if self.drain.draining:
            return Reply.json(503, {"status": "draining"})
        fresh = self._fresh()
        return None if fresh is None else Reply.json(*self._ready_answer(fresh))

    def wrap(self, app: WSGIApplication) -> LifecycleMiddleware:
        return LifecycleMiddleware(app, self)


def _send_reply(start_response: StartResponse, reply: Reply, close: bool) -> list[bytes]:
    headers = [*reply.headers, *([("Connection", "close")] if close else [])]
    start_response(reply.status_line, headers)
    return [reply.body]


def _may_send_connection_header(environ: WSGIEnvironment) -> bool:
    # wsgiref (Django's runserver) refuses hop-by-hop headers from the app; gunicorn
    # drops them and closes through statekit's pre_request hook instead.
    return not str(environ.get("SERVER_SOFTWARE", "")).startswith("WSGIServer")


class _Finished:
    """Wraps the app's response iterable to count the request as finished when the
    server closes it (PEP 3333), however the response ended."""

    def __init__(self, it: Iterable[bytes], done: Callable[[], None]) -> None:
        self._it = it
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._it)

    def close(self) -> None:
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class LifecycleMiddleware:
    """WSGI middleware: health endpoints, request accounting and draining.

    While the drain state is set, every response gets ``Connection: close``; in mode
    ``reject`` a new request is answered ``503`` with ``Retry-After`` and the header
    ``X-Statekit-Drain: reject`` *before the app runs* (so a proxy may retry it on
    another instance even when it is a POST); in mode ``serve`` the app keeps serving
    until the pre-stop delay ends, then rejects the same way.

    Thread-safe; counts requests in this process's drain-state slot.
    """

    def __init__(self, app: WSGIApplication, lifecycle: Lifecycle | None = None) -> None:
        self.app = app
        self.lifecycle = lifecycle or Lifecycle()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        lc = self.lifecycle
        kind = lc.admit(environ.get("PATH_INFO", ""))
        if kind != APP:
            return _send_reply(start_response, lc.reply(kind),
                               kind == REJECT and _may_send_connection_header(environ))
        state = lc.drain

        def drain_aware_start_response(status: str, headers: list[tuple[str, str]],
                                       exc_info: Any = None) -> Callable[[bytes], object]:
            if state.closing and _may_send_connection_header(environ):
                headers = [(k, v) for k, v in headers if k.lower() != "connection"]
                headers.append(("Connection", "close"))
            return start_response(status, headers, exc_info)

        state.request_started()
        environ[COUNTED] = True  # an inner drain middleware (Django's) leaves it to us
        try:
            result = self.app(environ, drain_aware_start_response)
        except BaseException:
            state.request_finished()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # keep the server's sendfile path: hook close() instead of wrapping
            original = getattr(result, "close", None)
            pending = [state.request_finished]

            def close() -> None:
                try:
                    if original is not None:
                        original()
                finally:
                    while pending:
                        pending.pop()()

            try:
                result.close = close  # type: ignore[attr-defined]
            except AttributeError:
                pass
            else:
                return result
        return _Finished(result, state.request_finished)
