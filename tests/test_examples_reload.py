"""The demo as a newcomer runs it: ``make demo`` in one shell, then ``statekit reload``
(no arguments) in another, from the same directory. The reload finds the demo's master
by its pid file under ``.statekit/``, which it only trusts when the pid is a statekit
process; the demo once ran ``statekit serve`` inside ``python -m examples.flask_app``,
so the reload said no statekit serve was running."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis, pytest.mark.gunicorn]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(check: Callable[[], bool], what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if check():
                return
        time.sleep(0.2)
    pytest.fail(f"{what}:\n{log.read_text()}")


def test_statekit_reload_from_the_demo_directory_finds_the_demo(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "STATEKIT_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT),
           "DATABASE_URL": f"sqlite:///{tmp_path}/demo.sqlite3", "USERS_COUNT_INTERVAL": "60"}
    for var in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"):
        env.pop(var, None)
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        # make demo's command (one worker, no drain delay: a faster teardown)
        demo = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "statekit", "dev", "--blobs-dir", str(tmp_path / "blobs"), "--",
             sys.executable, "-m", "examples.flask_app", "--workers", "1", "--pre-stop-delay", "0"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_for(lambda: demo.poll() is None and requests.get(base + "/healthz", timeout=2).ok,
                      "the demo did not start", log_path)
            reload = subprocess.run([sys.executable, "-m", "statekit", "reload"], cwd=tmp_path, env=env,  # noqa: S603
                                    capture_output=True, text=True, timeout=60, check=False)
            assert reload.returncode == 0, reload.stdout + reload.stderr
            assert "sent SIGHUP" in reload.stdout
            _wait_for(lambda: "rolling reload done" in log_path.read_text(), "the reload did not finish",
                      log_path)
            assert requests.get(base + "/healthz", timeout=10).ok
        finally:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
