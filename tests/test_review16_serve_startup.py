"""``statekit serve``'s start-up errors (review 16), WSGI and ASGI apps.

a. ``WEB_CONCURRENCY=abc statekit serve app:app`` died of a ValueError traceback:
   gunicorn's config module reads the variable as an int when it is imported (the
   default of its ``workers`` setting), before serve's options were parsed; ``statekit
   reload`` too, which imports the same module. Now a usage error naming the variable
   (exit 2); given ``--workers N``, the variable is not used, as uvicorn's own
   ``--workers`` does (so uvicorn's config, which reads it too, must not either).
b. ``statekit serve --bind HOST:PORT`` on a port another process listens on went through
   gunicorn's five 1 s retries, then its log lines and exit 1. Now one line at once,
   exit 2, as ``statekit dev`` says it of its ports. A master that gets its listening
   socket handed down (systemd's socket activation, gunicorn's USR2 re-exec) binds
   nothing: the port it is handed is in use by that very socket, and it must serve.

The commands run as a user runs them: ``statekit ...`` subprocesses, every one bounded
in time and stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_asgi_serve import ASGI_APP
from test_lifecycle_helpers import APP, ServeProcess, children, request, wait_until
from test_review15_newcomer import STATEKIT, _one_line_usage_error, _run

pytestmark = pytest.mark.gunicorn

SOURCES = {"wsgi": APP, "asgi": ASGI_APP}
#: gunicorn's bind retries: five tries one second apart
GUNICORN_RETRIES = 5.0


@pytest.fixture(params=sorted(SOURCES))
def app_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A directory with ``app.py``: a WSGI app, then an ASGI one (Starlette)."""
    (tmp_path / "app.py").write_text(SOURCES[request.param])
    return tmp_path


# -- a. WEB_CONCURRENCY ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "", "2.5", "0"])
def test_web_concurrency_not_a_count_is_a_usage_error_naming_it(app_dir: Path, value: str) -> None:
    out = _run(["serve", "app:app"], app_dir, env={"WEB_CONCURRENCY": value}, timeout=60)
    line = _one_line_usage_error(out, "statekit serve", "argument --workers", "WEB_CONCURRENCY",
                                 repr(value), "not a number of workers (1 or more)")
    assert "ValueError" not in out.stderr, out.stderr
    assert "Starting gunicorn" not in out.stderr, line


def test_reload_does_not_read_web_concurrency(tmp_path: Path) -> None:
    out = _run(["reload", "--pid", str(tmp_path / "none.pid")], tmp_path, env={"WEB_CONCURRENCY": "abc"},
               timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr)
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("statekit reload: ConfigError: cannot read a pid from"), line


def test_workers_given_wins_over_a_web_concurrency_that_is_not_a_count(app_dir: Path) -> None:
    """Neither gunicorn's config nor uvicorn's (which reads WEB_CONCURRENCY in each ASGI
    worker) sees it: the worker boots and serves."""
    with ServeProcess(app_dir, "--workers", "1", "--pre-stop-delay", "0",
                      env={"WEB_CONCURRENCY": "abc"}) as srv:
        srv.wait_ready(1, timeout=60)
        status, _, body = request(srv.port, "/")
        assert status == 200 and int(body.split()[0]) in srv.workers(), body
        srv.signal(signal.SIGTERM)
        assert srv.wait(40) == 0, srv.log()[-3000:]
    log = srv.log()
    assert "ValueError" not in log and "Worker failed to boot" not in log, log[-3000:]


# -- b. a busy port --------------------------------------------------------------------


def _listener(family: socket.AddressFamily, host: str) -> socket.socket:
    try:
        return socket.create_server((host, 0), family=family)
    except OSError as e:  # no IPv6 loopback here
        pytest.skip(f"cannot listen on {host}: {e}")


@pytest.fixture(params=["127.0.0.1:{port}", "tcp://127.0.0.1:{port}", "[::1]:{port}"])
def busy_bind(request: pytest.FixtureRequest) -> Iterator[str]:
    """A bind address (in each spelling gunicorn reads) whose port this test listens on."""
    v6 = request.param.startswith("[")
    with _listener(socket.AF_INET6 if v6 else socket.AF_INET, "::1" if v6 else "127.0.0.1") as held:
        yield request.param.format(port=held.getsockname()[1])


def _says_in_use_at_once(args: list[str], cwd: Path, bind: str, env: dict[str, str] | None = None) -> str:
    began = time.monotonic()
    out = _run(args, cwd, env=env, timeout=60)
    took = time.monotonic() - began
    line = _one_line_usage_error(out, "statekit serve", f"{bind} is in use", "--bind")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Starting gunicorn" not in out.stderr and "Connection in use" not in out.stderr, out.stderr
    assert took < GUNICORN_RETRIES - 1, f"took {took:.1f}s: gunicorn's retries?"
    return line


def test_serve_on_a_busy_port_says_so_at_once(app_dir: Path, busy_bind: str) -> None:
    _says_in_use_at_once(["serve", "app:app", "--bind", busy_bind, "--pid", ""], app_dir, busy_bind)
    assert not (app_dir / ".statekit").exists()  # nothing was started, nor its pid file's directory


def test_serve_on_a_busy_port_from_statekit_bind(app_dir: Path) -> None:
    with _listener(socket.AF_INET, "127.0.0.1") as held:
        bind = f"127.0.0.1:{held.getsockname()[1]}"
        line = _says_in_use_at_once(["serve", "app:app", "--pid", ""], app_dir, bind,
                                    env={"STATEKIT_BIND": bind})
    assert "STATEKIT_BIND" in line, line


def test_a_socket_handed_down_by_systemd_is_served(app_dir: Path) -> None:
    """Socket activation: the listening socket is fd 3 with LISTEN_FDS=1 and LISTEN_PID
    the server's pid (a launcher sets it and execs the command, keeping its pid);
    --bind names the socket's own address, in use by it."""
    with _listener(socket.AF_INET, "127.0.0.1") as held:
        port = held.getsockname()[1]
        serve = [STATEKIT, "serve", "app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                 "--pre-stop-delay", "0", "--pid", ""]
        launcher = (f"import os; os.dup2({held.fileno()}, 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
                    f"os.environ['LISTEN_FDS'] = '1'; os.execv({STATEKIT!r}, {serve!r})")
        log = app_dir / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=app_dir, stdout=out,
                                    stderr=subprocess.STDOUT, pass_fds=(held.fileno(),),
                                    env={**os.environ, "PYTHONPATH": str(app_dir)})
        try:
            def served() -> bool:
                assert proc.poll() is None, log.read_text(errors="replace")
                return request(port, "/", timeout=2)[0] == 200

            wait_until(served, 60, "the server on the socket it was handed")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(40) == 0, log.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                workers = children(proc.pid)
                proc.kill()
                proc.wait(10)
                for pid in workers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "is in use" not in text and "Connection in use" not in text, text[-3000:]
