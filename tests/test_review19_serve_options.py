"""Options a gunicorn/uvicorn user still missed in ``statekit serve`` (review 19).

- ``--timeout S``: gunicorn's worker timeout (a worker silent for S seconds is
  aborted and replaced) was fixed at 30 s, with no option. A request running longer
  than the timeout is not one: the worker's heartbeat is sent by the gthread worker's
  main loop (uvicorn's server loop for ASGI), not by the thread serving the request,
  as under gunicorn.
- ``--root-path PATH``: uvicorn's option for an app a proxy serves under a prefix it
  strips (``scope["root_path"]``, what FastAPI's ``url_for`` and docs use). For a
  WSGI app serve gives it as ``SCRIPT_NAME`` with ``PATH_INFO`` as received (the same
  proxy, the same meaning).
- ``--preload``: gunicorn's ``preload_app`` (the app imported once in the master, then
  forked). A Cache built at import in the master is used by every worker over
  connections of its own: the server lists one per worker held by that worker alone
  (its file descriptors); the master's connection, whose file descriptor the workers
  inherit (statekit's reset after the fork leaves it open, unused: closing it is not
  this file's subject), still has the master's last command. A reload would fork new workers
  from the code loaded at start (gunicorn's HUP does): serve refuses it, in the log.
- Exit status, one rule a process manager can use (serve's --help says it): 2 a usage
  error (was 1 for an option or variable refused by a ConfigError), 4 the app cannot
  be loaded, as gunicorn's APP_LOAD_ERROR (was 1 for a missing module or attribute, 2
  for the app's ConfigError), 3 a worker failed to boot (gunicorn's, unchanged).

Servers: ``statekit serve`` on free loopback ports, one worker, no pre-stop delay,
stopped by their pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import redis
from test_lifecycle_helpers import ServeProcess, request, wait_until
from test_review19_serve_user import _SCHEME_APPS

from statekit import Cache
from statekit.embedded import free_port
from statekit.gunicorn import serve_main

pytestmark = pytest.mark.gunicorn

_FAST = ("--workers", "1", "--pre-stop-delay", "0")


def _pid_of(port: int, path: str = "/") -> int:
    status, _, body = request(port, path)
    assert status == 200, body
    return int(body.split()[0])


def test_timeout_replaces_a_silent_worker_not_a_long_request(tmp_path: Path) -> None:
    """--timeout 2: a request of 4 s is answered by its worker (its main loop sends the
    heartbeat); a stopped worker (SIGSTOP: silent) is aborted and replaced."""
    with ServeProcess(tmp_path, "--timeout", "2", *_FAST) as srv:
        srv.wait_ready(1)
        worker = _pid_of(srv.port)
        assert _pid_of(srv.port, "/sleep/4") == worker, srv.log()
        assert "WORKER TIMEOUT" not in srv.log()
        os.kill(worker, signal.SIGSTOP)
        try:
            wait_until(lambda: f"WORKER TIMEOUT (pid:{worker})" in srv.log(), 20,
                       f"the master aborting worker {worker}, silent past --timeout 2")
            wait_until(lambda: worker not in srv.workers(), 10, f"worker {worker} gone")
        finally:
            if worker in srv.workers():
                os.kill(worker, signal.SIGCONT)
        srv.wait_ready(1)
        assert _pid_of(srv.port) != worker


#: review 19's scheme apps, answering what the app sees of the path instead
_PATH_APPS = {
    "wsgi": "import json\n" + _SCHEME_APPS["wsgi"].replace(
        'environ["wsgi.url_scheme"]', 'json.dumps([environ["SCRIPT_NAME"], environ["PATH_INFO"]])'),
    "asgi": "import json\n" + _SCHEME_APPS["asgi"].replace(
        'scope["scheme"]', 'json.dumps([scope["root_path"], scope["path"]])'),
}
assert all("json.dumps" in source for source in _PATH_APPS.values())


@pytest.mark.parametrize(("interface", "expected"), [
    ("wsgi", ["/api", "/items/1"]),  # SCRIPT_NAME, PATH_INFO as received
    ("asgi", ["/api", "/api/items/1"]),  # root_path, path (the ASGI spec: path includes root_path)
])
def test_root_path_reaches_the_app(tmp_path: Path, interface: str, expected: list[str]) -> None:
    """The proxy serves the app under /api and strips it: the request comes as /items/1;
    readiness is still answered on /readyz."""
    if interface == "asgi":
        pytest.importorskip("uvicorn_worker")
    app = textwrap.dedent(_PATH_APPS[interface])
    with ServeProcess(tmp_path, "--root-path", "/api", *_FAST, app_source=app) as srv:
        srv.wait_ready(1)
        status, _, body = request(srv.port, "/items/1")
        assert status == 200, srv.log()
        assert json.loads(body) == expected


@pytest.mark.parametrize(("option", "value", "said"), [
    *(("--timeout", value, "is not a number of seconds") for value in ("-1", "1.5", "soon", "86401")),
    *(("--root-path", value, "is not a path prefix") for value in ("api", "/api/", "/é", "/a b")),
])
def test_a_value_the_option_does_not_take_is_a_usage_error(capsys: pytest.CaptureFixture[str], option: str,
                                                          value: str, said: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve_main(["app:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "", option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r} {said}" in err, err


#: a WSGI app with a Cache built at import: /hold waits (at most 20 s) for the file "release"
_PRELOADED_APP = """
import os, time
from statekit import Cache

