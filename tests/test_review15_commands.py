"""The commands' loose ends the fifteenth session's review found, run as a user runs
them (the console script, in a subprocess): ``statekit phoenix`` on an app module that
does not exist, ``statekit audit`` on Django URL patterns and on asyncio background
work started by startup hooks, ``statekit dev`` under a job-control shell (Ctrl-Z,
``fg``, ``/dev/tty``) in a pseudo-terminal. Each positive case failed before its fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

STATEKIT = str(Path(sys.executable).with_name("statekit"))


def _statekit(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


# -- phoenix: the app's module is checked before anything starts ---------------------------


@pytest.mark.parametrize(("app", "files", "message"), [
    ("nosuchmod:app", {}, "cannot import 'nosuchmod': No module named 'nosuchmod'"),
    ("pkg.nosuch:app", {"pkg/__init__.py": ""}, "cannot import 'pkg.nosuch': No module named 'pkg.nosuch'"),
    ("app.py:app", {"app.py": "app = None\n"},
     "cannot import 'app.py': No module named 'app.py'; 'app' is not a package"),
    ("nosuchmod", {}, "cannot import 'nosuchmod': No module named 'nosuchmod'"),
], ids=["module", "submodule", "file-name", "no-colon"])
def test_phoenix_of_a_missing_app_module_is_one_line_before_any_server(
    tmp_path: Path, app: str, files: dict[str, str], message: str
) -> None:
    """``statekit phoenix nosuchmod:app`` started Redis and the S3 endpoint, then two
    instances whose log it printed (20 lines) before it said the module is missing."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    proc = _statekit(tmp_path, "phoenix", app, "--duration", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert " ".join(out.split()) == f"statekit phoenix: could not run: {message}", out  # (rich wraps it)


def test_phoenix_finds_the_app_package_in_the_current_directory_without_importing_it(tmp_path: Path) -> None:
    """The check finds the module where the instances will (the current directory) and
    runs none of its code: a package whose ``__init__`` needs the Redis URL phoenix
    has not started yet is not refused. It fails later, in the instances, as before:
    the error is the app's, not 'no module'."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("import os\nos.environ['STATEKIT_MUST_NOT_RUN']\n")
    (tmp_path / "myapp" / "wsgi.py").write_text("raise SystemExit('the app module itself was imported')\n")
    proc = _statekit(tmp_path, "phoenix", "myapp.wsgi:app", "--duration", "1", "--interface", "wsgi",
                     "--start-timeout", "30", timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "No module named" not in out, out
    assert "private Redis and S3 endpoint started" in out, out  # it went on to run the instances
