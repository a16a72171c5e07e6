"""``statekit phoenix APP``: certify that an app keeps no state in its processes.

Phoenix starts the app — WSGI or ASGI, as ``statekit serve`` tells them apart (gthread
or uvicorn workers) — under ``statekit serve``: by default two instances (two
"machines", each in its own empty working directory) of N workers on loopback —
drives a bounded, scripted load from many simulated users, and meanwhile SIGKILLs
random workers and reloads the instances on a schedule. Every user sends each
request to a random instance, on a new connection (so to any of its workers), the way
a load balancer without sticky sessions does.
At the end it checks that every write the app acknowledged is still there, prints a
report, and exits non-zero when any state was lost.

The route contract of the default scenario (:class:`DefaultScenario`); both demo
apps (``examples/flask_app`` and ``examples/flask_app/before``) implement it:

===========================  ================================================================
``GET  /healthz``            200 once the process serves (phoenix waits for it)
``POST /api/login``          form ``user``: start a fresh session for that user -> 200
``GET  /api/session``        200 JSON ``{"user": str|null, "values": {key: value}}``
``POST /api/session``        form ``key``, ``value``: store ``values[key] = value`` -> 200
``POST /api/photos``         multipart ``photo`` (a PNG): store it -> 200/201 JSON ``{"id": str}``
``GET  /api/photos/<id>``    the stored bytes (200), directly or via a redirect (presigned URL);
                             404 when the app no longer has it
``GET  /api/shared``         200 JSON ``{"value": any, "version": float}``: the value every
                             worker shows, ``version`` the time it was computed (grows)
===========================  ================================================================

An app that lacks some of these routes is still run: before the load, phoenix asks
each route once, and the checks whose route answers 404 or 405 are left out of the
run and named in the report ("not checked"). The run passes only if at least one
check ran; an app with none of the routes gets its availability under the kills and
reloads measured (``GET /``) and exit status 1.

What counts as lost state (any of these makes the exit status 1):

* **lost session write**: a session value (or the login) the app acknowledged with a
  2xx is missing or different in a later read of the same session, or that read is
  refused as not logged in (401, 403, or a redirect: redirects are not followed);
* **lost upload**: an acknowledged upload answers 404; **corrupted upload**: its bytes
  differ (SHA-256);
* **shared-value disagreement**: a read returns an older version than one another
  read had already returned more than ``--shared-grace`` seconds before it started,
  or another value under a version another read returned with a different value
  (workers showing different values of a value that should be the same everywhere);
* **unverified write**: once the faults have stopped, phoenix reads every user's
  session and every acknowledged upload back from *every* instance, retrying a failed
  read for a few seconds; an instance that still cannot answer it (a 5xx, a reset)
  leaves that write uncertified, and the run fails (that instance's other writes are
  then counted unverified without asking it again).

A check that nothing was acknowledged for (every login failed, no upload stored, no
shared read carried a version) is reported as not checked, not as passed.

Failed requests (connection reset by a SIGKILL, 5xx) are reported by cause but are
not lost state: a request that was not acknowledged promised nothing. A worker killed
mid-request fails the requests it was serving; the report shows how many requests
were in flight on its instance at the kills, or sent there while the killed worker was
dying (its keep-alive connections still open), to compare.

Write your own scenario by subclassing :class:`Scenario` and pass
``--scenario module:Class``. Load and faults stay on loopback, are bounded in time
and only ever signal processes phoenix started.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "Client",
    "DefaultScenario",
    "Instance",
    "Ledger",
    "PhoenixReport",
    "Scenario",
    "main",
    "make_png",
    "shared_disagreements",
    "shared_value_conflicts",
]

REQUEST_TIMEOUT = 10.0


def make_png(rng: random.Random, width: int = 16, height: int = 16) -> bytes:
    """A small valid PNG with random pixels (unique content for every upload)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@dataclass
