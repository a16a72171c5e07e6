"""The scheduler: :class:`Broadcaster` runs each job once per slot for the whole
cluster (lease, fencing token, claimed slots) and publishes its value.

Time is cut into slots ``floor(unix_time / interval)``. At each slot boundary every
running broadcaster calls the backend's atomic *claim*
(:meth:`~statekit.broadcast.protocol.BroadcastBackend.claim`): it takes the job's
lease if it is free (with a new fencing token) or renews it if the caller holds
it, refuses if another process holds it, and records the slot as claimed so no
later leader computes that slot again. Only the process whose claim succeeded
computes. Its publish carries the token; a stale token (a paused old leader)
raises :class:`~statekit.errors.StaleToken` and changes nothing. Each slot claimed
gets a new token, so only the latest slot's computation can publish: one of an
earlier slot (timed out, or paused before its publish reached the backend) is
refused even when the same process still leads. A leader renews
its lease every ``lease / 3`` seconds; when it dies, the lease expires and the next
claim by another process (made at the lease's expiry) wins. A slot whose leader
died mid-computation is skipped rather than computed twice. Slots come from each
process's own clock: keep clocks in sync (NTP); skew can shift when a slot is
computed, never make one slot computed twice (the claimed slot is kept in the
backend, as the time it starts, so a deploy that changes the interval skips at most
the slot under way). If Redis loses its data (a restart without persistence), that record,
the lease and the fencing counter start over: one slot around the restart may be
computed twice (the counter starts again at the server's time in us, past every
token given before, so an old leader's publish is still refused), and versions
start again at 1 under a new epoch, which workers accept. If it comes back from an
older snapshot, workers take the older retained version when they re-subscribe (or
at their next check) and follow the publishes after it.

Fork: a forked child never inherits a running publisher (``os.register_at_fork``
marks every broadcaster stopped in the child and gives it a new identity).

**One scheduler, two drivers.** Every decision (claim, renew, fence, compute,
publish, release) is written once in :class:`SchedulerBase` as a plan of backend
calls (:data:`Steps`, run by the drivers of :mod:`statekit.cache.plan`);
:class:`Broadcaster` makes those calls on the synchronous backend in its thread, and
:class:`statekit.broadcast.aio.AsyncBroadcaster` awaits them on the asyncio one.
Only the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from ..cache.plan import Plan, drive
from ..config import number
from ..errors import BackendUnavailable, BroadcastError, ConfigError, StaleToken
from ..metrics import Counters
from ..serializers import Serializer, get_serializer
from .protocol import BroadcastBackend, Claim, ClaimStatus, Record, check_name, open_backend

__all__ = ["MAX_ABANDONED", "Broadcaster", "Call", "Job", "Run", "SchedulerBase", "Steps", "current_run"]

log = logging.getLogger("statekit.broadcast")

F = TypeVar("F", bound=Callable[[], Any])
T = TypeVar("T")

#: one backend call a scheduler step asks for: ``(method, args, kwargs)``; the method
#: ``"compute"`` (args ``(job,)``) runs the job's function instead
Call = tuple[str, tuple[Any, ...], dict[str, Any]]
#: the scheduler's logic: a plan (:mod:`statekit.cache.plan`, whose drivers run it)
#: that yields the calls it needs, is sent their replies (or has their exceptions
#: thrown in) and returns its result
Steps = Plan[T]


@dataclass(eq=False)
class Job:
    """A registered compute function (see :meth:`Broadcaster.every`)."""

    name: str
    func: Callable[[], Any]
    interval: float
    lease: float
    timeout: float
    token: int | None = None
    done_slot: int = -1
    retry_at: float = 0.0
    renew_at: float = 0.0
    run_id: int = 0
    running: int = 0
    started_at: float = 0.0
    timed_out: set[int] = field(default_factory=set)
    failing: bool = False
    #: a claim's reply never came (an outage, a cancellation): it may have given
    #: this process the lease with a token it does not know
    unsure: bool = False

    def next_boundary(self, now: float) -> float:
        return (math.floor(now / self.interval) + 1) * self.interval


class Run(NamedTuple):
    """The computation a compute function is part of (see :func:`current_run`)."""

    name: str
    slot: int
    token: int
    interval: float


# a context variable, not a thread local: an async job (a task) and a sync job run
# by asyncio.to_thread (which copies the context) see their run too
_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("statekit_broadcast_run", default=None)

#: timed-out computations of one job that may still be running before no more start
MAX_ABANDONED = 3


def current_run() -> Run | None:
    """Inside a compute function: which job, slot (``floor(start / interval)``) and
    fencing token this computation is for; ``None`` elsewhere."""
    return _current.get()


_broadcasters: weakref.WeakSet[SchedulerBase] = weakref.WeakSet()

#: :meth:`SchedulerBase.every`'s durations: positive, finite numbers of seconds (the
#: scheduler computes slots, leases in ms and deadlines from them), a ConfigError else
_SECONDS: dict[str, Any] = {"positive": True, "text": False, "unit": "seconds"}


class SchedulerBase:
    """What :class:`Broadcaster` and :class:`~statekit.broadcast.aio.AsyncBroadcaster`
    share: the jobs, the counters, the owner identity and every scheduling decision
    (see the module docstring), as :data:`Steps` a driver runs.

    :param url: the backend's URL; ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL``
        by default.
    :param client: a ready client instead of a URL.
    :param serializer: codec of published values (JSON by default).
    :param key_prefix: first part of every key (``STATEKIT_KEY_PREFIX``).

    A subclass provides :meth:`_open_backend` (the backend factory), runs the
    steps with :func:`~statekit.cache.plan.drive` or
    :func:`~statekit.cache.plan.adrive` (each call a backend method or, for
    ``"compute"``, the job's function),
    :meth:`_spawn` (run a computation's steps concurrently) and :meth:`_poke` (wake
    the scheduler loop early). Not meant to be used directly.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        serializer: str | Serializer | None = None,
        key_prefix: str | None = None,
    ) -> None:
        self._make_backend, self.prefix = self._open_backend(url, client, key_prefix)
        self._serializer = get_serializer(serializer)
        self._names: set[str] = set()  # names already checked (bounded)
        self.jobs: dict[str, Job] = {}
        self._init_process_state()
        _broadcasters.add(self)

    def __repr__(self) -> str:
        """Its jobs, for logs (``statekit serve`` names the one it starts)."""
        jobs = ", ".join(f"{j.name} every {j.interval:g} s" for j in self.jobs.values()) or "no jobs"
        return f"<{type(self).__name__} {self.prefix!r}: {jobs}>"

    def _init_process_state(self) -> None:
        # new locks and counters: a forked child must not inherit one held by a thread
        self.counters = Counters(
            "broadcast", self.prefix,
            ("computes", "publishes", "compute_errors", "timeouts", "stale_tokens",
             "backend_errors", "leader_acquired", "leader_lost"),
        )
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._runs_lock = threading.Lock()
        for job in self.jobs.values():
            job.token, job.done_slot, job.running, job.retry_at, job.unsure = None, -1, 0, 0.0, False
            job.timed_out = set()

    # -- what a driver provides ---------------------------------------------------
    def _open_backend(self, url: str | None, client: Any,
                      key_prefix: str | None) -> tuple[Callable[[], Any], str]:
        """``(backend factory, key prefix)`` for these arguments (validated now)."""
        raise NotImplementedError("SchedulerBase._open_backend")

    def _spawn(self, job: Job, steps: Steps[None]) -> None:
        raise NotImplementedError("SchedulerBase._spawn")

    def _poke(self) -> None:
        raise NotImplementedError("SchedulerBase._poke")

    # -- registration -----------------------------------------------------------
    def every(
        self,
        interval: float,
        *,
        name: str | None = None,
        lease: float | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Decorator: run the function once per *interval* seconds (cluster-wide) and
        publish its return value as *name* (the function's name by default). The
        function may be ``async def``: the asyncio broadcaster awaits it on its
        loop, the thread broadcaster runs it with :func:`asyncio.run` in its
        computation thread; a plain function runs in a thread in both.

        :param lease: seconds a leader holds the job without renewing; after a leader
            dies another process takes over within this time. Default
            ``clamp(2 * interval, 1, 15)``.
        :param timeout: seconds a computation may take (default *interval*); a late
            result is logged, counted and discarded, and the last good value stays.
        :raises ConfigError: *interval*, *lease* or *timeout* is not a positive, finite
            number of seconds.
        """
        interval = number(interval, "interval", **_SECONDS)
        job_timeout = number(timeout, "timeout", **_SECONDS) if timeout is not None else interval
        job_lease = (number(lease, "lease", **_SECONDS) if lease is not None
                     else min(max(2 * interval, 1.0), 15.0))

        def decorator(func: F) -> F:
            job_name = check_name(name or func.__name__)
            with self._lock:
                if job_name in self.jobs:
                    raise ConfigError(f"a job named {job_name!r} is already registered")
                self.jobs[job_name] = Job(job_name, func, interval, job_lease, job_timeout)
            self._poke()
            return func

        return decorator

    # -- publish and read, as steps -------------------------------------------------
    def _publish_steps(self, name: str, value: Any, token: int | None) -> Steps[int]:
        if name not in self._names:
            check_name(name)
            if len(self._names) < 4096:
                self._names.add(name)
        data = self._serializer.dumps(value)
        version: int = yield "publish", (name, data), {"token": token, "now_ms": int(time.time() * 1000)}
        self.counters.incr("publishes")
        return version

    def _retained_steps(self, name: str) -> Steps[tuple[int, Any] | None]:
        records: dict[str, Record] = yield "read", ([check_name(name)],), {}
        record = records.get(name)
        return None if record is None else (record.version, self._serializer.loads(record.payload))

    # -- scheduling -------------------------------------------------------------
    def _tick(self, job: Job, now: float) -> Steps[float]:
        """Do what *job* needs at *now*; return when it next needs attention."""
        slot = math.floor(now / job.interval)
        wake = job.next_boundary(now)
        lease_ms = int(job.lease * 1000)
        with self._runs_lock:
            busy = job.running > len(job.timed_out)  # the latest run is still within its timeout
            if busy and now - job.started_at > job.timeout:
                self._time_out(job, job.run_id)
                busy = False
            elif busy:
                wake = min(wake, job.started_at + job.timeout + 0.001)
            if job.running >= MAX_ABANDONED + 1:
                busy = True  # that many hung computations: start no more
        if job.token is not None and now >= job.renew_at:
            if job.unsure:
                # the last claim's reply was lost: it may have given a new token, so a
                # renewal with this one would report a false loss; a lease-only claim
                # renews and tells the token (held by another: lost indeed)
                claim = yield from self._claim_steps(job, lease_ms, -1)
                held = claim.status is not ClaimStatus.HELD
                if held:
                    job.token = claim.token
            else:
                held = yield "renew", (job.name, self.owner, job.token, lease_ms), {}
            if held:
                job.renew_at = now + job.lease / 3
            else:
                self._lost(job)
        if slot > job.done_slot and not busy:
            if now < job.retry_at:
                return min(wake, job.retry_at)
            # the slot's start in ms, not its index: comparable across intervals, so a
            # deploy that lengthens the interval does not find "later" slots claimed
            start_ms = round(slot * job.interval * 1000)
            claim = yield from self._claim_steps(job, lease_ms, start_ms)
            if claim.status is ClaimStatus.HELD:
                self._lost(job)
                # try again when the lease expires, or at the next slot at the latest
                job.retry_at = min(now + max(claim.lease_left_ms, 1) / 1000.0 + 0.002, wake)
                return job.retry_at
            if job.token is None:  # a new token with every slot claimed: not a new leader
                self.counters.incr("leader_acquired")
                log.info("broadcast job %r: this process leads (fencing token %s)", job.name, claim.token)
            job.token = claim.token
            job.renew_at = now + job.lease / 3
            job.done_slot = slot
            if claim.status is ClaimStatus.COMPUTE:
                with self._runs_lock:
                    job.run_id += 1
                    job.running += 1
                    job.started_at = time.time()
                    run_id = job.run_id
                self._spawn(job, self._job_steps(job, slot, claim.token, run_id))
        if job.token is not None:
            wake = min(wake, job.renew_at)
        return wake

    def _claim_steps(self, job: Job, lease_ms: int, slot: int) -> Steps[Claim]:
        """*job*'s claim; :attr:`Job.unsure` while its outcome is unknown."""
        try:
            claim: Claim = yield "claim", (job.name, self.owner, lease_ms, slot), {}
        except BaseException:  # CancelledError too: the claim may have been applied
            job.unsure = True
            raise
        job.unsure = False
        return claim

    def _time_out(self, job: Job, run_id: int) -> None:
        """Judge *job*'s run *run_id* late, its result to be discarded: counted and
        logged once, by a pass (:meth:`_tick`) or by the run itself, whichever sees it
        first (the caller holds ``_runs_lock``)."""
        job.timed_out.add(run_id)
        self.counters.incr("timeouts")
        log.error("broadcast job %r: computation exceeded %.3gs; its result will be discarded",
                  job.name, job.timeout)

    def _lost(self, job: Job) -> None:
        if job.token is not None:
            self.counters.incr("leader_lost")
            log.warning("broadcast job %r: lease lost (token %s)", job.name, job.token)
        job.token = None

    def _job_steps(self, job: Job, slot: int, token: int, run_id: int) -> Steps[None]:
        """One computation of *job* for *slot* and its fenced publish."""
        try:
            self.counters.incr("computes")
            _current.set(Run(job.name, slot, token, job.interval))
            begun = time.monotonic()
            try:
                value = yield "compute", (job,), {}
            except Exception:
                self.counters.incr("compute_errors")
                log.exception("broadcast job %r failed (slot %d); the last value stays", job.name, slot)
                return
            finally:
                _current.set(None)
            # judged here too, not only by a pass: none runs meanwhile under run_pending(),
            # nor on a loop an async job holds, and a busy machine may run it late
            overran = time.monotonic() - begun > job.timeout
            with self._runs_lock:
                late = run_id in job.timed_out
                if overran and not late:
                    self._time_out(job, run_id)  # as the pass would have: no second count
            if late or overran:
                log.warning("broadcast job %r: late result of slot %d discarded", job.name, slot)
                return
            try:
                version = yield from self._publish_steps(job.name, value, token)
            except StaleToken as e:
                self.counters.incr("stale_tokens")
                log.warning("broadcast job %r: publish refused (StaleToken: %s)", job.name, e)
                if job.token == token:
                    self._lost(job)
                return
            except (BackendUnavailable, BroadcastError) as e:
                self.counters.incr("backend_errors")
                log.error("broadcast job %r: publish failed: %s", job.name, e)
                return
            except Exception:
                self.counters.incr("compute_errors")
                log.exception("broadcast job %r: value of slot %d not publishable", job.name, slot)
                return
            log.debug("broadcast job %r: slot %d published as version %d", job.name, slot, version)
        finally:
            with self._runs_lock:
                job.running -= 1
                job.timed_out.discard(run_id)
            self._poke()

    def _pass_steps(self, now: float) -> Steps[float]:
        """One scheduler pass over every job (see :meth:`Broadcaster.run_pending`)."""
        wake = now + 1.0
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            try:
                wake = min(wake, (yield from self._tick(job, now)))
                job.failing = False
            except Exception as e:  # BackendUnavailable, READONLY after a failover, a bug
                self.counters.incr("backend_errors")
                if not job.failing:  # once per outage, not every retry
                    log.warning("broadcast job %r: Redis call failed, retrying: %s: %s",
                                job.name, type(e).__name__, e)
                job.failing = True
                job.retry_at = now + min(0.5, job.interval / 4)
                job.renew_at = min(job.renew_at, job.retry_at)
                wake = min(wake, job.retry_at)
        return wake

    def _release_steps(self) -> Steps[None]:
        """Release every job's lease; a reply error (not an outage) is raised once
        every other job's lease was released."""
        error: Exception | None = None
        for job in list(self.jobs.values()):
            token = job.token
            try:
                if job.unsure:  # learn the token a claim whose reply never came gave us
                    claim: Claim = yield "claim", (job.name, self.owner, int(job.lease * 1000), -1), {}
                    token = None if claim.status is ClaimStatus.HELD else claim.token
                if token is not None:
                    yield "release", (job.name, self.owner, token), {}
            except Exception as e:
                log.warning("broadcast job %r: lease not released (%s: %s); it expires",
                            job.name, type(e).__name__, e)
                if error is None and not isinstance(e, BackendUnavailable):
                    error = e
            job.token, job.unsure = None, False
        if error is not None:
            raise error

    def _after_fork(self) -> None:
        self._init_process_state()


class Broadcaster(SchedulerBase):
    """Runs compute jobs once per interval for the whole cluster and publishes them.

    :param url: the backend's URL (any Redis URL, ``memory://name``, or a scheme a
        package registers); ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL`` by default.
    :param client: a ready redis-py client instead of a URL.
    :param serializer: codec of published values (JSON by default).

    See the module docstring for the lease, fencing and the thread API
    (:meth:`start`, :meth:`stop`, :meth:`run_forever`). Counters (``broadcast`` /
    prefix): computes, publishes, compute_errors, timeouts, stale_tokens,
    backend_errors, leader_acquired, leader_lost.
    """

    def _open_backend(self, url: str | None, client: Any,
                      key_prefix: str | None) -> tuple[Callable[[], Any], str]:
        _, make_backend, prefix = open_backend(url, client, key_prefix)
        return make_backend, prefix

    def _init_process_state(self) -> None:
        self._backend: BroadcastBackend | None = None  # built on first use, again after fork
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_error: Exception | None = None  # the thread's, raised by stop()
        super()._init_process_state()

    # -- the synchronous driver -------------------------------------------------------
    def _do(self, call: Call) -> Any:
        method, args, kwargs = call
        if method == "compute":
            func = args[0].func
            if inspect.iscoroutinefunction(func):
                return asyncio.run(func())
            return func()
        return getattr(self.backend, method)(*args, **kwargs)

    def _run_steps(self, steps: Steps[T]) -> T:
        return drive(steps, self._do)  # type: ignore[arg-type]

    def _spawn(self, job: Job, steps: Steps[None]) -> None:
        threading.Thread(
            target=self._run_steps, args=(steps,), name=f"statekit-broadcast-{job.name}", daemon=True,
        ).start()

    def _poke(self) -> None:
        self._wake.set()

    # -- the backend ------------------------------------------------------------
    @property
    def backend(self) -> BroadcastBackend:
        """The backend this broadcaster publishes to (built on first use)."""
        backend = self._backend
        if backend is None:
            backend = self._backend = self._make_backend()
        return backend

    def publish(self, name: str, value: Any, *, token: int | None = None) -> int:
        """Retain *value* as the current value of *name* and push it to every worker.

        One atomic backend call (on Redis one Lua script) stores the value, bumps the
        version and publishes, so a worker never sees a version that is not
        retained. With *token* (the scheduler passes its fencing token) the publish
        is refused unless the token is the job's current one. Safe from any thread
        and process; concurrent publishes are ordered by the backend and every
        worker ends on the last one. On ``memory://`` every shared value of the same
        store in this process has the new value when this returns.

        :returns: the new version.
        :raises StaleToken: *token* is older than the current leader's; nothing changed.
        :raises BackendUnavailable: the backend did not answer; the publish may or may
            not have been applied (it is not sent again; workers converge on whatever
            the backend retained).
        :raises InvalidKey: *name* is not a valid name.
        :raises SerializationError: the codec cannot encode *value*.
        """
        return self._run_steps(self._publish_steps(name, value, token))

    def retained(self, name: str) -> tuple[int, Any] | None:
        """``(version, value)`` currently retained for *name*, or ``None``."""
        return self._run_steps(self._retained_steps(name))

    # -- scheduling -------------------------------------------------------------
    def run_pending(self, now: float | None = None) -> float:
        """One scheduler pass over every job; returns the time of the next pass.

        A job whose Redis call fails is logged, counted and retried shortly; one
        job's failure never stops another.
        """
        return self._run_steps(self._pass_steps(time.time() if now is None else now))

    def run_forever(self) -> None:
        """Run the scheduler in the calling thread until :meth:`stop` is called
        (from another thread or a signal handler). Releases held leases on return."""
        self._stopping.clear()
        self._run()

    def _run(self) -> None:
        """The scheduler loop, until :meth:`stop` (which may come before it starts)."""
        try:
            while not self._stopping.is_set():
                wake = self.run_pending()
                delay = wake - time.time()
                if delay > 0:
                    self._wake.wait(delay)
                self._wake.clear()
        finally:
            self._run_steps(self._release_steps())

    def _run_thread(self) -> None:
        try:
            self._run()
        except Exception as e:  # a refused release: stop() raises it in its caller
            self._release_error = e

    def start(self) -> None:
        """Start the scheduler in a daemon thread; no-op if it already runs here."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(  # not run_forever: a stop() right away must hold
                target=self._run_thread, name="statekit-broadcaster", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler (thread or :meth:`run_forever`) and release its leases.

        Waits up to *timeout* seconds for the thread; a computation still running is
        not interrupted, but its result is published only if its token is still the
        current one. Safe to call from a signal handler and more than once.

        :raises BroadcastError: a lease's release was refused (a reply error, not an
            outage), raised once the thread ended and the other leases were released.
        """
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            error, self._release_error = self._release_error, None  # set as the thread ends
            if error is not None:
                raise error

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()


def _after_fork_in_child() -> None:
    for broadcaster in list(_broadcasters):
        broadcaster._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
