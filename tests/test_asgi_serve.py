"""``statekit serve`` on an ASGI app (Starlette on uvicorn workers under statekit's
arbiter), and worker recycling for ASGI and WSGI: real processes on loopback,
bounded load, every process started here is stopped here, by pid."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import test_gunicorn
from test_lifecycle_helpers import APP, Load, ServeProcess, request, wait_until

from statekit.gunicorn import detect_interface, reload_main

pytestmark = pytest.mark.gunicorn

#: the WSGI test app's routes, on Starlette; lifespan events noted in lifespan.log
ASGI_APP = textwrap.dedent(
    """
    import asyncio, contextlib, os
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def note(what):
        with open("lifespan.log", "a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        note("startup")
        yield
        note("shutdown")

    async def echo(request):
        path = request.url.path
        if path.startswith("/sleep/"):
            await asyncio.sleep(float(path.split("/")[2]))
        data = await request.body()
        return PlainTextResponse(f"{os.getpid()} {len(data)}")

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])], lifespan=lifespan)
    """
)

def serve(tmp_path: Path, *args: str, source: str = ASGI_APP) -> ServeProcess:
    return ServeProcess(tmp_path, *args, app_source=source)


EVENTS = re.compile(r"statekit: worker (\d+) ready|Worker exiting \(pid: (\d+)\)"
                    r"|statekit: recycling worker (\d+)")


def ready_set_sizes(log: str, workers: int) -> list[int]:
    """How many workers serve (ready, not stopping) after each event of the log, from
    the moment the first *workers* are ready. A recycled worker leaves the set when
    its successor is ready (the master TERMs it right then), or when it exits if that
    comes first; a reloaded worker when it exits."""
    ready: set[int] = set()
    leaving: set[int] = set()
    due: int | None = None
    sizes: list[int] = []
    for is_ready, exited, recycled in EVENTS.findall(log):
        if recycled:
            due = int(recycled)
        elif is_ready:
            ready.add(int(is_ready))
            if due is not None:
                leaving.add(due)
                due = None
        else:
            ready.discard(int(exited))
            leaving.discard(int(exited))
        if sizes or len(ready) >= workers:
            sizes.append(len(ready - leaving))
    return sizes


def served_log(tmp_path: Path) -> str:
    (log,) = tmp_path.glob("serve-*.log")
    return log.read_text(errors="replace")


def test_asgi_app_drains_on_sigterm_with_the_in_flight_request_finishing(tmp_path: Path) -> None:
    """The WSGI test, on the Starlette app: a slow request in flight at SIGTERM
    finishes, readiness 503, new requests 503 + Retry-After + Connection: close,
    liveness 200, exit 0, the report counts it all; and each worker ran the app's
    lifespan startup and shutdown and exited on its own."""
    (tmp_path / "app.py").write_text(ASGI_APP)
    test_gunicorn.test_sigterm_drains_rejects_finishes_in_flight_and_reports(tmp_path)
    log = served_log(tmp_path)
    assert "Using worker: statekit.gunicorn_asgi.StatekitUvicornWorker" in log
    events = (tmp_path / "lifespan.log").read_text().split("\n")
    assert sorted(e.split()[0] for e in events if e) == ["shutdown", "shutdown", "startup", "startup"]
    assert "died with" not in log and log.count("Worker exiting") == 2


def test_a_replacement_whose_lifespan_startup_fails_aborts_the_reload(tmp_path: Path) -> None:
    """Ready means the lifespan startup is done: a new worker whose startup fails (its
    database unreachable, say) never counts as ready, and the old workers serve on."""
    source = ASGI_APP.replace('    note("startup")\n',
                              '    note("startup")\n    if os.path.exists("fail"):\n'
                              '        raise RuntimeError("cannot reach the database")\n')
    with serve(tmp_path, "--workers", "2", source=source) as srv:
        srv.wait_ready(2)
        wait_until(lambda: srv.log().count("statekit: worker") >= 2, 10, "both workers ready")
        before = set(srv.workers())
        (tmp_path / "fail").write_text("")
        assert reload_main(["--pid", str(srv.pidfile)]) == 0
        wait_until(lambda: "rolling reload aborted" in srv.log(), 30, "the aborted reload")
        assert set(srv.workers()) == before
        assert request(srv.port, "/")[0] == 200
        log = srv.log()
    assert "Application startup failed" in log and "2 old workers keep serving" in log


def test_asgi_serve_mode_serves_with_connection_close_while_draining(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ASGI_APP)
    test_gunicorn.test_serve_mode_keeps_serving_during_pre_stop_delay(tmp_path)
    assert "StatekitUvicornWorker" in served_log(tmp_path)


class KeepAlive(threading.Thread):
    """One client sending requests on one kept-alive connection (http.client opens a
    new one only after a response said ``Connection: close``): a server that closes
    the connection under it without saying so shows as a failure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        while not self.halt.is_set():
            try:
                conn.request("GET", "/kept")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {response.status}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(type(e).__name__)
                conn.close()
        conn.close()


