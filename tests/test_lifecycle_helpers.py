"""Helpers for the process tests (``statekit serve``, nginx): a server process we
start and stop ourselves, and a bounded load generator on loopback.

Imported by test_gunicorn*.py and test_nginx*.py; holds no tests itself.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

from statekit.embedded import free_port

#: a tiny WSGI app: /sleep/<s> sleeps, POST bodies are read and their size echoed
APP = textwrap.dedent(
    """
    import os, time

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/sleep/"):
            time.sleep(float(path.split("/")[2]))
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n) if n else b""
        body = f"{os.getpid()} {len(data)}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


def children(pid: int) -> list[int]:
    """Direct children of *pid* (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def request(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Connection": "close"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ServeProcess:
    """``statekit serve`` (or any command) in a subprocess we own, logging to a file."""

    def __init__(self, workdir: Path, *args: str, app: str = "app:app", command: list[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, app_source: str = APP) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "app.py").exists():
            (workdir / "app.py").write_text(app_source)
        self.port = port or free_port()
        self.pidfile = workdir / f"serve-{self.port}.pid"
        self.logfile = workdir / f"serve-{self.port}.log"
        cmd = command or [
            sys.executable, "-m", "statekit", "serve", app, "--bind", f"127.0.0.1:{self.port}",
            "--pid", str(self.pidfile), *args,
        ]
        full_env = {**os.environ, "PYTHONPATH": str(workdir), **(env or {})}
        self._log = open(self.logfile, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, workers: int = 1, timeout: float = 30.0) -> ServeProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            return request(self.port, "/readyz", timeout=2)[0] == 200 and len(self.workers()) >= workers

        wait_until(ready, timeout, "the server to be ready")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.logfile.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """TERM the master, then KILL it and its workers if they linger."""
        if self.proc.poll() is None:
            kids = self.workers()
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self._log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Load:
    """*threads* clients sending requests in a loop (new connection each, GET and
    POST mixed) until :meth:`stop`; counts successes and failures, and how many
    requests are in flight at any moment."""

    def __init__(self, port: int, threads: int = 4, path: str = "/", post_every: int = 3,
                 timeout: float = 15.0) -> None:
        self.port = port
        self.path = path
        self.post_every = post_every
        self.timeout = timeout
        self.ok = 0
        self.failures: list[str] = []
        self.reasons: Counter[str] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            post = self.post_every and n % self.post_every == 0
            with self._lock:
                self.in_flight += 1
            try:
                status, _, data = request(self.port, self.path, "POST" if post else "GET",
                                          b"x" * 1000 if post else None, timeout=self.timeout)
                good = status == 200 and (not post or data.endswith(b" 1000"))
                reason = f"HTTP {status}"
            except Exception as e:  # noqa: BLE001 - every failure counts
                good, reason = False, type(e).__name__
            with self._lock:
                self.in_flight -= 1
                if good:
                    self.ok += 1
                else:
                    self.failures.append(reason)
                    self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)