class Ledger:
    """What the run observed; shared by every simulated user (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)  # per instance base URL
    started: Counter[str] = field(default_factory=Counter)  # per instance base URL
    session_writes: int = 0
    lost_session_writes: int = 0
    uploads: int = 0
    lost_uploads: int = 0
    corrupted_uploads: int = 0
    shared_reads: list[tuple[float, float, float]] = field(default_factory=list)
    shared_values: list[tuple[float, str]] = field(default_factory=list)  # (version, value as JSON)
    unverified: int = 0
    #: instances a read-back gave up on (failing for the whole patience): their later
    #: read-backs count unverified unasked, so verifying is bounded whatever they do
    given_up: set[str] = field(default_factory=set)
    kills: int = 0
    in_flight_at_kills: int = 0
    reloads: int = 0
    examples: list[str] = field(default_factory=list)

    def lost(self, kind: str, detail: str) -> None:
        """Record lost state of *kind* (``session``, ``upload``, ``corrupted``), or an
        acknowledged write that could not be read back once the faults stopped
        (``unverified``)."""
        with self.lock:
            if kind == "session":
                self.lost_session_writes += 1
            elif kind == "upload":
                self.lost_uploads += 1
            elif kind == "unverified":
                self.unverified += 1
            else:
                self.corrupted_uploads += 1
            if len(self.examples) < 8:
                self.examples.append(f"{kind}: {detail}")


class Client:
    """An HTTP client for one simulated user: its own cookies, every request to a
    random instance on a connection of its own (``Connection: close``), so that it
    reaches any of that instance's workers, as behind a load balancer that spreads
    requests; a kept-alive connection would pin the user to one worker, where state
    kept per worker looks shared. Records each request in the :class:`Ledger`."""

    def __init__(self, bases: Sequence[str], ledger: Ledger, rng: random.Random) -> None:
        import requests

        self._requests = requests
        self.session = requests.Session()
        self.session.headers["Connection"] = "close"
        self.bases = list(bases)
        self.ledger = ledger
        self.rng = rng

    def request(self, method: str, path: str, *, ok: Sequence[int] = (), base: str | None = None,
                **kwargs: Any) -> Any:
        """Send one request to *base* (default: a random instance); returns the response,
        or ``None`` when it failed (connection error, timeout, 5xx, or a status not
        2xx/3xx nor in *ok*)."""
        base = base or self.rng.choice(self.bases)
        url = base + path
        led = self.ledger
        with led.lock:
            led.in_flight[base] += 1
            led.started[base] += 1
        start = time.monotonic()
        cause = None
        response = None
        try:
            response = self.session.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
            if response.status_code >= 400 and response.status_code not in ok:
                cause = f"http {response.status_code}"
        except self._requests.Timeout:
            cause = "timeout"
        except self._requests.ConnectionError as e:
            text = str(e).lower()
            reset = any(w in text for w in ("reset", "aborted", "disconnected"))
            cause = ("connection refused" if "refused" in text
                     else "connection reset" if reset else "connection error")
        except self._requests.exceptions.ChunkedEncodingError:
            cause = "truncated response"
        except self._requests.RequestException as e:
            cause = type(e).__name__
        elapsed = time.monotonic() - start
        with led.lock:
            led.in_flight[base] -= 1
            led.requests += 1
            led.latencies.append(elapsed)
            if cause is None:
                led.ok += 1
            else:
                led.failures[cause] += 1
        return None if cause else response


class Scenario:
    """One simulated user. Phoenix calls :meth:`setup` once, :meth:`step` until the
    run ends, then :meth:`verify` after the faults stop. Subclass it for your own
    routes; report lost state with ``self.ledger.lost(kind, detail)``.

    Each user runs in its own thread; a scenario object is used by one thread only.
    """

    #: checks :meth:`probe` found the app cannot take; set before :meth:`setup`
    skip: frozenset[str] = frozenset()

    @classmethod
    def probe(cls, client: Client) -> dict[str, str]:
        """Called once before the load: ``{check: why}`` for each check this app
        cannot take (its route is missing). Those are skipped and reported as not
        checked. The default: every check can run."""
        return {}

    def __init__(self, user_id: int, client: Client, ledger: Ledger, rng: random.Random, run_id: str) -> None:
        self.user_id = user_id
        self.client = client
        self.ledger = ledger
        self.rng = rng
        self.run_id = run_id

    def setup(self) -> None:
        """Log in, create what later steps need."""

    def step(self) -> None:
        raise NotImplementedError("Scenario.step")

    def verify(self) -> None:
        """Check, once the faults have stopped, that every acknowledged write is there."""

    @classmethod
    def unexercised(cls, ledger: Ledger, skip: frozenset[str]) -> dict[str, str]:
        """Called after the run: ``{check: why}`` for each check (not in *skip*) that
        nothing was acknowledged for, so it certified nothing. The default: none."""
        return {}


class DefaultScenario(Scenario):
    """Log in, write session values, upload photos, read them back, read the shared
    value, and check earlier writes at every read (see the module docstring).
    Checks whose route the app lacks are skipped (:meth:`probe`)."""

    #: check -> the request that tells whether the app has its route
    ROUTES: dict[str, tuple[str, str]] = {
        "sessions": ("POST", "/api/login"),
        "uploads": ("POST", "/api/photos"),
        "shared value": ("GET", "/api/shared"),
    }
    #: seconds :meth:`verify` retries a failed read before counting it unverified
    verify_patience: float = 5.0

    @classmethod
    def unexercised(cls, ledger: Ledger, skip: frozenset[str]) -> dict[str, str]:
        with ledger.lock:
            empty = {"sessions": (ledger.session_writes, "no login or session write was acknowledged"),
                     "uploads": (ledger.uploads, "no upload was acknowledged"),
                     "shared value": (len(ledger.shared_reads), "no read returned a version")}
        return {check: why for check, (count, why) in empty.items() if not count and check not in skip}

    @classmethod
    def probe(cls, client: Client) -> dict[str, str]:
        missing: dict[str, str] = {}
        for check, (method, path) in cls.ROUTES.items():
            # without a form: an app that has the route refuses it with a 400, not a 404/405
            response = client.request(method, path, ok=(400, 404, 405))
            if response is not None and response.status_code in (404, 405):
                missing[check] = f"{method} {path} answers {response.status_code}"
        return missing

    def setup(self) -> None:
        self.user = f"phoenix-{self.run_id}-{self.user_id}"
        # key -> the values the session may hold: the acknowledged one, plus those of
        # later writes that failed (a worker killed after saving, before answering)
        self.values: dict[str, set[str]] = {}
        self.logged_in = False
        self.reported: set[str] = set()
        self.uploads: dict[str, str] = {}
        self.gone: set[str] = set()
        self.counter = 0
        if "sessions" not in self.skip:
            self.login()

    def login(self) -> None:
        if self.client.request("POST", "/api/login", data={"user": self.user}) is not None:
            self.values = {}
            self.reported = set()
            self.logged_in = True
            with self.ledger.lock:
                self.ledger.session_writes += 1

    def step(self) -> None:
        if not self.logged_in and "sessions" not in self.skip:
            self.login()
            return
        actions: list[tuple[str, Callable[[], object], int]] = [
            ("sessions", self.write_session, 30), ("sessions", self.check_session, 25),
            ("uploads", self.upload, 10), ("uploads", self.read_upload, 15),
            ("shared value", self.read_shared, 20),
        ]
        actions = [a for a in actions if a[0] not in self.skip]
        if not actions:  # nothing to check: measure that the app answers at all
            self.client.request("GET", "/", ok=(404,))
            return
        self.rng.choices([a[1] for a in actions], weights=[a[2] for a in actions])[0]()

    def write_session(self) -> None:
        self.counter += 1
        key, value = f"k{self.counter % 8}", f"{self.user_id}-{self.counter}"
        if self.client.request("POST", "/api/session", data={"key": key, "value": value}) is not None:
            self.values[key] = {value}
            with self.ledger.lock:
                self.ledger.session_writes += 1
        elif key in self.values:
            self.values[key].add(value)

    def check_session(self, response: Any = None, base: str | None = None) -> bool:
        """Read the session (from *base*, default a random instance) and report what it
        lost; ``False`` when the read failed and told nothing."""
        response = response or self.client.request("GET", "/api/session", ok=(401, 403), base=base,
                                                   allow_redirects=False)
        if response is None:
            return False
        if response.status_code in (401, 403) or 300 <= response.status_code < 400:
            data: Any = {"pid": f"?, answered {response.status_code}"}  # not logged in any more
        else:
            try:
                data = response.json()
            except ValueError:
                return False
            if not isinstance(data, dict):
                return False
        lost = []
        if data.get("user") != self.user:
            lost.append("login")
        stored = data.get("values") or {}
        for k, possible in self.values.items():
            if stored.get(k) in possible:
                self.values[k] = {stored[k]}
            else:
                lost.append(k)
        new = [k for k in lost if k not in self.reported]
        for k in new:
            self.reported.add(k)
            self.ledger.lost("session", f"{self.user}: {k} missing or changed (worker pid {data.get('pid')})")
        if "login" in lost:
            self.logged_in = False  # log in again so the run goes on measuring
        return True

    def upload(self) -> None:
        png = make_png(self.rng)
        response = self.client.request(
            "POST", "/api/photos", files={"photo": (f"p{self.counter}.png", png, "image/png")}
        )
        if response is None:
            return
        try:
            blob_id = str(response.json()["id"])
        except (ValueError, KeyError):
            self.ledger.failures["upload answer without id"] += 1
            return
        self.uploads[blob_id] = hashlib.sha256(png).hexdigest()
        with self.ledger.lock:
            self.ledger.uploads += 1

    def read_upload(self, blob_id: str | None = None, base: str | None = None) -> bool:
        candidates = [b for b in self.uploads if b not in self.gone]
        if blob_id is None:
            if not candidates:
                return True
            blob_id = self.rng.choice(candidates)
        response = self.client.request("GET", f"/api/photos/{blob_id}", ok=(404,), base=base)
        if response is None:
            return False
        if response.status_code == 404:
            self.gone.add(blob_id)
            self.ledger.lost("upload", f"{self.user}: photo {blob_id} answers 404")
        elif hashlib.sha256(response.content).hexdigest() != self.uploads[blob_id]:
            self.gone.add(blob_id)
            self.ledger.lost("corrupted", f"{self.user}: photo {blob_id} has other bytes")
        return True

    def read_shared(self) -> None:
        t0 = time.monotonic()
        response = self.client.request("GET", "/api/shared")
        t1 = time.monotonic()
        if response is None:
            return
        try:
            data = response.json()
            version = data.get("version")
            value = json.dumps(data.get("value"), sort_keys=True)
        except (ValueError, AttributeError, TypeError):
            return
        if isinstance(version, (int, float)) and version:
            with self.ledger.lock:
                self.ledger.shared_reads.append((t0, t1, float(version)))
                self.ledger.shared_values.append((float(version), value))

    def verify(self) -> None:
        """Read the session and every upload back from every instance: state only one
        instance can answer for is not certified."""
        for base in self.client.bases:
            if "sessions" not in self.skip and self.logged_in:
                self._read_back(functools.partial(self.check_session, None, base), f"{self.user}'s session",
                                base)
            for blob_id in list(self.uploads):
                if blob_id not in self.gone:
                    self._read_back(functools.partial(self.read_upload, blob_id, base),
                                    f"{self.user}'s photo {blob_id}", base)

    def _read_back(self, read: Callable[[], bool], what: str, base: str) -> None:
        with self.ledger.lock:
            if base in self.ledger.given_up:  # asked again, a hung instance would cost a timeout each
                self.ledger.unverified += 1
                return
        deadline = time.monotonic() + self.verify_patience
        while not read():
            if time.monotonic() >= deadline:
                self.ledger.lost("unverified", f"{what} could not be read from {base} after the faults")
                with self.ledger.lock:
                    self.ledger.given_up.add(base)
                return
            time.sleep(0.2)


def shared_value_conflicts(values: Sequence[tuple[float, str]]) -> int:
    """Reads that returned another value under a version than the first read of that
    version did (each worker computing its own value)."""
    first: dict[float, str] = {}
    return sum(first.setdefault(version, value) != value for version, value in values)


def shared_disagreements(reads: Sequence[tuple[float, float, float]], grace: float) -> int:
    """Reads that returned an older version than a read which had completed more than
    *grace* seconds before they started."""
    by_start = sorted(reads)
    by_end = sorted(reads, key=lambda r: r[1])
    newest = float("-inf")
    j = 0
    bad = 0
    for start, _, version in by_start:
        while j < len(by_end) and by_end[j][1] <= start - grace:
            newest = max(newest, by_end[j][2])
            j += 1
        if version < newest:
            bad += 1
    return bad


class Instance:
    """One app instance ("machine"): a ``statekit serve`` master in its own working
    directory, on a free loopback port."""

    def __init__(self, index: int, app: str, workdir: str, *, workers: int, server: str,
                 broadcaster: str | None, env: dict[str, str], interface: str = "wsgi") -> None:
        self.index = index
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.pidfile = os.path.join(workdir, "master.pid")
        self.log_path = os.path.join(workdir, "server.log")
        bind = f"127.0.0.1:{self.port}"
        if server == "statekit":
            self.command = [sys.executable, "-m", "statekit", "serve", app, "--bind", bind,
                            "--workers", str(workers), "--pid", self.pidfile, "--interface", interface,
                            "--graceful-timeout", "10", "--pre-stop-delay", "0"]
            if broadcaster:
                self.command += ["--broadcaster", broadcaster]
        else:
            self.command = [sys.executable, "-m", "gunicorn", app, "--bind", bind, "--workers", str(workers),
                            "--pid", self.pidfile, "--graceful-timeout", "10"]
            if interface == "asgi":
                self.command += ["--worker-class", "uvicorn_worker.UvicornWorker"]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, path: str, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ConfigError(
                    f"instance {self.index} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.base + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise ConfigError(f"instance {self.index} not ready on {self.base}{path} after {timeout:.0f} s:\n"
                          f"{self.log_tail()}")

    @property
    def master_pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return self.proc.pid if self.proc else None

    def workers(self) -> list[int]:
        """PIDs of the master's children (Linux ``/proc``)."""
        master = self.master_pid
        if master is None:
            return []
        pids: list[int] = []
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{master}/task"):
                with open(f"/proc/{master}/task/{tid}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        return pids

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # workers of a master that was killed must not outlive the run
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _stop_all(instances: Sequence[Instance]) -> None:
    """Stop every instance at once (their drains overlap) and wait for all."""
    threads = [threading.Thread(target=inst.stop, name=f"phoenix-stop-{inst.index}") for inst in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until *pid* has exited (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.005)


class Chaos(threading.Thread):
    """Kills a random worker every *kill_every* seconds and reloads a random instance
    every *reload_every* seconds (0 disables either)."""

    def __init__(self, instances: Sequence[Instance], ledger: Ledger, rng: random.Random,
                 kill_every: float, reload_every: float) -> None:
        super().__init__(name="phoenix-chaos", daemon=True)
        self.instances = instances
        self.ledger = ledger
        self.rng = rng
        self.kill_every = kill_every
        self.reload_every = reload_every
        self.halt = threading.Event()

    def run(self) -> None:
        now = time.monotonic()
        next_kill = now + self.kill_every if self.kill_every > 0 else float("inf")
        next_reload = now + self.reload_every if self.reload_every > 0 else float("inf")
        while not self.halt.wait(min(1.0, max(0.0, min(next_kill, next_reload) - time.monotonic()))):
            now = time.monotonic()
            if now >= next_kill:
                next_kill += self.kill_every
                self.kill_one()
            if now >= next_reload:
                next_reload += self.reload_every
                self.reload_one()

    def kill_one(self) -> None:
        instance = self.rng.choice(list(self.instances))
        workers = instance.workers()
        if not workers:
            return
        pid = self.rng.choice(workers)
        with self.ledger.lock:
            in_flight = self.ledger.in_flight[instance.base]  # on the whole instance: an upper bound
            started = self.ledger.started[instance.base]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        # A request sent while the worker is dying (its keep-alive connection not yet
        # closed by the kernel) fails too: count those sent until it is gone.
        _wait_gone(pid, timeout=1.0)
        with self.ledger.lock:
            self.ledger.kills += 1
            self.ledger.in_flight_at_kills += in_flight + self.ledger.started[instance.base] - started

    def reload_one(self) -> None:
        instance = self.rng.choice(list(self.instances))
        master = instance.master_pid
        if master is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGHUP)
            with self.ledger.lock:
                self.ledger.reloads += 1


@dataclass
class PhoenixReport:
    """The outcome of a run, as printed and as written by ``--json``."""

    app: str
    server: str
    instances: int
    workers: int
    users: int
    duration: float
    requests: int
    ok: int
    failures: dict[str, int]
    kills: int
    in_flight_at_kills: int
    reloads: int
    session_writes: int
    lost_session_writes: int
    uploads: int
    lost_uploads: int
    corrupted_uploads: int
    shared_reads: int
    shared_disagreements: int
    p50_ms: float
    p99_ms: float
    examples: list[str]
    #: checks the app could not take (their route is missing) -> why
    unchecked: dict[str, str] = field(default_factory=dict)
    #: ``"wsgi"`` or ``"asgi"``: how the app was served
    interface: str = "wsgi"
    #: acknowledged writes some instance could not answer for once the faults stopped
    unverified: int = 0

    @property
    def lost_state(self) -> bool:
        return bool(self.lost_session_writes or self.lost_uploads or self.corrupted_uploads
                    or self.shared_disagreements)

    @property
    def nothing_checked(self) -> bool:
        """The app had none of the default scenario's routes."""
        return len(self.unchecked) >= len(DefaultScenario.ROUTES)

    @property
    def passed(self) -> bool:
        return self.ok > 0 and not self.lost_state and not self.unverified and not self.nothing_checked

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["lost_state"] = self.lost_state
        data["passed"] = self.passed
        return data


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _load_scenario(spec: str) -> type[Scenario]:
    """The scenario class *spec* names, imported from the current directory (as the
    instances import the app) or from the installed packages.

    :raises ConfigError: *spec* is not ``module:Class``, its module does not exist (an
        import failing inside the module propagates: its traceback shows where), or it
        names no :class:`Scenario` subclass."""
    from .cli import module_missing

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"--scenario {spec!r} must be module:Class")
    if os.getcwd() not in sys.path:  # the console script's sys.path starts with its bin directory
        sys.path.insert(0, os.getcwd())
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        if not module_missing(module, e):
            raise
        raise ConfigError(f"--scenario {spec!r}: cannot import {module!r}: {e}") from None
    cls = getattr(imported, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Scenario)):
        raise ConfigError(f"--scenario {spec!r} is not a statekit.phoenix.Scenario subclass")
    return cls