def test_asgi_rolling_reloads_under_load_fail_nothing(tmp_path: Path) -> None:
    with serve(tmp_path, "--workers", "2") as srv:
        srv.wait_ready(2)
        before = set(srv.workers())
        kept = [KeepAlive(srv.port) for _ in range(2)]
        with Load(srv.port, threads=4) as load:
            for k in kept:
                k.start()
            time.sleep(1)
            for i in range(2):
                assert reload_main(["--pid", str(srv.pidfile)]) == 0
                wait_until(lambda n=i: srv.log().count("rolling reload done") == n + 1, 30, "reload")
                time.sleep(1)
            for k in kept:
                k.halt.set()
                k.join(20)
        # "rolling reload done" is logged when the last old worker is told to stop; it
        # may still be draining (its pre-stop delay, its in-flight requests): wait for it
        wait_until(lambda: len(srv.workers()) == 2, 30, "the last old worker to exit")
        after = set(srv.workers())
        log = srv.log()
    kept_failures = [f for k in kept for f in k.failures]
    print(f"reloads=2 requests={load.total} failed={len(load.failures)} "
          f"kept-alive requests={sum(k.ok for k in kept)} failed={len(kept_failures)}")
    assert load.total > 50 and load.failures == [], (load.reasons, log[-3000:])
    assert all(k.ok > 20 for k in kept) and kept_failures == [], kept_failures
    assert not before & after and len(after) == 2
    sizes = ready_set_sizes(log, 2)
    assert min(sizes) == 2 and sizes[-1] == 2, sizes  # each old worker exited after its successor was ready


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_max_requests_recycles_one_worker_at_a_time(tmp_path: Path, interface: str) -> None:
    """Three workers reach --max-requests together (no jitter): the master replaces
    them one after the other, each successor ready before its predecessor stops
    (gunicorn #3427: its own max_requests restarts them together)."""
    source = ASGI_APP if interface == "asgi" else APP
    args = ("--workers", "3", "--max-requests", "40", "--pre-stop-delay", "0")
    with serve(tmp_path, *args, source=source) as srv:
        srv.wait_ready(3)
        first = set(srv.workers())
        with Load(srv.port, threads=6) as load:
            wait_until(lambda: srv.log().count("statekit: recycling worker") >= 3
                       and not first & set(srv.workers()), 40, "three recycled workers")
        log = srv.log()
    sizes = ready_set_sizes(log, 3)
    recycled = log.count("statekit: recycling worker")
    low = min(sizes)
    print(f"{interface}: recycled={recycled} requests={load.total} failed={len(load.failures)} "
          f"fewest ready workers={low} of 3")
    assert load.failures == [], (load.reasons, log[-3000:])
    assert recycled >= 3 and low >= 2, sizes  # at most one missing from the ready set
    assert "Maximum request limit" not in log and "died with" not in log


@pytest.mark.parametrize(("option", "reason"),
                         [("--max-worker-age=1", "s old"), ("--max-worker-rss=1", "RSS")])
