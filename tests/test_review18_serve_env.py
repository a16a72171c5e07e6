"""``statekit serve`` checks what its workers would refuse, before gunicorn starts.

- ``STATEKIT_PRE_STOP_DELAY=inf``: serve took ``--pre-stop-delay``'s default (2 s) and
  ignored the variable, while each worker's lifecycle read it and refused it: every
  worker failed to boot with a traceback, exit 3. The variable is now serve's default
  for ``--pre-stop-delay`` (as ``STATEKIT_BIND`` is ``--bind``'s), checked once: one
  line, exit 1, nothing started.
- ``--max-worker-age nan`` / ``inf`` (and the environment's ``STATEKIT_MAX_WORKER_AGE``
  under gunicorn hooks) were taken in silence: a limit never reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from statekit.embedded import free_port
from statekit.errors import ConfigError
from statekit.gunicorn import _recycling, serve_main

TINY_APP = textwrap.dedent(
    """
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    """
)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "soon"])
def test_a_pre_stop_delay_from_the_environment_is_checked_before_anything_starts(tmp_path: Path,
                                                                                value: str) -> None:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    env = {**os.environ, "STATEKIT_PRE_STOP_DELAY": value}
    cmd = [sys.executable, "-m", "statekit", "serve", "tinyapp:app", "--bind", f"127.0.0.1:{free_port()}",
           "--pid", ""]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    # a usage error (3 before, after every worker's traceback; then 1 until review 19)
    assert result.returncode == 2, result.stderr
    assert f"STATEKIT_PRE_STOP_DELAY={value!r}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Starting gunicorn" not in result.stderr, result.stderr


def test_the_environment_s_pre_stop_delay_is_serve_s_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read, not only checked: an explicit option wins over it."""
    seen: dict[str, float] = {}

    class Stop(Exception):
        pass

    def capture(self: object) -> None:
        seen["delay"] = self.statekit_options.pre_stop_delay  # type: ignore[attr-defined]
        raise Stop

    monkeypatch.setattr("statekit.gunicorn.StatekitApplication.run", capture)
    monkeypatch.setattr("statekit.gunicorn.detect_interface", lambda app: "wsgi")
    monkeypatch.setenv("STATEKIT_PRE_STOP_DELAY", "7.5")
    with pytest.raises(Stop):
        serve_main(["tinyapp:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", ""])
    assert seen["delay"] == 7.5
    with pytest.raises(Stop):
        serve_main(["tinyapp:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", "",
                    "--pre-stop-delay", "1"])
    assert seen["delay"] == 1.0


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_worker_age_is_a_finite_number(value: str) -> None:
    with pytest.raises(ConfigError, match=f"--max-worker-age='{value}' must be a finite number"):
        serve_main(["a:b", "--max-worker-age", value])
    with pytest.raises(ConfigError, match=f"STATEKIT_MAX_WORKER_AGE='{value}' must be a finite number"):
        _recycling(None, None, value, None, env=True)
    assert _recycling(None, None, "604800", None)["max_worker_age"] == 604800.0  # a week: no upper bound


def test_the_recycling_variables_are_serve_s_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STATEKIT_MAX_REQUESTS`` & co. (the gunicorn hooks' settings, which the settings
    reference gives as ``statekit serve --max-requests``'s) were ignored by serve in
    silence, ``lots`` included; an option given wins over its variable."""
    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def capture(self: object) -> None:
        seen.update(vars(self.statekit_options))  # type: ignore[attr-defined]
        raise Stop

    monkeypatch.setattr("statekit.gunicorn.StatekitApplication.run", capture)
    monkeypatch.setattr("statekit.gunicorn.detect_interface", lambda app: "wsgi")
    for name, value in (("MAX_REQUESTS", "500"), ("MAX_REQUESTS_JITTER", "50"), ("MAX_WORKER_AGE", "3600"),
                        ("MAX_WORKER_RSS", "512")):
        monkeypatch.setenv(f"STATEKIT_{name}", value)
    argv = ["tinyapp:app", "--bind", f"127.0.0.1:{free_port()}", "--pid", ""]
    with pytest.raises(Stop):
        serve_main(argv)
    keys = ("max_requests", "max_requests_jitter", "max_worker_age", "max_worker_rss")
    assert tuple(seen[k] for k in keys) == (500, 50, 3600.0, 512 * 2**20)
    with pytest.raises(Stop):
        serve_main([*argv, "--max-requests", "7", "--max-worker-rss", "0"])
    assert (seen["max_requests"], seen["max_requests_jitter"], seen["max_worker_rss"]) == (7, 50, 0)
    monkeypatch.setenv("STATEKIT_MAX_REQUESTS", "lots")
    with pytest.raises(ConfigError, match="STATEKIT_MAX_REQUESTS='lots' is not a count"):
        serve_main(argv)
    with pytest.raises(Stop):  # the option given: the variable is not read
        serve_main([*argv, "--max-requests", "7"])