def _check_app_module(app: str, path: Sequence[str]) -> None:
    """Refuse an app whose module (``MODULE`` of ``MODULE:APP``, as gunicorn splits it)
    does not exist, before any server starts: looked for on *path* (the instances'
    ``PYTHONPATH``) and where the installed packages are, not imported (the app may need
    the URLs of the servers phoenix is about to start; its code runs in the instances
    only). A submodule of a package whose ``__init__.py`` changes its ``__path__`` (found
    only by running it) is not refused: the instances tell.

    :raises ConfigError: the module, or a package it is in, does not exist (in the
        words of Python's :exc:`ModuleNotFoundError`)."""
    module = app.partition(":")[0]
    parts = module.split(".")
    if not all(parts):
        raise ConfigError(f"{app!r} must be MODULE:APP (a module such as myproject.wsgi)")
    if module in sys.modules:
        return
    spec = (importlib.machinery.PathFinder.find_spec(parts[0], [*path, *sys.path])
            or importlib.util.find_spec(parts[0]))  # a top-level name: nothing is imported
    if spec is None:
        raise ConfigError(f"cannot import {module!r}: No module named {parts[0]!r}")
    locations, origin = spec.submodule_search_locations, spec.origin
    for i in range(1, len(parts)):
        package, name = ".".join(parts[:i]), ".".join(parts[: i + 1])
        if locations is None:
            raise ConfigError(f"cannot import {module!r}: No module named {name!r}; "
                              f"{package!r} is not a package")
        if (origin and os.path.basename(origin) == "__init__.py" and _extends_path(origin)
                or not all(os.path.isdir(loc) for loc in locations)):  # or in a zip file: the instances tell
            return
        found = _submodule(list(locations), parts[i])
        if found is None:
            raise ConfigError(f"cannot import {module!r}: No module named {name!r}")
        locations, origin = found


