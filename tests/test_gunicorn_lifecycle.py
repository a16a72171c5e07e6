"""Lifecycle edge cases of ``statekit serve`` on real gunicorn processes: USR2
re-exec and hand-over (loopback only, bounded load, every process started here is
stopped here, by pid)."""

from __future__ import annotations

import http.client
import os
import signal
import threading
from pathlib import Path

import pytest
from test_lifecycle_helpers import Load, ServeProcess, children, request

from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.gunicorn


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def test_usr2_then_term_of_the_old_master_fails_no_request(tmp_path: Path) -> None:
    """The classic gunicorn binary upgrade: USR2 starts a new master on the same
    listeners, TERM stops the old one. The new master must come up under
    ``python -m statekit serve``, and the old one must hand its listeners over
    rather than answer its share of new connections 503 while it "drains"."""
    srv = ServeProcess(tmp_path, "--workers", "2", "--pre-stop-delay", "2")
    successor: int | None = None
    try:
        srv.wait_ready(2)
        old_workers = set(srv.workers())
        with Load(srv.port, threads=4) as load:
            wait_for(lambda: load.ok > 20, 10, "load on the old master")
            srv.signal(signal.SIGUSR2)
            successor = wait_for(lambda: _read_pid(Path(f"{srv.pidfile}.2")), 20, "the new master's pid file")
            new_master = successor
            wait_for(lambda: len(children(new_master)) == 2
                     and srv.log().count("statekit: worker") >= 4, 20, "the new master's workers")
            srv.signal(signal.SIGTERM)
            assert srv.wait(30) == 0
            served = load.ok
            wait_for(lambda: load.ok > served + 20, 10, "load served by the new master alone")
        assert load.failures == [], (dict(load.reasons), srv.log()[-3000:])
        status, _, body = request(srv.port, "/")
        assert status == 200 and int(body.split()[0]) in children(new_master)
        assert not old_workers & set(children(new_master))
    finally:
        srv.stop()
        if successor is not None and _alive(successor):
            os.kill(successor, signal.SIGTERM)
            wait_for(lambda: not _alive(successor), 40, "the new master to exit")


READINESS_APP = '''
import os, time
from statekit.lifecycle import Lifecycle, LifecycleMiddleware

def note(what):
    with open(what, "a") as f:
        f.write(f"{os.getpid()}\\n")

def slow_backend(timeout):
    if not os.path.exists("hold"):  # the warm-up before the worker reports ready: at once
        note("warm-ups")
        return
    note("checks")
    deadline = time.monotonic() + 20
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.01)
    # cached from now on: the probes that waited for this check take its result
    LIFECYCLE.cache_ttl = 60

def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]

class Probed:
    """Notes each request before the lifecycle middleware sees it."""
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/readyz":
            note("probes")
        return self.wsgi_app(environ, start_response)

# nothing cached until the probes' check (the warm-up's result must not answer them)
LIFECYCLE = Lifecycle(checks={"backend": slow_backend}, budget=30, cache_ttl=0)
app = Probed(LifecycleMiddleware(inner, LIFECYCLE))
'''


def test_concurrent_readiness_probes_share_one_check(tmp_path: Path) -> None:
    """Probes that arrive while a readiness check runs wait for its result: one
    check per cache period, however many load balancers probe at once (and, with
    a backend that hangs, no probe waits for a queue of checks, one budget each).

    The worker's warm-up (the checks run once before it reports ready, 9456db2) runs
    the check at once: it ran the held check before, so the worker was ready after the
    check's own 20 s deadline and the four probes took the warm-up's cached result
    before "release" was written (no probe waited for a check in flight)."""
    srv = ServeProcess(tmp_path, "--workers", "1", app_source=READINESS_APP)
    with srv:
        wait_for(lambda: "ready" in srv.log() and _get(srv.port, "/healthz") == 200, 30, "the worker")
        assert _lines(tmp_path / "warm-ups") == 1 and _lines(tmp_path / "checks") == 0
        (tmp_path / "hold").write_text("")
        results: list[int | Exception] = []

        def probe() -> None:
            try:
                results.append(request(srv.port, "/readyz", timeout=30)[0])
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                results.append(e)

        threads = [threading.Thread(target=probe, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: _lines(tmp_path / "probes") == 4, 20, "four probes in the worker")
        assert results == [], "a probe was answered before the check in flight ended"
        (tmp_path / "release").write_text("")
        for t in threads:
            t.join(30)
        assert results == [200] * 4
        assert _lines(tmp_path / "checks") == 1


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def _get(port: int, path: str) -> int:
    try:
        return request(port, path, timeout=5)[0]
    except OSError:
        return 0


HELD_APP = '''
import os, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/held":  # in flight until the test releases it
        open("started", "w").close()
        deadline = time.monotonic() + 20
        while not os.path.exists("release") and time.monotonic() < deadline:
            time.sleep(0.01)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.mark.parametrize("mode", ["reject", "serve"])
def test_a_request_in_flight_at_term_is_answered_with_connection_close(tmp_path: Path, mode: str) -> None:
    """A keep-alive request that started before SIGTERM and ends during the drain
    gets ``Connection: close`` too, and its connection is closed after it, so the
    client does not send its next request to a process that is leaving."""
    srv = ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "20", "--drain-mode", mode,
                       app_source=HELD_APP)
    with srv:
        srv.wait_ready(1)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("GET", "/held")  # HTTP/1.1, keep-alive
            wait_for(lambda: (tmp_path / "started").exists(), 10, "the request in the app")
            srv.signal(signal.SIGTERM)
            wait_for(lambda: _get(srv.port, "/readyz") == 503, 10, "the drain")
            (tmp_path / "release").write_text("")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            assert resp.getheader("Connection", "").lower() == "close"
            assert resp.will_close
        finally:
            conn.close()
            srv.signal(signal.SIGQUIT)  # no need to sit out the pre-stop delay
        assert srv.wait(30) == 0
