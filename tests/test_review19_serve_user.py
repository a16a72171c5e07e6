"""A gunicorn user switches to ``statekit serve`` (review 19).

- Several ``--bind``: gunicorn listens on each (its ``bind`` is a list); serve kept
  the last one alone, in silence (argparse's ``store``), so ``--bind unix:/run/app.sock
  --bind 127.0.0.1:8000`` served on 8000 only.
- ``PORT`` in the environment: gunicorn's default address is then ``0.0.0.0:$PORT``,
  which platforms that give the app its port rely on (Heroku, Cloud Run, Render);
  serve listened on 127.0.0.1:8000, out of their reach. ``STATEKIT_BIND`` and
  ``--bind`` still win.
- ``--forwarded-allow-ips``: docs/migration.md sends users behind a TLS proxy to "the
  server's ``--forwarded-allow-ips``", gunicorn's and uvicorn's option; serve had none
  (a usage error), so a proxy not on loopback could be trusted only through gunicorn's
  ``FORWARDED_ALLOW_IPS`` variable, said nowhere. It reaches both worker kinds.
- ``--keep-alive`` and ``--access-logfile``, gunicorn's options (uvicorn's
  ``--timeout-keep-alive`` and access log): serve had neither, so behind a load
  balancer whose idle timeout is longer than serve's 5 s (AWS ALB: 60 s) nothing could
  keep the server from closing a connection the balancer may be reusing, and there was
  no access log at all. Both reach both worker kinds.
- A worker whose lifespan startup hangs, stopped by a reload (not ready within
  ``STATEKIT_READY_TIMEOUT``): serve counted on gunicorn's worker timeout to end it,
  which counts from a worker's first heartbeat, sent once it serves (gunicorn 27: the
  file's first time is the wall clock's, compared with the monotonic one): it stayed
  until the master stopped, one more per reload. It is SIGKILLed after the graceful
  timeout.
- ``GUNICORN_CMD_ARGS``: gunicorn's command reads it, serve (a gunicorn
  ``BaseApplication``) ignored it in silence, a ``--bind`` or ``--workers`` in it too;
  serve now says it does not read it.

Servers: ``statekit serve`` on free loopback ports (one worker, no pre-stop delay),
each stopped by its pid within seconds; the ``PORT`` one listens on 0.0.0.0 for about
a second and is only sent requests on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle_helpers import ServeProcess, children, request, wait_until

from statekit.embedded import free_port
from statekit.errors import ConfigError
from statekit.gunicorn import _binds, serve_main

pytestmark = pytest.mark.gunicorn

_FAST = ("--workers", "1", "--pre-stop-delay", "0")


def test_every_bind_given_is_listened_on(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    with ServeProcess(tmp_path, "--bind", f"127.0.0.1:{second}", *_FAST, port=first) as srv:
        # the last --bind was the one kept: wait on it, then ask the first
        wait_until(lambda: request(second, "/readyz", timeout=2)[0] == 200, 30, f"port {second}")
        try:
            status = request(first, "/readyz", timeout=5)[0]
        except ConnectionRefusedError:
            pytest.fail(f"nothing listens on the first --bind 127.0.0.1:{first}:\n{srv.log()}")
        assert status == 200
        assert request(first, "/")[0] == request(second, "/")[0] == 200
        listening = re.search(r"Listening at: (\S+)", srv.log())
        assert listening is not None
        assert listening.group(1).split(",") == [f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"]


def _listening(srv: ServeProcess) -> str:
    def said() -> bool:
        if srv.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{srv.log()}")
        return "Listening at:" in srv.log()

    wait_until(said, 30, "the 'Listening at' line")
    found = re.search(r"Listening at: (\S+)", srv.log())
    assert found is not None
    return found.group(1)


def test_port_in_the_environment_is_gunicorns_default_address(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKIT_BIND", raising=False)
    port = free_port()
    command = [sys.executable, "-m", "statekit", "serve", "app:app", "--pid", str(tmp_path / "serve.pid"),
               *_FAST]
    with ServeProcess(tmp_path, command=command, env={"PORT": str(port)}, port=port) as srv:
        assert _listening(srv) == f"http://0.0.0.0:{port}"  # was http://127.0.0.1:8000
        srv.wait_ready(1)
        assert request(port, "/")[0] == 200


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="statekit serve")


@pytest.mark.parametrize(("env", "given", "expected"), [
    ({"PORT": "5000"}, None, (["0.0.0.0:5000"], "PORT")),
    ({"PORT": "5000", "STATEKIT_BIND": "127.0.0.1:7000"}, None, (["127.0.0.1:7000"], "STATEKIT_BIND")),
    ({"PORT": "5000"}, ["127.0.0.1:7001"], (["127.0.0.1:7001"], None)),
    ({}, None, (["127.0.0.1:8000"], None)),
    ({}, ["unix:/tmp/a.sock", "[::1]:7002"], (["unix:/tmp/a.sock", "[::1]:7002"], None)),
])
def test_which_address_wins(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], given: list[str] | None,
                            expected: Any) -> None:
    for name in ("PORT", "STATEKIT_BIND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _binds(_parser(), given) == expected


@pytest.mark.parametrize("value", ["abc", "70000", ""])
def test_a_port_variable_that_is_not_a_port_is_a_usage_error_naming_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str) -> None:
    monkeypatch.delenv("STATEKIT_BIND", raising=False)
    monkeypatch.setenv("PORT", value)
    with pytest.raises(SystemExit) as exit_:
        _binds(_parser(), None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "from PORT in the environment" in err and f"{value!r} is not a port number" in err, err
    assert os.environ["PORT"] == value


_SCHEME_APPS = {
    "wsgi": """