cache = Cache(os.environ["STATEKIT_REDIS_URL"])
cache.set("imported-in", os.getpid())  # the master's own connection, opened before the fork
cache.get("imported-in")  # its last command (MGET): a worker's is the set (EVALSHA) after its get
_RELEASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release")


def app(environ, start_response):
    imported_in = cache.get("imported-in")
    cache.set(f"served-by:{os.getpid()}", 1)
    deadline = time.monotonic() + 20
    while environ["PATH_INFO"] == "/hold" and not os.path.exists(_RELEASE) and time.monotonic() < deadline:
        time.sleep(0.02)
    body = f"{os.getpid()} {imported_in}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _inode_of_local_port(port: int) -> str:
    """The inode of the loopback TCP socket whose local port is *port* (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return fields[9]
    raise AssertionError(f"no socket with local port {port}")


def test_preload_gives_each_worker_its_own_connections_and_refuses_a_reload(tmp_path: Path,
                                                                            redis_url: str) -> None:
    with ServeProcess(tmp_path, "--preload", "--workers", "2", "--pre-stop-delay", "0",
                      env={"STATEKIT_REDIS_URL": redis_url}, app_source=_PRELOADED_APP) as srv:
        srv.wait_ready(2)
        workers = sorted(srv.workers())
        assert len(workers) == 2, srv.log()
        # 5 held requests: a worker takes 4 at most (one a thread), so both serve
        answers: list[bytes] = []
        holders = [threading.Thread(target=lambda: answers.append(request(srv.port, "/hold", timeout=30)[2]))
                   for _ in range(5)]
        for t in holders:
            t.start()
        check = Cache(redis_url)
        try:
            wait_until(lambda: all(check.get(f"served-by:{pid}") for pid in workers), 20,
                       f"both workers {workers} serving a request with the master's Cache")
            server = redis.Redis.from_url(redis_url)
            try:
                owners: dict[str, list[int]] = {}
                for pid in (srv.pid, *workers):
                    for inode in _socket_inodes(pid):
                        owners.setdefault(inode, []).append(pid)
                own: dict[int, int] = {}
                inherited = []
                for client in server.client_list():
                    local = int(client["addr"].rsplit(":", 1)[1])
                    held_by = owners.get(_inode_of_local_port(local), [])
                    if len(held_by) == 1:
                        own[held_by[0]] = own.get(held_by[0], 0) + 1
                    elif held_by:  # the master's, inherited by the workers: still its last command
                        assert srv.pid in held_by and client["cmd"] == "mget", (client, held_by)
                        inherited.append(client)
            finally:
                server.close()
            assert len(inherited) + own.get(srv.pid, 0) >= 1, "the master's import-time connection is gone"
            assert all(own.get(pid, 0) >= 1 for pid in workers), f"a worker without its own connection: {own}"
        finally:
            (tmp_path / "release").touch()
            for t in holders:
                t.join(30)
            check.close()
        assert len(answers) == 5 and {a.split()[1] for a in answers} == {str(srv.pid).encode()}, answers
        assert {int(a.split()[0]) for a in answers} == set(workers)
        srv.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused: the app was imported once in the master (--preload)" in srv.log(),
                   10, "the reload refused")
        assert sorted(srv.workers()) == workers
        assert request(srv.port, "/")[0] == 200


@pytest.mark.parametrize(("source", "args", "env", "status", "said"), [
    ("", ["app:app", "--graceful-timeout", "inf"], {}, 2, "statekit serve: ConfigError: --graceful-timeout="),
    ("", ["app:app"], {"STATEKIT_PRE_STOP_DELAY": "soon"}, 2,
     "statekit serve: ConfigError: STATEKIT_PRE_STOP_DELAY='soon'"),
    ("", ["app:app", "--timeout", "soon"], {}, 2, "argument --timeout: 'soon' is not"),
    ("", ["nosuchmod:app"], {}, 4, "statekit serve: ConfigError: cannot import 'nosuchmod'"),
    ("", ["app:nosuch"], {}, 4, "statekit serve: ConfigError: Failed to find attribute 'nosuch'"),
    ("from statekit.errors import ConfigError\nraise ConfigError('set MY_SETTING first')\n", ["app:app"], {},
     4, "statekit serve: app:app: ConfigError: set MY_SETTING first"),
    ("raise RuntimeError('a bug in the app')\n", ["app:app"], {}, 3, "RuntimeError: a bug in the app"),
    # the master imports it: its traceback, and the same status (was 1, 'Error: a bug in the app' alone)
    ("raise RuntimeError('a bug in the app')\n", ["app:app", "--preload"], {}, 3,
     "RuntimeError: a bug in the app"),
], ids=["option", "variable", "argparse", "module", "attribute", "app-config-error", "app-bug",
        "preload-app-bug"])
def test_exit_status_says_what_failed(tmp_path: Path, source: str, args: list[str], env: dict[str, str],
                                      status: int, said: str) -> None:
    (tmp_path / "app.py").write_text(source)
    command = [sys.executable, "-m", "statekit", "serve", *args, "--bind", f"127.0.0.1:{free_port()}",
               "--pid", "", "--workers", "1"]
    out = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path), **env},
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, said in out.stderr) == (status, True), out.stderr[-3000:]
