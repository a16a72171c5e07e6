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

How one computation per interval is kept: time is cut into slots
``floor(unix_time / interval)``. At each slot boundary every running broadcaster
calls one Lua script (the *claim*) that, atomically: takes the job's lease if it is
free (``SET NX PX``-style, with a fencing token from ``INCR``) or renews it if the
caller holds it; refuses if another process holds it; and records the slot as
claimed so no later leader computes that slot again. Only the process whose claim
succeeded computes. The publish is a second script that checks the token against
the current fencing counter, bumps the version, stores the retained value and
``PUBLISH``-es it, all at once; a stale token (a paused old leader) raises
:class:`~statekit.errors.StaleToken` and changes nothing. A leader renews its lease
every ``lease / 3`` seconds; when it dies, the lease expires and the next claim by
another process (made at the lease's expiry) wins. A slot whose leader died
mid-computation is skipped rather than computed twice. Slots come from each
process's own clock: keep clocks in sync (NTP); skew can shift when a slot is
computed, never make one slot computed twice (the claimed slot is kept in Redis).
If Redis loses its data (a restart without persistence), that record, the lease
and the fencing counter start over: one slot around the restart may be computed
twice, and versions start again at 1 under a new epoch, which workers accept. If it
comes back from an older snapshot, workers take the older retained version when they
re-subscribe (or at their next periodic check) and follow the publishes after it.

Backends: every Redis URL form (standalone, TLS, unix socket, Sentinel, Cluster)
or a ready redis-py client; ``memory://name`` runs the same contract inside one
process (for your unit tests; publishes are delivered synchronously).

Keys (all of one name share a hash tag, so the scripts are cluster-safe):
``<prefix>:bc:{<name>}`` (hash: epoch, version, updated_at, data, slot),
``...:lease``, ``...:fence``; channel ``<prefix>:broadcast:<name>``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import itertools
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NamedTuple, TypeVar

from ..errors import BackendUnavailable, BroadcastError, ConfigError, StaleToken
from ..metrics import Counters
from ..redis import translate_errors
from ..redis.fast import FastTransport, fast_params, script_sha
from ..serializers import Serializer, get_serializer
from . import shared as _subscriber
from .shared import SharedValue, SharedValues, _channel, _check_name, _resolve, state_key

__all__ = [
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

log = logging.getLogger("statekit.broadcast")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[[], Any])

# -- Lua ------------------------------------------------------------------------------

# KEYS: state, lease, fence. ARGV: owner, lease_ms, slot (-1: lease only).
# -> {0, holder_token, pttl} held by another | {1, token, 0} leader, slot already done
#    | {2, token, 0} leader, slot claimed: compute it
_CLAIM = """
local cur = redis.call('GET', KEYS[2])
local token
if cur then
  local sep = string.find(cur, '|', 1, true)
  token = tonumber(string.sub(cur, sep + 1))
  if string.sub(cur, 1, sep - 1) ~= ARGV[1] then
    return {0, token, redis.call('PTTL', KEYS[2])}
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  token = redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
end
local slot = tonumber(ARGV[3])
if slot < 0 then return {1, token, 0} end
local last = tonumber(redis.call('HGET', KEYS[1], 'slot') or '-1')
if slot <= last then return {1, token, 0} end
redis.call('HSET', KEYS[1], 'slot', ARGV[3])
return {2, token, 0}
"""

# KEYS: lease. ARGV: owner|token, lease_ms (renew) -> 1 | 0
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: state, fence. ARGV: token ('' = unfenced), data, now_ms, new epoch, channel
# -> {version, epoch} | {-1, current token}
_PUBLISH = """
if ARGV[1] ~= '' then
  local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
  if cur ~= tonumber(ARGV[1]) then return {-1, cur} end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'updated_at', ARGV[3])
redis.call('PUBLISH', ARGV[5], epoch .. ' ' .. version .. ' ' .. ARGV[3] .. ' ' .. ARGV[2])
return {version, epoch}
"""
_PUBLISH_SHA = script_sha(_PUBLISH)


# -- publisher side -------------------------------------------------------------------


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

    def next_boundary(self, now: float) -> float:
        return (math.floor(now / self.interval) + 1) * self.interval


class Run(NamedTuple):
    """The computation a compute function is part of (see :func:`current_run`)."""

    name: str
    slot: int
    token: int
    interval: float


_local = threading.local()

#: timed-out computations of one job that may still be running before no more start
MAX_ABANDONED = 3


def current_run() -> Run | None:
    """Inside a compute function: which job, slot (``floor(start / interval)``) and
    fencing token this computation is for; ``None`` elsewhere."""
    return getattr(_local, "run", None)


_broadcasters: weakref.WeakSet[Broadcaster] = weakref.WeakSet()


class Broadcaster:
    """Runs compute jobs once per interval for the whole cluster and publishes them.

    :param url: Redis URL; ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL`` by default.
    :param client: a ready redis-py client instead of a URL.
    :param serializer: codec of published values (JSON by default).

    See the module docstring for the lease, fencing and the thread API
    (:meth:`start`, :meth:`stop`, :meth:`run_forever`). Counters (``broadcast`` /
    prefix): computes, publishes, compute_errors, timeouts, stale_tokens,
    backend_errors, leader_acquired, leader_lost.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        serializer: str | Serializer | None = None,
        key_prefix: str | None = None,
    ) -> None:
        self._hub_key, self._make_client, self.prefix = _resolve(url, client, key_prefix)
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._targets: dict[str, tuple[list[str], str]] = {}
        self._serializer = get_serializer(serializer)
        self.jobs: dict[str, Job] = {}
        self._init_process_state()
        _broadcasters.add(self)

    def _init_process_state(self) -> None:
        # new locks and counters: a forked child must not inherit one held by a thread
        self.counters = Counters(
            "broadcast", self.prefix,
            ("computes", "publishes", "compute_errors", "timeouts", "stale_tokens",
             "backend_errors", "leader_acquired", "leader_lost"),
        )
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        # a fresh epoch per publish (used only when Redis has none): this process's
        # random base + a counter, cheaper than a uuid4 per call
        self._epochs = itertools.count()
        self._epoch_base = uuid.uuid4().hex[:8]
        # the publish path: FastTransport (per-thread socket, fork-safe) or redis-py
        self._transport: FastTransport | None = None
        self._use_fast: bool | None = None
        self._lock = threading.Lock()
        self._runs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._scripts = {}
        for job in self.jobs.values():
            job.token, job.done_slot, job.running, job.retry_at = None, -1, 0, 0.0
            job.timed_out = set()

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
        publish its return value as *name* (the function's name by default).

        :param lease: seconds a leader holds the job without renewing; after a leader
            dies another process takes over within this time. Default
            ``clamp(2 * interval, 1, 15)``.
        :param timeout: seconds a computation may take (default *interval*); a late
            result is logged, counted and discarded, and the last good value stays.
        """
        if not interval > 0:
            raise ConfigError(f"interval={interval!r} must be a positive number of seconds")

        def decorator(func: F) -> F:
            job_name = _check_name(name or func.__name__)
            job_lease = lease if lease is not None else min(max(2 * interval, 1.0), 15.0)
            if not job_lease > 0:
                raise ConfigError(f"lease={lease!r} must be a positive number of seconds")
            with self._lock:
                if job_name in self.jobs:
                    raise ConfigError(f"a job named {job_name!r} is already registered")
                self.jobs[job_name] = Job(
                    job_name, func, float(interval), float(job_lease),
                    float(timeout if timeout is not None else interval),
                )
            self._wake.set()
            return func

        return decorator

    # -- Redis ------------------------------------------------------------------
    def _script(self, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            if self._client is None:
                self._client = self._make_client()
            script = self._scripts[name] = self._client.register_script(source)
        return script

    def _keys(self, name: str) -> tuple[str, str, str]:
        state = state_key(self.prefix, name)
        return state, state + ":lease", state + ":fence"

    def _publish_target(self, name: str) -> tuple[list[str], str]:
        """``([state key, fence key], channel)`` of *name*, validated and cached."""
        target = self._targets.get(name)
        if target is None:
            _check_name(name)
            state, _, fence = self._keys(name)
            target = ([state, fence], _channel(self.prefix, name))
            if len(self._targets) < 4096:
                self._targets[name] = target
        return target

    def _run_publish(self, keys: list[str], args: list[str | bytes]) -> Any:
        """Run the publish script: through this thread's own socket when the client
        is a plain standalone one (:class:`~statekit.redis.fast.FastTransport`:
        one ``sendall`` + one ``recv``, no pool), else through redis-py."""
        if self._use_fast is None:
            if self._client is None:
                self._client = self._make_client()
            if fast_params(self._client) is not None:
                self._transport = FastTransport(self._client, what="broadcast publish")
            self._use_fast = self._transport is not None
        if self._transport is not None:
            return self._transport.script(_PUBLISH_SHA, _PUBLISH, keys, args)
        with translate_errors("broadcast publish"):
            return self._script("publish", _PUBLISH)(keys=keys, args=args)

    def publish(self, name: str, value: Any, *, token: int | None = None) -> int:
        """Retain *value* as the current value of *name* and push it to every worker.

        One Lua script stores the value, bumps the version and publishes, so a
        worker never sees a version that is not retained. With *token* (the
        scheduler passes its fencing token) the publish is refused unless the token is
        the job's current one. Safe from any thread and process; concurrent publishes
        are ordered by Redis and every worker ends on the last one. On a plain
        standalone client the script goes through a per-thread socket
        (:class:`~statekit.redis.fast.FastTransport`, fork-safe), not the
        pool; Cluster, Sentinel and TLS clients go through redis-py.

        :returns: the new version.
        :raises StaleToken: *token* is older than the current leader's; nothing changed.
        :raises BackendUnavailable: Redis did not answer; the publish may or may not
            have been applied (workers converge on whatever Redis retained).
        :raises SerializationError: the codec cannot encode *value*.
        """
        keys, channel = self._publish_target(name)
        data = self._serializer.dumps(value)
        args: list[str | bytes] = [
            "" if token is None else str(token), data, str(int(time.time() * 1000)),
            f"{self._epoch_base}{next(self._epochs):x}", channel,
        ]
        version, info = self._run_publish(keys, args)
        if version == -1:
            raise StaleToken(
                f"publish of {name!r} with fencing token {token} refused: the current token is {info}"
            )
        self.counters.incr("publishes")
        return int(version)

    def retained(self, name: str) -> tuple[int, Any] | None:
        """``(version, value)`` currently retained for *name*, or ``None``."""
        if self._client is None:
            self._client = self._make_client()
        with translate_errors("broadcast read"):
            version, data = self._client.hmget(state_key(self.prefix, name), "version", "data")
        return None if data is None else (int(version), self._serializer.loads(data))

    # -- scheduling -------------------------------------------------------------
    def _tick(self, job: Job, now: float) -> float:
        """Do what *job* needs at *now*; return when it next needs attention."""
        slot = math.floor(now / job.interval)
        wake = job.next_boundary(now)
        state, lease_key, fence = self._keys(job.name)
        lease_ms = str(int(job.lease * 1000))
        with self._runs_lock:
            busy = job.running > len(job.timed_out)  # the latest run is still within its timeout
            if busy and now - job.started_at > job.timeout:
                job.timed_out.add(job.run_id)
                busy = False
                self.counters.incr("timeouts")
                log.error("broadcast job %r: computation exceeded %.3gs; its result will be discarded",
                          job.name, job.timeout)
            elif busy:
                wake = min(wake, job.started_at + job.timeout + 0.001)
            if job.running >= MAX_ABANDONED + 1:
                busy = True  # that many hung computations: start no more threads
        if job.token is not None and now >= job.renew_at:
            with translate_errors("broadcast lease renew"):
                ok = self._script("renew", _RENEW)(
                    keys=[lease_key], args=[f"{self.owner}|{job.token}", lease_ms]
                )
            if ok:
                job.renew_at = now + job.lease / 3
            else:
                self._lost(job)
        if slot > job.done_slot and not busy:
            if now < job.retry_at:
                return min(wake, job.retry_at)
            with translate_errors("broadcast claim"):
                status, token, pttl = self._script("claim", _CLAIM)(
                    keys=[state, lease_key, fence], args=[self.owner, lease_ms, str(slot)]
                )
            if status == 0:
                self._lost(job)
                # try again when the lease expires, or at the next slot at the latest
                job.retry_at = min(now + max(int(pttl), 1) / 1000.0 + 0.002, wake)
                return job.retry_at
            if job.token != int(token):
                self.counters.incr("leader_acquired")
                log.info("broadcast job %r: this process leads (fencing token %s)", job.name, token)
            job.token = int(token)
            job.renew_at = now + job.lease / 3
            job.done_slot = slot
            if status == 2:
                self._launch(job, slot, int(token))
        if job.token is not None:
            wake = min(wake, job.renew_at)
        return wake

    def _lost(self, job: Job) -> None:
        if job.token is not None:
            self.counters.incr("leader_lost")
            log.warning("broadcast job %r: lease lost (token %s)", job.name, job.token)
        job.token = None

    def _launch(self, job: Job, slot: int, token: int) -> None:
        with self._runs_lock:
            job.run_id += 1
            job.running += 1
            job.started_at = time.time()
            run_id = job.run_id
        threading.Thread(
            target=self._compute, args=(job, slot, token, run_id),
            name=f"statekit-broadcast-{job.name}", daemon=True,
        ).start()

    def _compute(self, job: Job, slot: int, token: int, run_id: int) -> None:
        try:
            self.counters.incr("computes")
            _local.run = Run(job.name, slot, token, job.interval)
            try:
                value = job.func()
            except Exception:
                self.counters.incr("compute_errors")
                log.exception("broadcast job %r failed (slot %d); the last value stays", job.name, slot)
                return
            with self._runs_lock:
                late = run_id in job.timed_out
            if late:
                log.warning("broadcast job %r: late result of slot %d discarded", job.name, slot)
                return
            try:
                version = self.publish(job.name, value, token=token)
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
            _local.run = None
            with self._runs_lock:
                job.running -= 1
                job.timed_out.discard(run_id)
            self._wake.set()

    def run_pending(self, now: float | None = None) -> float:
        """One scheduler pass over every job; returns the time of the next pass.

        A job whose Redis call fails is logged, counted and retried shortly; one
        job's failure never stops another.
        """
        now = time.time() if now is None else now
        wake = now + 1.0
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            try:
                wake = min(wake, self._tick(job, now))
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
            self._release_all()

    def start(self) -> None:
        """Start the scheduler in a daemon thread; no-op if it already runs here."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(  # not run_forever: a stop() right away must hold
                target=self._run, name="statekit-broadcaster", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the scheduler (thread or :meth:`run_forever`) and release its leases.

        Waits up to *timeout* seconds for the thread; a computation still running is
        not interrupted, but its result is published only if its token is still the
        current one. Safe to call from a signal handler and more than once.
        """
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _release_all(self) -> None:
        for job in list(self.jobs.values()):
            if job.token is None:
                continue
            try:
                with translate_errors("broadcast lease release"):
                    self._script("release", _RELEASE)(
                        keys=[self._keys(job.name)[1]], args=[f"{self.owner}|{job.token}"]
                    )
            except BackendUnavailable as e:
                log.warning("broadcast job %r: lease not released (%s); it expires", job.name, e)
            job.token = None

    def _after_fork(self) -> None:
        self._init_process_state()


def _after_fork_in_child() -> None:
    _subscriber.reset_after_fork()
    for broadcaster in list(_broadcasters):
        broadcaster._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the command ----------------------------------------------------------------------


def load_broadcaster(target: str) -> Broadcaster:
    """Import ``"package.module:attribute"`` and return the :class:`Broadcaster` it
    names (a callable returning one is called)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{target!r} is not module:attribute (e.g. myproject.jobs:broadcaster)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r}: {e}") from e
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from None
    if inspect.isfunction(obj):
        obj = obj()
    if not isinstance(obj, Broadcaster):
        raise ConfigError(f"{target!r} is a {type(obj).__name__}, not a statekit Broadcaster")
    return obj


def serve(broadcaster: Broadcaster) -> int:
    """Run *broadcaster* in this thread until SIGTERM or SIGINT; returns 0."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("broadcaster stopping (signal %d)", signum)
        broadcaster.stop(0)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("broadcaster %s running jobs: %s", broadcaster.owner, ", ".join(broadcaster.jobs) or "none")
        broadcaster.run_forever()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def main(argv: Sequence[str]) -> int:
    """``statekit broadcast module:broadcaster``: run a broadcaster's jobs until
    SIGTERM/SIGINT. Any number may run at once; the lease keeps each job to one
    computation per interval."""
    from ..cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(prog="statekit broadcast", description=main.__doc__,
                                     formatter_class=PlainHelpFormatter)
    parser.add_argument("target", help="module:attribute naming a statekit Broadcaster")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    opts = parser.parse_args(list(argv))
    logging.basicConfig(
        level=opts.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    return serve(load_broadcaster(opts.target))