def test_age_and_rss_limits_recycle_one_worker_at_a_time(tmp_path: Path, option: str, reason: str) -> None:
    """A 1 s age or a 1 MiB RSS limit makes every worker due as soon as it is ready:
    the master still replaces one at a time, each successor ready first."""
    with serve(tmp_path, "--workers", "2", option, "--pre-stop-delay", "0") as srv:
        srv.wait_ready(2)
        with Load(srv.port, threads=3) as load:
            wait_until(lambda: srv.log().count("statekit: recycling worker") >= 3, 40, "three recyclings")
        log = srv.log()
    sizes = ready_set_sizes(log, 2)
    lines = re.findall(r"statekit: recycling worker \d+ \((.*)\): its successor", log)
    print(f"{option}: recycled={len(lines)} ({lines[0]}) requests={load.total} failed={len(load.failures)} "
          f"fewest ready workers={min(sizes)} of 2")
    if min(sizes) < 2:
        print(EVENTS.findall(log), sizes)
    assert all(reason in line for line in lines), lines
    assert load.failures == [] and min(sizes) >= 1, (load.reasons, sizes)


HOOKS_CONF = textwrap.dedent(
    """
    from statekit.gunicorn import *  # noqa: F403

    workers = 2
    worker_class = "statekit.gunicorn_asgi.StatekitUvicornWorker"
    control_socket_disable = True
    """
)