def _submodule(locations: Sequence[str], name: str) -> tuple[list[str] | None, str | None] | None:
    """Where module *name* is in the package directories *locations*, looked for as the
    import system's path finder does: ``(its search locations, its file)``, locations
    ``None`` for a plain module; ``None`` when it is in none of them. In each directory
    in turn a package (``name/__init__.py``) comes before a module file, which comes
    before a directory without ``__init__``: those merge into a namespace package."""
    suffixes = importlib.machinery.all_suffixes()
    portions = []
    for loc in locations:
        base = os.path.join(loc, name)
        if os.path.isdir(base):
            inits = (os.path.join(base, "__init__" + s) for s in suffixes)
            init = next((f for f in inits if os.path.isfile(f)), None)
            if init is not None:
                return [base], init
        module = next((base + s for s in suffixes if os.path.isfile(base + s)), None)
        if module is not None:
            return None, module
        if os.path.isdir(base):
            portions.append(base)
    return (portions, None) if portions else None


def _extends_path(init: str) -> bool:
    """Whether the package ``__init__.py`` *init* may add to its ``__path__`` when it
    runs (``pkgutil.extend_path``; unreadable counts as may)."""
    try:
        with open(init, encoding="utf-8", errors="replace") as f:
            return "__path__" in f.read()
    except OSError:
        return True


