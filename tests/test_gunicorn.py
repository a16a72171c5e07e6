"""``statekit serve`` / ``statekit reload`` on real gunicorn processes (loopback only,
bounded load, every process started here is stopped here)."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_lifecycle_helpers import APP, Load, ServeProcess, request, wait_until

from statekit.errors import ConfigError, StatekitError
from statekit.gunicorn import load_object, reload_main, serve_main

pytestmark = pytest.mark.gunicorn

REPORT = re.compile(
    r"statekit: shutdown: in_flight_at_term=(\d+) completed=(\d+) rejected=(\d+) force_killed=(\d+) "
    r"lost_in_flight=(\d+)"
)


def report(log: str) -> tuple[int, ...]:
    found = REPORT.findall(log)
    assert len(found) == 1, log
    return tuple(int(x) for x in found[0])


def slow_request(port: int, seconds: float, out: list) -> threading.Thread:
    def run() -> None:
        try:
            out.append(request(port, f"/sleep/{seconds}", timeout=30))
        except Exception as e:  # noqa: BLE001
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sigterm_drains_rejects_finishes_in_flight_and_reports(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "2", "--pre-stop-delay", "3") as srv:
        srv.wait_ready(2)
        slow: list = []
        t = slow_request(srv.port, 1.5, slow)
        time.sleep(0.3)  # the slow request is in a worker now
        srv.signal(signal.SIGTERM)
        wait_until(lambda: request(srv.port, "/readyz")[0] == 503, 5, "readiness 503")
        status, headers, _ = request(srv.port, "/x", "POST", b"data")
        assert status == 503 and headers["connection"] == "close"
        assert headers["retry-after"] == "1" and headers["x-statekit-drain"] == "reject"
        live = request(srv.port, "/healthz")
        assert live[0] == 200
        assert srv.wait(30) == 0
        t.join(10)
        assert slow and not isinstance(slow[0], Exception) and slow[0][0] == 200
        in_flight, completed, rejected, forced, lost = report(srv.log())
        assert in_flight == 1 and completed >= 1 and rejected >= 1 and forced == 0 and lost == 0


def test_serve_mode_keeps_serving_during_pre_stop_delay(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "3", "--drain-mode", "serve") as srv:
        srv.wait_ready(1)
        srv.signal(signal.SIGTERM)
        wait_until(lambda: request(srv.port, "/readyz")[0] == 503, 5, "readiness 503")
        status, headers, _ = request(srv.port, "/served")
        assert status == 200 and headers["connection"] == "close"
        assert srv.wait(30) == 0
        assert report(srv.log())[2] == 0  # nothing rejected


def test_graceful_timeout_force_kills_and_reports(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "1", "--pre-stop-delay", "0", "--graceful-timeout", "1") as srv:
        srv.wait_ready(1)
        slow: list = []
        slow_request(srv.port, 20, slow)
        time.sleep(0.5)
        srv.signal(signal.SIGTERM)
        assert srv.wait(15) == 0  # exits (force-killing the slow request) without hanging
        in_flight, _, _, forced, lost = report(srv.log())
        assert (in_flight, forced, lost) == (1, 1, 1)


def test_three_rolling_reloads_under_load_fail_nothing(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        before = set(srv.workers())
        with Load(srv.port, threads=4) as load:
            time.sleep(1)
            for i in range(3):
                assert reload_main(["--pid", str(srv.pidfile)] if i % 2 else [str(srv.pid)]) == 0
                wait_until(lambda n=i: srv.log().count("rolling reload done") == n + 1, 30, "reload")
                time.sleep(1.5)
        # the last old worker, told to stop at "rolling reload done", may still be draining
        wait_until(lambda: len(srv.workers()) == 2, 30, "the last old worker to exit")
        after = set(srv.workers())
        log = srv.log()
    assert load.total > 50
    assert load.failures == [], (load.reasons, log)
    assert not before & after and len(after) == 2
    # every old worker exited only after its replacement was ready
    events = re.findall(r"statekit: worker (\d+) ready|Worker exiting \(pid: (\d+)\)", log)
    order = [("ready", int(a)) if a else ("exit", int(b)) for a, b in events]
    ready_count = sum(1 for kind, _ in order if kind == "ready")
    assert ready_count == 2 + 3 * 2
    for idx, (kind, _pid) in enumerate(order):
        if kind == "exit":
            readies = sum(1 for k, _ in order[:idx] if k == "ready")
            exits = sum(1 for k, _ in order[:idx + 1] if k == "exit")
            assert readies >= 2 + exits, order


def test_reload_with_a_broken_app_keeps_old_workers(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        # both workers have imported the app (wait_ready counts processes, not loaded apps)
        wait_until(lambda: len(re.findall(r"statekit: worker \d+ ready", srv.log())) == 2, 30, "ready")
        before = set(srv.workers())
        (tmp_path / "app.py").write_text("raise RuntimeError('broken deploy')\n")
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "rolling reload aborted" in srv.log(), 30, "the aborted reload")
        assert set(srv.workers()) == before
        assert request(srv.port, "/")[0] == 200
        (tmp_path / "app.py").write_text(APP)
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "rolling reload done" in srv.log(), 30, "the good reload")
        wait_until(lambda: not set(srv.workers()) & before, 30, "old workers gone")
        assert request(srv.port, "/")[0] == 200


def test_crashed_worker_is_replaced(tmp_path: Path) -> None:
    with ServeProcess(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        victim = srv.workers()[0]
        import os

        # the readiness probe's answer is out, but its thread may still be finishing
        # (access log, hooks): the worker counts the request until then
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in srv.workers() and len(srv.workers()) == 2, 20, "a replacement")
        assert request(srv.port, "/")[0] == 200
        assert "died with 0 requests in flight" in srv.log()


def test_random_worker_kills_fail_at_most_the_requests_in_flight(tmp_path: Path) -> None:
    import os

    rng = random.Random(7)
    with ServeProcess(tmp_path, "--workers", "3") as srv:
        srv.wait_ready(3)
        in_flight_at_kills = 0
        kills = 0
        with Load(srv.port, threads=4, path="/sleep/0.05") as load:
            for _ in range(5):
                time.sleep(2)
                workers = srv.workers()
                if not workers:
                    continue
                in_flight_at_kills += load.in_flight
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
            time.sleep(1)
        assert len(srv.workers()) == 3
        died = sum(int(n) for n in re.findall(r"died with (\d+) requests in flight", srv.log()))
    print(f"kills={kills} requests={load.total} failed={len(load.failures)} {dict(load.reasons)} "
          f"client in-flight at kills={in_flight_at_kills} master-counted in-flight at deaths={died}")
    assert kills == 5 and load.ok > 50
    assert len(load.failures) <= in_flight_at_kills, (load.reasons, in_flight_at_kills)


BROADCASTER = textwrap.dedent(
    """
    import os, threading

    class StandIn:
        def __init__(self, path):
            self.path = path
        def _write(self, what):
            with open(self.path, "a") as f:
                f.write(f"{what} {os.getpid()}\\n")
        def start(self):
            self._write("start")
        def stop(self, timeout):
            self._write("stop")

    broadcaster = StandIn(os.environ["BROADCAST_LOG"])
    """
)


def test_broadcaster_runs_in_the_master_across_reloads(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(BROADCASTER)
    events = tmp_path / "broadcast.log"
    srv = ServeProcess(tmp_path, "--workers", "2", "--broadcaster", "jobs:broadcaster",
                       "--pre-stop-delay", "0", env={"BROADCAST_LOG": str(events)})
    with srv:
        srv.wait_ready(2)
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "rolling reload done" in srv.log(), 30, "reload")
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
    lines = events.read_text().split()
    assert lines == ["start", str(srv.pid), "stop", str(srv.pid)]


@pytest.mark.redis
def test_real_broadcaster_is_accepted(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "jobs2.py").write_text(textwrap.dedent(
        """
        from statekit.broadcast import Broadcaster
        broadcaster = Broadcaster()

        @broadcaster.every(1, name="tick")
        def tick():
            return 1
        """
    ))
    srv = ServeProcess(tmp_path, "--workers", "1", "--broadcaster", "jobs2:broadcaster",
                       "--pre-stop-delay", "0", env={"STATEKIT_REDIS_URL": redis_url})
    with srv:
        srv.wait_ready(1)
        wait_until(lambda: "started in the master" in srv.log(), 10)
        time.sleep(1.5)
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
    log = srv.log()
    assert "did not stop cleanly" not in log
    assert log.index("started in the master") < log.index("statekit: shutdown")
    import redis

    published = redis.Redis.from_url(redis_url).keys("*tick*")
    assert published, "the broadcaster in the master published nothing"


GUNICORN_CONF = textwrap.dedent(
    """
    from statekit.gunicorn import *  # noqa: F403

    workers = 2
    worker_class = "gthread"
    threads = 2
    control_socket_disable = True
    """
)

WRAPPED_APP = (
    "from statekit.lifecycle import LifecycleMiddleware\n"
    "import app as _a\n"
    "app = LifecycleMiddleware(_a.app)\n"
)


def test_hooks_in_a_users_own_gunicorn_conf(tmp_path: Path) -> None:
    from statekit.embedded import free_port

    (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF)
    (tmp_path / "wrapped.py").write_text(WRAPPED_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
           "wrapped:app"]
    srv = ServeProcess(tmp_path, command=cmd, port=port, env={"STATEKIT_PRE_STOP_DELAY": "3"})
    with srv:
        srv.wait_ready(2)
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "rolling reload done" in srv.log(), 30, "rolling reload")
        srv.signal(signal.SIGTERM)
        wait_until(lambda: request(srv.port, "/readyz")[0] == 503, 5, "readiness 503")
        assert request(srv.port, "/")[0] == 503
        assert srv.wait(30) == 0
    assert report(srv.log())[2] >= 1


def test_reload_command_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot read a pid"):
        reload_main(["--pid", str(tmp_path / "missing.pid")])
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(StatekitError, match="no process"):
        reload_main([str(proc.pid)])
    monkeypatch.chdir(tmp_path)  # no ./.statekit/ pid file here
    with pytest.raises(ConfigError, match="no running statekit serve"):
        reload_main([])


def test_serve_command_errors() -> None:
    with pytest.raises(ConfigError, match="MODULE:APP"):
        serve_main(["nocolon"])
    with pytest.raises(SystemExit) as exited:  # a usage error (argparse's), exit 2
        serve_main(["a:b", "--workers", "0"])
    assert exited.value.code == 2
    with pytest.raises(ConfigError, match="cannot import"):
        serve_main(["a:b", "--broadcaster", "no_such_module_xyz:b"])
    with pytest.raises(ConfigError, match="start"):
        serve_main(["a:b", "--broadcaster", "os:path"])
    with pytest.raises(ConfigError, match="MODULE:OBJECT"):
        load_object("justmodule")


SLOW_IMPORT_APP = textwrap.dedent(
    """
    import os, time
    if os.path.exists("slow"):  # created by the test: later workers take 30 s to import
        time.sleep(30)
    """
) + APP


def test_sigterm_during_a_rolling_reload_stops_cleanly(tmp_path: Path) -> None:
    srv = ServeProcess(tmp_path, "--workers", "2", "--pre-stop-delay", "0.5", "--graceful-timeout", "5",
                       app_source=SLOW_IMPORT_APP)
    with srv:
        srv.wait_ready(2)
        (tmp_path / "slow").write_text("")  # the next workers take 30 s to import
        srv.signal(signal.SIGHUP)
        wait_until(lambda: len(srv.workers()) == 3, 10, "the replacement to be forked")
        assert request(srv.port, "/")[0] == 200  # the old workers still serve
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
    log = srv.log()
    assert "rolling reload aborted" in log
    # the half-booted replacement was killed at once, not after the graceful timeout
    assert report(log)[3:] == (0, 0)


def test_nothing_connects_at_import_or_construction() -> None:
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('connected at import time')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import statekit.gunicorn, statekit.lifecycle\n"
        "from statekit.config import Settings\n"
        "lc = statekit.lifecycle.Lifecycle(Settings(redis_url='redis://10.255.255.1:6379/0',\n"
        "    blobs_url='s3://bucket?endpoint_url=http://10.255.255.1:9'))\n"
        "statekit.lifecycle.LifecycleMiddleware(lambda e, s: [], lc)\n"
        "print('ok', sorted(lc.checks))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok ['blobs', 'redis']"


def test_an_older_gunicorn_than_the_worker_needs_is_refused_by_name() -> None:
    """Under gunicorn 22-23 the worker crashed on its first connection (accept() takes
    the listener only since 24.0); under 24.0-26.1 every response went out body first,
    headers after (Response._emit_body came in 26.2)."""
    import tomllib

    from statekit import gunicorn as sk_gunicorn

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    floor = ".".join(map(str, sk_gunicorn._GUNICORN_MIN))
    pins = {d for e in ("server", "all") for d in extras[e] if d.startswith("gunicorn")}
    assert pins == {f"gunicorn>={floor}"}
    code = ("import gunicorn\n"
            "gunicorn.version_info, gunicorn.__version__ = (26, 1, 0), '26.1.0'\n"
            "import statekit.gunicorn\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "ConfigError: statekit serve needs gunicorn 26.2 or later, not 26.1.0" in out.stderr