def test_uvicorn_workers_in_a_users_own_gunicorn_conf(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """test_gunicorn's hooks test (a rolling HUP, then drain on TERM) with uvicorn
    workers and an ASGI app wrapped by the user."""
    (tmp_path / "app.py").write_text(ASGI_APP)
    monkeypatch.setattr(test_gunicorn, "GUNICORN_CONF", HOOKS_CONF)
    monkeypatch.setattr(test_gunicorn, "WRAPPED_APP", test_gunicorn.WRAPPED_APP.replace(
        "statekit.lifecycle", "statekit.asgi"))
    test_gunicorn.test_hooks_in_a_users_own_gunicorn_conf(tmp_path)
    log = served_log(tmp_path)
    assert "Using worker: statekit.gunicorn_asgi.StatekitUvicornWorker" in log and "died with" not in log


def test_the_hooks_take_over_gunicorns_max_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hooks in a user's gunicorn.conf.py, gunicorn's ``max_requests`` (with
    its jitter) becomes the master's recycling limit, and no worker, gthread or
    uvicorn, stops itself at a request count."""
    from types import SimpleNamespace

    from statekit import gunicorn as sk

    class Master:  # stands in for gunicorn's arbiter (on_starting switches its class)
        def __init__(self) -> None:
            self.cfg = SimpleNamespace(max_requests=30, max_requests_jitter=5)
            self.app = self.statekit = None
            self.START_CTX: dict = {}
            self.WORKERS: dict = {}

    server: Any = Master()
    monkeypatch.setattr(sk.metrics, "_private_dir", lambda: None)  # no exporter in the test process
    try:
        sk.on_starting(server)
        assert (server.statekit.options.max_requests, server.statekit.options.max_requests_jitter) == (30, 5)
        worker = SimpleNamespace(max_requests=31, config=SimpleNamespace(limit_max_requests=31))
        sk.pre_fork(server, worker)
        assert 30 <= worker.statekit_max_requests <= 35
        sk.post_fork(server, worker)
        assert worker.max_requests == sys.maxsize and worker.config.limit_max_requests is None
    finally:
        sk.on_exit(server)
        sk.set_drain_state(None)


def test_detect_interface_imports_the_app_in_a_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "asgi_one.py").write_text(ASGI_APP)
    (tmp_path / "wsgi_one.py").write_text(APP)
    (tmp_path / "broken_one.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert detect_interface("asgi_one:app") == "asgi"
    assert detect_interface("wsgi_one:app") == "wsgi"
    assert detect_interface("broken_one:app") == "wsgi"  # its workers report the import error
    assert "asgi_one" not in sys.modules  # the master never imported it


def test_a_missing_asgi_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    code = ("import sys\n"
            "sys.modules['uvicorn_worker'] = None\n"
            "from statekit.cli import main\n"
            "sys.exit(main(['serve', 'app:app', '--interface', 'asgi', '--pid', '']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "statekit serve: ConfigError: statekit serve for ASGI apps needs uvicorn and uvicorn-worker: "
        "pip install 'statekit[asgi]'"
    ]


def test_serve_options_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from statekit.errors import ConfigError
    from statekit.gunicorn import serve_main

    (tmp_path / "async_jobs.py").write_text(
        "class Jobs:\n    def start(self):\n        pass\n"
        "    async def stop(self, timeout=5.0):\n        pass\n"
        "jobs = Jobs()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="asyncio broadcaster: the master runs no event loop"):
        serve_main(["a:b", "--interface", "wsgi", "--broadcaster", "async_jobs:jobs"])

    with pytest.raises(ConfigError, match="--max-requests='x' is not a count"):
        serve_main(["a:b", "--max-requests", "x"])
    with pytest.raises(ConfigError, match="--max-worker-age='-1' must not be negative"):
        serve_main(["a:b", "--max-worker-age", "-1"])


#: the session routes of phoenix's contract on Starlette, the session in Redis (asyncio
#: redis-py) under a cookie; no photos, no shared value (phoenix skips those checks)
PHOENIX_APP = textwrap.dedent(
    """
    import json, os, secrets
    from urllib.parse import parse_qs
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    clients = {}

    def db():
        pid = os.getpid()
        if pid not in clients:
            clients[pid] = aioredis.Redis.from_url(os.environ["STATEKIT_REDIS_URL"])
        return clients[pid]

    async def form(request):
        return {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}

    async def login(request):
        user = (await form(request)).get("user")
        if not user:
            return PlainTextResponse("user?", status_code=400)
        sid = secrets.token_hex(16)
        await db().hset(f"phoenix:{sid}", mapping={"user": user})
        response = JSONResponse({"user": user})
        response.set_cookie("sid", sid)
        return response

    async def session(request):
        key = f"phoenix:{request.cookies.get('sid', '-')}"
        if request.method == "POST":
            data = await form(request)
            if "key" not in data:
                return PlainTextResponse("key?", status_code=400)
            await db().hset(key, data["key"], data.get("value", ""))
            return JSONResponse({"ok": True})
        stored = {k.decode(): v.decode() for k, v in (await db().hgetall(key)).items()}
        user = stored.pop("user", None)
        return JSONResponse({"user": user, "values": stored, "pid": os.getpid()})

    app = Starlette(routes=[Route("/api/login", login, methods=["POST"]),
                            Route("/api/session", session, methods=["GET", "POST"])])
    """
)


@pytest.mark.redis
def test_phoenix_on_an_asgi_app_loses_no_session_write(tmp_path: Path, redis_url: str) -> None:
    import json
    import os

    (tmp_path / "phoenix_asgi_app.py").write_text(PHOENIX_APP)
    out = tmp_path / "report.json"
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": "memory://phoenix"}
    proc = subprocess.run(
        [sys.executable, "-m", "statekit", "phoenix", "phoenix_asgi_app:app", "--duration", "5",
         "--workers", "2", "--instances", "2", "--users", "6", "--kill-every", "1", "--reload-every", "2.5",
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    output = proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    print(f"phoenix ASGI: requests={report['requests']} failures={report['failures']} "
          f"kills={report['kills']} "
          f"in flight at kills={report['in_flight_at_kills']} reloads={report['reloads']} "
          f"session writes={report['session_writes']} lost={report['lost_session_writes']}")
    assert proc.returncode == 0, output
    assert report["interface"] == "asgi" and "(ASGI)" in output
    assert report["kills"] >= 2 and report["reloads"] >= 1 and report["session_writes"] > 10, output
    assert report["lost_session_writes"] == 0
    assert set(report["unchecked"]) == {"uploads", "shared value"}
    # what fails is what the SIGKILLs cut (a reset, or a response cut mid-body): uvicorn
    # accepts eagerly and keeps connections alive, so a killed worker takes those along
    # too (reloads fail nothing: the test above)
    assert set(report["failures"]) <= {"connection reset", "truncated response"}, report["failures"]