#: prints the app's interface (statekit.asgi.interface_of), imported as statekit serve does
_DETECT = ("import sys\nfrom gunicorn.util import import_app\nfrom statekit.asgi import interface_of\n"
           "print(interface_of(import_app(sys.argv[1])))\n")


def _pick_interface(choice: str, app: str, env: dict[str, str], cwd: str) -> str:
    """The app's interface: *choice*, or for ``auto`` what importing the app in a
    child process says (an app that cannot be imported fails later, at start)."""
    if choice != "auto":
        return choice
    try:
        out = subprocess.run([sys.executable, "-c", _DETECT, app], cwd=cwd, env=env, capture_output=True,  # noqa: S603
                             text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return "wsgi"
    lines = out.stdout.split()
    return "asgi" if out.returncode == 0 and lines and lines[-1] == "asgi" else "wsgi"


def _pick_server(choice: str) -> str:
    if choice != "auto":
        return choice
    return "statekit" if importlib.util.find_spec("statekit.gunicorn") is not None else "gunicorn"


def _print_report(report: PhoenixReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"statekit phoenix — {report.app}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()

    def row(label: str, value: object, note: str = "", bad: bool = False) -> None:
        table.add_row(label, f"[red]{value}[/red]" if bad else str(value), note)

    row("setup", f"{report.instances} × {report.workers} workers",
        f"{report.server} ({report.interface.upper()}), {report.users} users, {report.duration:.0f} s")
    row("requests", report.requests, f"{report.ok} ok")
    failed = sum(report.failures.values())
    row("failed requests", failed, ", ".join(f"{c}: {n}" for c, n in sorted(report.failures.items())))
    row("workers SIGKILLed", report.kills,
        f"{report.in_flight_at_kills} requests in flight on their instances at the kills")
    row("reloads", report.reloads)
    skipped = report.unchecked
    if "sessions" in skipped:
        row("lost session writes", "-", f"not checked: {skipped['sessions']}")
    else:
        row("lost session writes", report.lost_session_writes, f"of {report.session_writes} acknowledged",
            bad=report.lost_session_writes > 0)
    if "uploads" in skipped:
        row("lost uploads", "-", f"not checked: {skipped['uploads']}")
    else:
        row("lost uploads", report.lost_uploads, f"of {report.uploads} acknowledged",
            bad=report.lost_uploads > 0)
        row("corrupted uploads", report.corrupted_uploads, bad=report.corrupted_uploads > 0)
    if "shared value" in skipped:
        row("shared-value disagreement", "-", f"not checked: {skipped['shared value']}")
    else:
        row("shared-value disagreement", report.shared_disagreements,
            f"in {report.shared_reads} reads" if report.shared_reads
            else "no computed value seen (is the broadcaster running?)",
            bad=report.shared_disagreements > 0)
    row("unverified writes", report.unverified, "not readable from every instance after the faults",
        bad=report.unverified > 0)
    row("latency p50 / p99", f"{report.p50_ms:.1f} / {report.p99_ms:.1f} ms")
    console.print(table)
    for example in report.examples:
        console.print(f"  [dim]e.g. {escape(example)}[/dim]")
    if report.passed and skipped:
        console.print(f"[bold green]PASS[/bold green]: no state was lost in what could be checked "
                      f"(not checked: {', '.join(skipped)}).")
    elif report.passed:
        console.print("[bold green]PASS[/bold green]: no state was lost.")
    elif report.nothing_checked:
        console.print(
            f"[bold red]NOT CERTIFIED[/bold red]: the app has none of the scenario's routes, so no state "
            f"could be checked; it answered {report.ok} of {report.requests} requests under the kills and "
            "reloads. Implement the routes (statekit.phoenix) or pass --scenario.")
    elif report.ok == 0:
        console.print("[bold red]FAIL[/bold red]: no request succeeded.")
    elif not report.lost_state:
        console.print(f"[bold red]FAIL[/bold red]: {report.unverified} acknowledged writes could not be read "
                      "back from every instance once the faults stopped — see docs/migration.md.")
    else:
        console.print("[bold red]FAIL[/bold red]: state was lost — see docs/migration.md.")


def _guarded(func: Callable[[], object], ledger: Ledger) -> bool:
    """Run a scenario method; an exception in it is counted as a failure, not fatal."""
    try:
        func()
    except Exception as e:  # any scenario error: report it and go on
        with ledger.lock:
            ledger.failures[f"scenario error: {type(e).__name__}"] += 1
        return False
    return True


def _run_users(scenario_cls: type[Scenario], bases: Sequence[str], ledger: Ledger, users: int, seed: int,
               run_id: str, stop: threading.Event, skip: frozenset[str] = frozenset(),
               ) -> tuple[list[Scenario], list[threading.Thread]]:
    scenarios: list[Scenario] = []
    for i in range(users):
        rng = random.Random(seed * 1000 + i)  # noqa: S311 -- a reproducible load, not secrets
        scenario = scenario_cls(i, Client(bases, ledger, rng), ledger, rng, run_id)
        scenario.skip = skip
        scenarios.append(scenario)

    def loop(s: Scenario) -> None:
        _guarded(s.setup, ledger)
        while not stop.is_set():
            if not _guarded(s.step, ledger):
                time.sleep(0.1)  # a broken scenario must not spin

    threads = [threading.Thread(target=loop, args=(s,), name=f"phoenix-user-{s.user_id}", daemon=True)
               for s in scenarios]
    for t in threads:
        t.start()
    return scenarios, threads


def run(opts: argparse.Namespace, console: Any) -> PhoenixReport:
    """Start the servers and the app, drive the load and faults, verify, report."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    scenario_cls = _load_scenario(opts.scenario)
    server = _pick_server(opts.server)
    if opts.broadcaster and server != "statekit":
        console.print("[yellow]phoenix: --broadcaster needs statekit serve; ignored with gunicorn[/yellow]")
    env = dict(os.environ)
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join([cwd, *filter(None, [env.get("PYTHONPATH")])])
    for item in opts.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r} must be KEY=VALUE")
        env[key] = value
    _check_app_module(opts.app, [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    stack = contextlib.ExitStack()
    tmp = tempfile.mkdtemp(prefix="statekit-phoenix-")
    stack.callback(shutil.rmtree, tmp, True)
    instances: list[Instance] = []
    with stack:
        if not env.get("STATEKIT_REDIS_URL") or not env.get("STATEKIT_BLOBS_URL"):
            from .embedded import RedisServer, S3Server

            if not env.get("STATEKIT_REDIS_URL"):
                redis_srv = stack.enter_context(RedisServer())
                env["STATEKIT_REDIS_URL"] = redis_srv.url
            if not env.get("STATEKIT_BLOBS_URL"):
                s3_srv = stack.enter_context(S3Server("phoenix"))
                env["STATEKIT_BLOBS_URL"] = s3_srv.url
            console.print("[dim]phoenix: private Redis and S3 endpoint started[/dim]")
        interface = _pick_interface(opts.interface, opts.app, env, cwd)  # the app may need those URLs
        for i in range(opts.instances):
            workdir = os.path.join(tmp, f"instance-{i}")
            os.makedirs(workdir)
            instances.append(Instance(i, opts.app, workdir, workers=opts.workers, server=server,
                                      broadcaster=opts.broadcaster, env=env, interface=interface))
        stack.callback(_stop_all, instances)
        for inst in instances:
            inst.start()
        for inst in instances:
            inst.wait_ready(opts.health_path, opts.start_timeout)
        console.print(f"[dim]phoenix: {opts.instances} instance(s) of {opts.app} ready on "
                      f"{', '.join(i.base for i in instances)} ({server}, {interface.upper()})[/dim]")

        ledger = Ledger()
        rng = random.Random(opts.seed)  # noqa: S311
        run_id = f"{opts.seed}-{int(time.time())}"
        probe_client = Client([i.base for i in instances], Ledger(), random.Random(opts.seed))  # noqa: S311
        unchecked = scenario_cls.probe(probe_client)
        for check, why in unchecked.items():
            console.print(f"[yellow]phoenix: {check} not checked: {why}[/yellow]")
        stop = threading.Event()
        chaos = Chaos(instances, ledger, rng, opts.kill_every, opts.reload_every)
        scenarios, threads = _run_users(scenario_cls, [i.base for i in instances], ledger, opts.users,
                                        opts.seed, run_id, stop, frozenset(unchecked))
        chaos.start()
        start = time.monotonic()
        progress = Progress(TextColumn("[bold]phoenix[/bold]"), BarColumn(), TextColumn("{task.description}"),
                            TimeRemainingColumn(), console=console, transient=True,
                            disable=not console.is_terminal)
        with progress:
            task = progress.add_task("", total=opts.duration)
            while (elapsed := time.monotonic() - start) < opts.duration:
                with ledger.lock:
                    lost = ledger.lost_session_writes + ledger.lost_uploads + ledger.corrupted_uploads
                    desc = (f"{ledger.requests} req · {sum(ledger.failures.values())} failed · "
                            f"{ledger.kills} kills · {ledger.reloads} reloads · {lost} lost")
                progress.update(task, completed=elapsed, description=desc)
                time.sleep(0.25)
        stop.set()
        chaos.halt.set()
        chaos.join(5)
        for t in threads:
            t.join(REQUEST_TIMEOUT + 5)
        # let the instances settle (replacement workers booted, reloads done), then check
        for inst in instances:
            with contextlib.suppress(ConfigError):
                inst.wait_ready(opts.health_path, 20)
        time.sleep(0.5)
        for s in scenarios:
            _guarded(s.verify, ledger)
        unchecked = {**unchecked, **scenario_cls.unexercised(ledger, frozenset(unchecked))}
        for client in (probe_client, *(s.client for s in scenarios)):
            client.session.close()  # an idle keep-alive connection holds an instance's stop ~2 s

    lat = sorted(ledger.latencies)
    return PhoenixReport(
        app=opts.app, server=server, instances=opts.instances, workers=opts.workers, users=opts.users,
        duration=opts.duration, requests=ledger.requests, ok=ledger.ok, failures=dict(ledger.failures),
        kills=ledger.kills, in_flight_at_kills=ledger.in_flight_at_kills, reloads=ledger.reloads,
        session_writes=ledger.session_writes, lost_session_writes=ledger.lost_session_writes,
        uploads=ledger.uploads, lost_uploads=ledger.lost_uploads, corrupted_uploads=ledger.corrupted_uploads,
        shared_reads=len(ledger.shared_reads),
        shared_disagreements=(shared_disagreements(ledger.shared_reads, opts.shared_grace)
                              + shared_value_conflicts(ledger.shared_values)),
        p50_ms=_percentile(lat, 50) * 1000, p99_ms=_percentile(lat, 99) * 1000, examples=ledger.examples,
        unchecked=unchecked, interface=interface, unverified=ledger.unverified,
    )


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def conv(raw: str) -> Any:
        value = kind(raw)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{raw!r} must not be negative")
        return value

    return conv


def _seconds(option: str) -> Callable[[str], float]:
    """An argparse type: *option*'s number of seconds, finite, 0 or more (at most a
    wait's longest): ``inf`` ran for ever and ``nan`` was a start timeout that had
    passed before it began."""
    from .config import number

    def conv(raw: str) -> float:
        return number(raw, option, maximum=threading.TIMEOUT_MAX, unit="seconds",
                      error=argparse.ArgumentTypeError)

    return conv


def _writable_file(path: str) -> str:
    """*path* when its directory exists (``-``: stdout): checked before the run, whose
    report would be lost at the end."""
    folder = os.path.dirname(os.path.abspath(path))
    if path != "-" and not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {path}: no such directory {folder}")
    return path


def main(argv: Sequence[str]) -> int:
    """``statekit phoenix MODULE:APP [options]``: exit 0 when no state was lost, 1 when
    some was (or nothing worked), 2 when the run could not start."""
    import requests  # noqa: F401 -- missing: the statekit command names the extra, before any server starts
    from rich.console import Console
    from rich.markup import escape

    from .cli import PlainHelpFormatter

    parser = argparse.ArgumentParser(
        prog="statekit phoenix", formatter_class=PlainHelpFormatter,
        description="Certify an app stateless: run it under statekit serve, drive a scripted load from many "
                    "users while killing workers and reloading, and report any lost state.",
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the WSGI or ASGI app, as for statekit serve")
    parser.add_argument("--interface", choices=("auto", "asgi", "wsgi"), default="auto",
                        help="as for statekit serve: auto (default) imports the app once in a child process "
                             "to tell; asgi runs uvicorn workers (with --server gunicorn: uvicorn-worker's)")
    parser.add_argument("--duration", type=_seconds("--duration"), default=20.0, metavar="S",
                        help="seconds of load (default 20)")
    parser.add_argument("--workers", type=_positive(int), default=2, metavar="N",
                        help="workers per instance (default 2)")
    parser.add_argument("--instances", type=_positive(int), default=2, metavar="N",
                        help="app instances, each in its own working directory (default 2)")
    parser.add_argument("--users", type=_positive(int), default=8, metavar="N",
                        help="simulated users (default 8)")
    parser.add_argument("--kill-every", type=_seconds("--kill-every"), default=2.0, metavar="S",
                        help="SIGKILL a random worker every S seconds (0: never; default 2)")
    parser.add_argument("--reload-every", type=_seconds("--reload-every"), default=7.0, metavar="S",
                        help="reload a random instance every S seconds (0: never; default 7)")
    parser.add_argument("--scenario", default="statekit.phoenix:DefaultScenario", metavar="MODULE:CLASS",
                        help="a statekit.phoenix.Scenario subclass (default: the demo route contract)")
    parser.add_argument("--broadcaster", metavar="MODULE:OBJ", help="passed to statekit serve")
    parser.add_argument("--server", choices=("auto", "statekit", "gunicorn"), default="auto",
                        help="statekit serve (default when installed) or plain gunicorn")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the app (repeatable)")
    parser.add_argument("--health-path", default="/healthz", metavar="PATH",
                        help="polled until 200 before the load starts (default /healthz)")
    parser.add_argument("--start-timeout", type=_seconds("--start-timeout"), default=60.0, metavar="S",
                        help="seconds the instances get to become ready (default 60)")
    parser.add_argument("--shared-grace", type=_seconds("--shared-grace"), default=1.0, metavar="S",
                        help="how far behind the newest shared value a worker may lag (default 1 s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the users' and faults' choices")
    parser.add_argument("--json", type=_writable_file, metavar="FILE",
                        help="also write the report as JSON to FILE ('-': stdout)")
    opts = parser.parse_args(list(argv))
    if opts.instances < 1 or opts.users < 1 or opts.workers < 1:
        parser.error("--instances, --users and --workers must be at least 1")

    console = Console(stderr=opts.json == "-")
    # SIGTERM (a CI job's timeout, kill) and SIGHUP (the terminal closed) stop the run as
    # Ctrl-C does: the instances, each in a session of its own, and the private servers
    # are stopped on the way out, not left serving
    main_thread = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.default_int_handler) for s in stops} if main_thread else {}
    try:
        report = run(opts, console)
    except ConfigError as e:
        console.print(f"[bold red]statekit phoenix: could not run[/bold red]: {escape(str(e))}")
        return 2
    except KeyboardInterrupt:
        print("statekit phoenix: interrupted: the instances and servers it started are stopped",
              file=sys.stderr)
        return 130
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    _print_report(report, console)
    if opts.json:
        text = json.dumps(report.as_dict(), indent=2)
        if opts.json == "-":
            print(text)
        else:
            try:
                with open(opts.json, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                print(f"statekit phoenix: cannot write --json {opts.json}: {e.strerror or e}",
                      file=sys.stderr)
                return 2
    return 0 if report.passed else 1
