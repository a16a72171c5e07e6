"""A newcomer's mistakes, from a fresh clone: what the demo says when they happen."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_dev import _stop_demo

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis]


def test_demo_on_a_port_in_use_says_how_to_choose_another(tmp_path: Path) -> None:
    """Something else listens on the demo's port: ``make demo`` says so and how to pick
    another (``STATEKIT_BIND``), instead of five seconds of gunicorn's 'Connection in
    use' retries ending in "Can't connect to ('127.0.0.1', 8000)"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "STATEKIT_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT),
               "DATABASE_URL": f"sqlite:///{tmp_path}/demo.sqlite3"}
        for var in ("STATEKIT_REDIS_URL", "STATEKIT_BLOBS_URL"):
            env.pop(var, None)
        # make demo's command (Makefile), from a directory of its own
        demo = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "statekit", "dev", "--blobs-dir", str(tmp_path / "blobs"), "--",
             sys.executable, "-m", "examples.flask_app"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            out, _ = demo.communicate(timeout=120)
        finally:
            if demo.returncode is None:
                _stop_demo(demo)
    text = out.decode(errors="replace")
    assert demo.returncode != 0, text
    assert f"127.0.0.1:{port} is in use" in text, text
    hint = "make demo STATEKIT_BIND=127.0.0.1:8001"
    assert hint in text, text
    assert hint in (ROOT / "README.md").read_text()  # the README says the same
    assert "Booting worker" not in text, text  # stopped before gunicorn started
