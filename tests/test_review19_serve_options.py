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

Servers: ``statekit serve`` on free loopback ports, one worker, no pre-stop delay,
stopped by their pid.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
from test_lifecycle_helpers import ServeProcess, request, wait_until
from test_review19_serve_user import _SCHEME_APPS

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