def app(environ, start_response):
    body = environ["wsgi.url_scheme"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
""",
    "asgi": """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = scope["scheme"].encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
""",
}


def _scheme(port: int, source: str) -> str:
    """The scheme the app saw for a request forwarded as https, sent from *source*
    (a loopback address: all of 127.0.0.0/8 is this machine's on Linux)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"X-Forwarded-Proto": "https", "Connection": "close"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_forwarded_allow_ips_reaches_the_workers(tmp_path: Path, interface: str) -> None:
    """The proxy trusted is 127.0.0.2: its forwarded scheme is taken, and 127.0.0.1's,
    trusted by gunicorn's default, is not any more."""
    if interface == "asgi":
        pytest.importorskip("uvicorn_worker")
    app = textwrap.dedent(_SCHEME_APPS[interface])
    with ServeProcess(tmp_path, "--forwarded-allow-ips", "127.0.0.2", *_FAST, app_source=app) as srv:
        srv.wait_ready(1)
        assert _scheme(srv.port, "127.0.0.2") == "https", srv.log()
        assert _scheme(srv.port, "127.0.0.1") == "http", srv.log()


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_keep_alive_and_access_log_reach_the_workers(tmp_path: Path, interface: str) -> None:
    """With --keep-alive 1 an idle connection is closed within 4 s of its response (the
    default, 5 s, keeps it open then); the request is in the access log."""
    if interface == "asgi":
        pytest.importorskip("uvicorn_worker")
    app = textwrap.dedent(_SCHEME_APPS[interface])
    with ServeProcess(tmp_path, "--keep-alive", "1", "--access-logfile", "-", *_FAST, app_source=app) as srv:
        srv.wait_ready(1)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request("GET", "/kept")
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b"http"
            assert conn.sock is not None, "the server closed the connection at once: no keep-alive"
            conn.sock.settimeout(4)
            try:
                assert conn.sock.recv(1) == b""  # closed by the server
            except TimeoutError:
                pytest.fail(f"the connection is open 4 s after its response (--keep-alive 1):\n{srv.log()}")
        finally:
            conn.close()
        wait_until(lambda: '"GET /kept HTTP/1.1" 200' in srv.log(), 10, "the access log line")


#: an ASGI app whose lifespan startup never ends once the file "hang" exists beside it
_HANGING_STARTUP_APP = """
import asyncio, os

_HANG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hang")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        if os.path.exists(_HANG):
            await asyncio.Event().wait()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_a_worker_whose_lifespan_startup_hangs_does_not_stay(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvicorn_worker")
    monkeypatch.setenv("STATEKIT_READY_TIMEOUT", "1")
    with ServeProcess(tmp_path, "--graceful-timeout", "1", *_FAST, app_source=_HANGING_STARTUP_APP) as srv:
        srv.wait_ready(1)
        (tmp_path / "hang").touch()
        srv.signal(signal.SIGHUP)  # the new worker's startup hangs: the reload is aborted
        stopped = re.compile(r"new worker (\d+) not ready within 1s \(lifespan startup\): stopped")
        wait_until(lambda: stopped.search(srv.log()) is not None, 20, "the reload giving up on the worker")
        found = stopped.search(srv.log())
        assert found is not None
        hung = int(found.group(1))
        wait_until(lambda: hung not in children(srv.pid), 15, f"worker {hung} gone (graceful timeout 1 s)")
        assert request(srv.port, "/")[0] == 200  # the old worker serves on
        assert "still in its lifespan startup 1s after SIGTERM: SIGKILL" in srv.log()


@pytest.mark.parametrize(("args", "env", "said"), [
    (["--forwarded-allow-ips", "10.0.0.300"], {}, "argument --forwarded-allow-ips: '10.0.0.300'"),
    ([], {"FORWARDED_ALLOW_IPS": "proxy.local"},
     "from FORWARDED_ALLOW_IPS in the environment: 'proxy.local'"),
])
def test_a_forwarded_allow_ips_that_is_not_addresses_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str],
        env: dict[str, str], said: str) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        serve_main(["app:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err


def test_gunicorn_cmd_args_is_said_to_be_ignored(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Said while the options are read (a --graceful-timeout refused next stops serve
    there, before anything is imported or started)."""
    for value, said in (("--bind 0.0.0.0:8080 --workers 4",
                         "statekit serve: GUNICORN_CMD_ARGS is not read ('--bind 0.0.0.0:8080 --workers 4')"),
                        (" ", "")):
        monkeypatch.setenv("GUNICORN_CMD_ARGS", value)
        with pytest.raises(ConfigError, match="--graceful-timeout"):
            serve_main(["app:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "",
                        "--graceful-timeout", "inf"])
        err = capsys.readouterr().err
        assert said in err if said else err == "", err


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "86401"])
def test_a_keep_alive_that_is_not_whole_seconds_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                                 value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve_main(["app:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "", "--keep-alive", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --keep-alive: {value!r} is not a number of seconds" in err, err
