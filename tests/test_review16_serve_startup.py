"""``statekit serve``'s start-up errors (review 16), WSGI and ASGI apps.

a. ``WEB_CONCURRENCY=abc statekit serve app:app`` died of a ValueError traceback:
   gunicorn's config module reads the variable as an int when it is imported (the
   default of its ``workers`` setting), before serve's options were parsed; ``statekit
   reload`` too, which imports the same module. Now a usage error naming the variable
   (exit 2); given ``--workers N``, the variable is not used, as uvicorn's own
   ``--workers`` does (so uvicorn's config, which reads it too, must not either).

The commands run as a user runs them: ``statekit ...`` subprocesses, every one bounded
in time and stopped by pid.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_asgi_serve import ASGI_APP
from test_lifecycle_helpers import APP, ServeProcess, request
from test_review15_newcomer import _one_line_usage_error, _run

pytestmark = pytest.mark.gunicorn

SOURCES = {"wsgi": APP, "asgi": ASGI_APP}


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
