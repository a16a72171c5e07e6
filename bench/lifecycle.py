"""Process lifecycle benchmark: worker ready time after fork, reloads under load
(gunicorn's own HUP vs statekit's rolling reload), the shutdown report, and
workers SIGKILLed under load (gunicorn's gthread vs statekit serve).

    .venv/bin/python bench/lifecycle.py [--seconds 8] [--import-delay 1.0] [--kills 5]

Everything runs on loopback with processes this script starts and stops. The app
sleeps ``--import-delay`` seconds at import, like a real app loading its code: that
is what makes a reload that does not wait for readiness visible. Prints, asserts
nothing.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from statekit.embedded import RedisServer, free_port

APP = textwrap.dedent(
    """
    import os, time
    time.sleep(float(os.environ.get("IMPORT_DELAY", "0")))
    from flask import Flask, session
    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config.update(SECRET_KEY="bench-secret-0123456789abcdef", STATEKIT_SESSION_COOKIE_SECURE=False,
                      STATEKIT_BROADCAST_ENABLED=False)
    StateKit(app)

    @app.route("/", methods=["GET", "POST"])
    def index():
        time.sleep(0.005)
        return "ok"
    """
)

GUNICORN_CONF = "workers = 2\nworker_class = 'gthread'\nthreads = 4\ncontrol_socket_disable = True\n"


def request(port: int, method: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = b"x" * 100 if method == "POST" else None
        conn.request(method, "/", body=body, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Load:
    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.perf_counter()
            try:
                status = request(self.port, "POST" if n % 3 == 0 else "GET")
            except (OSError, http.client.HTTPException):
                status = 0
            dt = time.perf_counter() - t0
            with self._lock:
                if status == 200:
                    self.latencies.append(dt)
                else:
                    self.failures += 1
                    self.rejected += status == 503

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies) or [0.0]
        return {
            "requests": len(lat) + self.failures,
            "failed": self.failures,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max_ms": 1000 * lat[-1],
        }


def start(cmd: list[str], workdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=workdir, env={**os.environ, "PYTHONPATH": str(workdir), **env},
                            stdout=out, stderr=subprocess.STDOUT)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited early")
        try:
            if request(port, "GET") == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server not ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reload_run(kind: str, workdir: Path, env: dict[str, str], seconds: float,
               reloads: int) -> dict[str, float]:
    port = free_port()
    log = workdir / f"{kind}.log"
    if kind == "gunicorn HUP":
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
               "app:app"]
    else:
        cmd = [sys.executable, "-m", "statekit", "serve", "app:app", "--bind", f"127.0.0.1:{port}",
               "--workers", "2", "--pre-stop-delay", "0"]
    proc = start(cmd, workdir, env, log)
    try:
        wait_ready(port, proc)
        time.sleep(1.5)
        with Load(port) as load:
            gap = seconds / (reloads + 1)
            for _ in range(reloads):
                time.sleep(gap)
                proc.send_signal(signal.SIGHUP)
            time.sleep(gap)
        return load.summary()
    finally:
        stop(proc)


KILL_APP = textwrap.dedent(
    """
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    """
)


def kill_run(kind: str, workdir: Path, kills: int, seconds: float) -> str:
    """``ab -r -c200`` (when installed; else 50 Python clients) against 2 workers, one
    SIGKILLed every 1-2 s; failed requests vs what the master's log counted."""
    import random
    import shutil

    port = free_port()
    log = workdir / f"kill-{kind}.log"
    (workdir / "killapp.py").write_text(KILL_APP)
    if kind == "gunicorn gthread":
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
               "killapp:app"]
    else:
        cmd = [sys.executable, "-m", "statekit", "serve", "killapp:app", "--bind", f"127.0.0.1:{port}",
               "--workers", "2"]
    proc = start(cmd, workdir, {}, log)
    rng = random.Random(15)
    done = threading.Event()

    def killer() -> None:
        n = 0
        while n < kills and not done.wait(rng.uniform(1, 2)):
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if len(kids) == 2:
                os.kill(int(rng.choice(kids)), signal.SIGKILL)
                n += 1

    try:
        wait_ready(port, proc)
        t = threading.Thread(target=killer, daemon=True)
        ab = shutil.which("ab")
        if ab:
            t.start()
            out = subprocess.run([ab, "-r", "-c200", f"-t{seconds:.0f}", "-n", "10000000",
                                  f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
            done.set()
            t.join()
            # every failed request ends with a short read, counted once under Length;
            # ab's "Failed requests" counts a reset up to three times (receive, length, exception)
            total = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
            m = re.search(r"Length: (\d+)", out)
            failed, client = (int(m.group(1)) if m else 0), "ab -r -c200"
        else:
            with Load(port, threads=50) as load:
                t.start()
                time.sleep(seconds)
                done.set()
                t.join()
            total, failed, client = int(load.summary()["requests"]), load.failures, "50 Python clients"
        time.sleep(1)
    finally:
        stop(proc)
    text = log.read_text()
    died = [int(n) for n in re.findall(r"died with (\d+) requests in flight", text)]
    counted = f"{sum(died)} ({'+'.join(map(str, died))})" if died else "(not counted)"
    return f"{kind:18} {client:18} {kills:6} {total:9} {failed:7}   {counted}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="load duration of each reload run")
    p.add_argument("--import-delay", type=float, default=1.0, help="seconds the app takes to import")
    p.add_argument("--reloads", type=int, default=3)
    p.add_argument("--kills", type=int, default=5, help="workers SIGKILLed in each kill run (0: skip)")
    opts = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="statekit-bench-") as tmp, RedisServer() as redis_srv:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(APP)
        (workdir / "gunicorn.conf.py").write_text(GUNICORN_CONF)
        env = {"STATEKIT_REDIS_URL": redis_srv.url, "IMPORT_DELAY": str(opts.import_delay)}

        print(f"# reloads under load: {opts.reloads} reloads in {opts.seconds:g}s, 4 clients, "
              f"2 workers x 4 threads, app import takes {opts.import_delay:g}s")
        results = {kind: reload_run(kind, workdir, env, opts.seconds, opts.reloads)
                   for kind in ("gunicorn HUP", "statekit reload")}
        print(f"{'':18} {'requests':>9} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for kind, r in results.items():
            print(f"{kind:18} {r['requests']:9.0f} {r['failed']:7.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                  f"{r['max_ms']:8.1f}")
        g, s = results["gunicorn HUP"], results["statekit reload"]
        if s["max_ms"]:
            print(f"max latency ratio gunicorn HUP / statekit reload: {g['max_ms'] / s['max_ms']:.1f}x")

        ready = [float(x) for x in re.findall(r"ready ([\d.]+)s after fork", (workdir / "statekit reload.log")
                                               .read_text())]
        if ready:
            print(f"\n# worker ready time after fork (statekit serve, {len(ready)} workers, app import "
                  f"{opts.import_delay:g}s): min {min(ready):.3f}s  median {statistics.median(ready):.3f}s  "
                  f"max {max(ready):.3f}s")
        env0 = {**env, "IMPORT_DELAY": "0"}
        port = free_port()
        proc = start([sys.executable, "-m", "statekit", "serve", "app:app", "--bind", f"127.0.0.1:{port}",
                      "--workers", "2", "--pre-stop-delay", "1"], workdir, env0, workdir / "term.log")
        try:
            wait_ready(port, proc)
            with Load(port) as load:
                time.sleep(2)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                took = time.monotonic() - t0
        finally:
            stop(proc)
        log = (workdir / "term.log").read_text()
        ready0 = [float(x) for x in re.findall(r"ready ([\d.]+)s after fork", log)]
        print(f"# worker ready time after fork (no import delay): {', '.join(f'{x:.3f}s' for x in ready0)}")
        report = re.search(r"statekit: shutdown: .*", log)
        print(f"\n# SIGTERM under load (direct, no proxy; pre-stop 1s): master exited in {took:.2f}s")
        print(report.group(0) if report else "no shutdown report found")
        print(f"client side: {load.summary()['requests']:.0f} requests, {load.rejected} drain 503s, "
              f"{load.failures - load.rejected} refused after the listener closed (no proxy in front here: "
              "behind nginx both are retried on the other instance, see tests/test_nginx.py)")
        if opts.kills:
            print(f"\n# a worker SIGKILLed every 1-2 s under load (direct, no proxy; 2 workers x 4 threads, "
                  f"{opts.kills} kills, {opts.kills * 1.5 + 2:.0f}s)")
            print(f"{'':18} {'client':18} {'kills':>6} {'requests':>9} {'failed':>7}   "
                  "in flight at the kills (master's log)")
            for kind in ("gunicorn gthread", "statekit serve"):
                print(kill_run(kind, workdir, opts.kills, opts.kills * 1.5 + 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
