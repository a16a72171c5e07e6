"""``statekit serve`` of an app whose import raises ``ConfigError`` (review 17).

The usual cause: ``StateKit(app)`` at module level refusing to start (no
``STATEKIT_REDIS_URL``, a forgotten ``export STATEKIT_SECRET_KEYS``). The import in
the short-lived child that tells WSGI from ASGI caught it and answered "wsgi", so a
FastAPI app was run on gthread workers, each of which failed to boot with two
tracebacks and the message twice, then "Worker failed to boot", exit 3. Now the
error's own message in one line, exit 2 (4 since review 19: gunicorn's "App failed
to load"), before any worker starts, for WSGI and ASGI apps alike. An app failing
with any other error still goes to its workers, whose traceback is what its author
needs (``test_asgi_serve``'s detect test).

Each command is a ``statekit`` subprocess in a session of its own, bounded in time;
on a timeout its process group (only what it started) is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_lifecycle_helpers import free_port

from statekit.errors import ConfigError
from statekit.gunicorn import detect_interface

pytestmark = pytest.mark.gunicorn

STATEKIT = str(Path(sys.executable).with_name("statekit"))

REDIS_MESSAGE = ("StateKit: cache, sessions, broadcast enabled but no Redis URL is configured: set "
                 "STATEKIT_REDIS_URL, or switch off what you do not use: STATEKIT_CACHE_ENABLED=0, "
                 "STATEKIT_SESSIONS_ENABLED=0, STATEKIT_BROADCAST_ENABLED=0")
KEYS_MESSAGE = ("StateKit: sessions need signing keys: set STATEKIT_SECRET_KEYS (or pass secret_keys=), "
                "or switch them off: STATEKIT_SESSIONS_ENABLED=0")
FLASK_MESSAGE = ("StateKit: cache, sessions, broadcast enabled but no Redis URL is configured: set "
                 "STATEKIT_REDIS_URL, or switch off what you do not use: STATEKIT_CACHE_ENABLED = False, "
                 "STATEKIT_SESSIONS_ENABLED = False, STATEKIT_BROADCAST_ENABLED = False (Flask's own cookie "
                 "sessions then stay in place)")

FASTAPI = ("from fastapi import FastAPI\nfrom starlette_statekit import StateKit\n"
           "app = FastAPI()\nStateKit(app)\n")
FLASK = "from flask import Flask\nfrom flask_statekit import StateKit\napp = Flask(__name__)\nStateKit(app)\n"
PLAIN_WSGI = ("from statekit.errors import ConfigError\n"
              "raise ConfigError('set MY_SETTING first')\n"
              "def app(environ, start_response):\n    pass\n")

#: seconds a refused start may take at most (it takes well under one)
BOUND = 60.0


def serve(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None,
          ) -> tuple[int, str, float]:
    """``statekit serve quick:app`` of *source* on a free loopback port: its exit
    status, its output (stdout and stderr) and the seconds it took."""
    (tmp_path / "quick.py").write_text(source)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("STATEKIT_REDIS_URL", "STATEKIT_SECRET_KEYS", "STATEKIT_BLOBS_URL")}
    environ.update(env or {})
    cmd = [STATEKIT, "serve", "quick:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "", *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"statekit serve still running after {BOUND} s:\n{out[-3000:]}")
    return proc.returncode, out, time.monotonic() - start


@pytest.mark.parametrize(("source", "env", "message"), [
    (FASTAPI, {}, REDIS_MESSAGE),
    (FASTAPI, {"STATEKIT_REDIS_URL": "redis://127.0.0.1:9/0"}, KEYS_MESSAGE),
    (FLASK, {}, FLASK_MESSAGE),
    (PLAIN_WSGI, {}, "set MY_SETTING first"),
], ids=["fastapi-no-redis", "fastapi-no-keys", "flask-no-redis", "wsgi-raises"])
def test_a_config_error_importing_the_app_is_one_line_before_any_worker(
        tmp_path: Path, source: str, env: dict[str, str], message: str) -> None:
    status, out, _ = serve(tmp_path, source, env=env)
    assert (status, out.strip().splitlines()) == (
        4, [f"statekit serve: quick:app: ConfigError: {message}"]), out[-3000:]  # 2 before review 19


def test_the_refusal_comes_before_gunicorn_starts(tmp_path: Path) -> None:
    """Nothing of gunicorn's start is printed: no arbiter, no worker booted (before:
    'Using worker: StatekitThreadWorker', then each worker's traceback)."""
    status, out, took = serve(tmp_path, FASTAPI)
    assert status == 4, out  # gunicorn's APP_LOAD_ERROR (2 before review 19)
    for word in ("Starting gunicorn", "Booting worker", "Traceback", "Worker failed to boot"):
        assert word not in out, out
    assert took < BOUND


def test_other_import_errors_still_go_to_the_workers(tmp_path: Path) -> None:
    """What the WSGI fallback is for: an app failing to import with its own bug is
    run, and its workers print the traceback its author needs (then gunicorn's exit 3)."""
    status, out, _ = serve(tmp_path, "raise RuntimeError('a bug in the app')\n")
    assert status == 3, out
    assert "Traceback" in out and "RuntimeError: a bug in the app" in out, out


def test_detect_interface_raises_the_apps_config_error_without_importing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg_one.py").write_text(PLAIN_WSGI)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from statekit.gunicorn import AppConfigError

    with pytest.raises(AppConfigError) as caught:
        detect_interface("cfg_one:app")
    assert isinstance(caught.value, ConfigError) and str(caught.value) == "set MY_SETTING first"
    assert "cfg_one" not in sys.modules  # imported in the child only
