"""The demo as a newcomer runs it: ``make demo`` in one shell, then ``statekit reload``
(no arguments) in another, from the same directory. The reload finds the demo's master
by its pid file under ``.statekit/``, which it only trusts when the pid is a statekit
process; the demo once ran ``statekit serve`` inside ``python -m examples.flask_app``,
so the reload said no statekit serve was running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from test_cli_dev import _stop_demo
from test_examples_flask import _free_port

from statekit.pytest_plugin import wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis, pytest.mark.gunicorn]


def _healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    with contextlib.suppress(requests.RequestException):
        return requests.get(url, timeout=2).ok
    return False


def test_statekit_reload_from_the_demo_directory_finds_the_demo(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "STATEKIT_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT),
           "DATABASE_URL": f"sqlite:///{tmp_path}/demo.sqlite3", "USERS_COUNT_INTERVAL": "60"}
    for var in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"):
        env.pop(var, None)
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        # make demo's command, from a directory of its own (one worker, no drain delay)
        demo = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "statekit", "dev", "--blobs-dir", str(tmp_path / "blobs"), "--",
             sys.executable, "-m", "examples.flask_app", "--workers", "1", "--pre-stop-delay", "0"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        health = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: _healthy(demo, health, log), timeout=90, what="the demo to start", interval=0.2)
        reload = subprocess.run([sys.executable, "-m", "statekit", "reload"], cwd=tmp_path, env=env,  # noqa: S603
                                capture_output=True, text=True, timeout=60, check=False)
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "sent SIGHUP" in reload.stdout
        wait_for(lambda: "rolling reload done" in log.read_text(), timeout=90, what="the reload to finish",
                 interval=0.2)
        assert _healthy(demo, health, log)
    finally:
        _stop_demo(demo)
