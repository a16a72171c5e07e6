"""``statekit serve --interface wsgi|asgi`` refuses an app that cannot start the way
plain ``statekit serve MODULE:APP`` does (review 18).

The check (the app imported once in a short-lived child, :func:`statekit.gunicorn.detect_interface`)
ran only to choose the interface: with ``--interface`` given it was skipped, and an
app whose import raises ``ConfigError`` (``StateKit(app)`` without
``STATEKIT_REDIS_URL`` or ``STATEKIT_SECRET_KEYS``) started gunicorn, whose workers
each printed a traceback and the message twice, then exit 3; a missing module was
gunicorn's "App failed to load", exit 4. Now every way of naming the app (with or
without ``--interface``, an attribute or a factory) gives the same one line before
anything starts: exit 2 for the app's ConfigError, exit 1 for a missing module or
attribute (``statekit serve: ConfigError: cannot import ...``), as without
``--interface``. An app failing with any other error still goes to its workers.

Each command is a ``statekit`` subprocess in a session of its own, bounded in time;
on a timeout its process group (only what it started) is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_lifecycle_helpers import free_port
from test_review17_serve_config_error import (
    FASTAPI,
    FLASK,
    FLASK_MESSAGE,
    KEYS_MESSAGE,
    PLAIN_WSGI,
    REDIS_MESSAGE,
)

pytestmark = pytest.mark.gunicorn

STATEKIT = str(Path(sys.executable).with_name("statekit"))

#: seconds a refused start may take at most (it takes well under one)
BOUND = 60.0

FACTORY = ("from statekit.errors import ConfigError\n"
           "def create():\n    raise ConfigError('set MY_FACTORY_SETTING first')\n")

GUNICORN = ("Starting gunicorn", "Booting worker", "Traceback", "Worker failed to boot", "App failed to load")


def serve(tmp_path: Path, source: str, app: str, *args: str, env: dict[str, str] | None = None,
          ) -> tuple[int, str]:
    """``statekit serve APP`` of *source* (as ``quick.py``) on a free loopback port, one
    worker: its exit status and its output (stdout and stderr)."""
    (tmp_path / "quick.py").write_text(source)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("STATEKIT_REDIS_URL", "STATEKIT_SECRET_KEYS", "STATEKIT_BLOBS_URL")}
    environ.update(env or {})
    cmd = [STATEKIT, "serve", app, "--bind", f"127.0.0.1:{free_port()}", "--pid", "", "--workers", "1", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"statekit serve still running after {BOUND} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.mark.parametrize("interface", ["wsgi", "asgi", "auto"])
@pytest.mark.parametrize(("source", "app", "env", "message"), [
    (FASTAPI, "quick:app", {}, REDIS_MESSAGE),
    (FASTAPI, "quick:app", {"STATEKIT_REDIS_URL": "redis://127.0.0.1:9/0"}, KEYS_MESSAGE),
    (FLASK, "quick:app", {}, FLASK_MESSAGE),
    (PLAIN_WSGI, "quick:app", {}, "set MY_SETTING first"),
    (FACTORY, "quick:create()", {}, "set MY_FACTORY_SETTING first"),
], ids=["fastapi-no-redis", "fastapi-no-keys", "flask-no-redis", "module-raises", "factory-raises"])
def test_a_config_error_of_the_app_is_one_line_exit_2_whatever_the_interface(
        tmp_path: Path, interface: str, source: str, app: str, env: dict[str, str], message: str) -> None:
    status, out = serve(tmp_path, source, app, "--interface", interface, env=env)
    assert (status, out.strip().splitlines()) == (
        2, [f"statekit serve: {app}: ConfigError: {message}"]), out[-3000:]


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize(("app", "message"), [
    ("nosuchmod:app", "cannot import 'nosuchmod': No module named 'nosuchmod'"),
    ("quick:nosuch", "Failed to find attribute 'nosuch' in 'quick'."),
], ids=["module", "attribute"])
def test_a_missing_module_or_attribute_is_the_same_line_as_without_interface(
        tmp_path: Path, interface: str, app: str, message: str) -> None:
    status, out = serve(tmp_path, "def app(environ, start_response):\n    return []\n", app,
                        "--interface", interface)
    plain_status, plain_out = serve(tmp_path, "def app(environ, start_response):\n    return []\n", app)
    expected = [f"statekit serve: ConfigError: {message}"]
    assert (status, out.strip().splitlines()) == (1, expected), out[-3000:]
    assert (plain_status, plain_out.strip().splitlines()) == (1, expected), plain_out[-3000:]
    for word in GUNICORN:
        assert word not in out, out


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_other_import_errors_still_go_to_the_workers(tmp_path: Path, interface: str) -> None:
    """A bug in the app's module: its workers print the traceback its author needs
    (then gunicorn's exit 3), with --interface as without."""
    status, out = serve(tmp_path, "raise RuntimeError('a bug in the app')\n", "quick:app",
                        "--interface", interface)
    assert status == 3, out
    assert "Traceback" in out and "RuntimeError: a bug in the app" in out, out
