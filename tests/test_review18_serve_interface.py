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
``--interface``; since review 19 both exit 4, gunicorn's "App failed to load" (the
rule in ``statekit serve --help``). An app failing with any other error still goes to
its workers.

Each command is a ``statekit serve`` subprocess (``test_newcomer14_cli._serve``: one
worker, port 0, bounded in time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_newcomer14_cli import _serve
from test_review17_serve_config_error import (
    FASTAPI,
    FLASK,
    FLASK_MESSAGE,
    KEYS_MESSAGE,
    PLAIN_WSGI,
    REDIS_MESSAGE,
)

pytestmark = pytest.mark.gunicorn

FACTORY = ("from statekit.errors import ConfigError\n"
           "def create():\n    raise ConfigError('set MY_FACTORY_SETTING first')\n")
WSGI = "def app(environ, start_response):\n    return []\n"

GUNICORN = ("Starting gunicorn", "Booting worker", "Traceback", "Worker failed to boot", "App failed to load")


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, app: str, *args: str,
          env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``statekit serve APP`` of *source* (as ``quick.py``), without statekit's URLs and
    keys in its environment but *env*: its exit status, stdout and stderr."""
    (tmp_path / "quick.py").write_text(source)
    for name in ("STATEKIT_REDIS_URL", "STATEKIT_SECRET_KEYS", "STATEKIT_BLOBS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    proc = _serve(tmp_path, app, *args)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("interface", ["wsgi", "asgi", "auto"])
@pytest.mark.parametrize(("source", "app", "env", "message"), [
    (FASTAPI, "quick:app", {}, REDIS_MESSAGE),
    (FASTAPI, "quick:app", {"STATEKIT_REDIS_URL": "redis://127.0.0.1:9/0"}, KEYS_MESSAGE),
    (FLASK, "quick:app", {}, FLASK_MESSAGE),
    (PLAIN_WSGI, "quick:app", {}, "set MY_SETTING first"),
    (FACTORY, "quick:create()", {}, "set MY_FACTORY_SETTING first"),
], ids=["fastapi-no-redis", "fastapi-no-keys", "flask-no-redis", "module-raises", "factory-raises"])
def test_a_config_error_of_the_app_is_one_line_exit_4_whatever_the_interface(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interface: str, source: str, app: str,
        env: dict[str, str], message: str) -> None:
    status, out, err = serve(tmp_path, monkeypatch, source, app, "--interface", interface, env=env)
    assert (status, out, err.strip().splitlines()) == (
        4, "", [f"statekit serve: {app}: ConfigError: {message}"]), err[-3000:]  # 2 before review 19


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize(("app", "message"), [
    ("nosuchmod:app", "cannot import 'nosuchmod': No module named 'nosuchmod'"),
    ("quick:nosuch", "Failed to find attribute 'nosuch' in 'quick'."),
], ids=["module", "attribute"])
def test_a_missing_module_or_attribute_is_the_same_line_as_without_interface(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interface: str, app: str, message: str) -> None:
    status, out, err = serve(tmp_path, monkeypatch, WSGI, app, "--interface", interface)
    plain = serve(tmp_path, monkeypatch, WSGI, app)
    expected = (4, "", f"statekit serve: ConfigError: {message}\n")  # 1 before review 19
    assert (status, out, err) == expected, err[-3000:]
    assert plain == expected, plain
    for word in GUNICORN:
        assert word not in err, err


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_other_import_errors_still_go_to_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     interface: str) -> None:
    """A bug in the app's module: its workers print the traceback its author needs
    (then gunicorn's exit 3), with --interface as without."""
    status, _, err = serve(tmp_path, monkeypatch, "raise RuntimeError('a bug in the app')\n", "quick:app",
                           "--interface", interface)
    assert status == 3, err
    assert "Traceback" in err and "RuntimeError: a bug in the app" in err, err
