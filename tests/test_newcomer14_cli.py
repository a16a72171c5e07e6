"""The statekit command as a newcomer runs it (the console script, in a subprocess):
phoenix's and serve's errors for an app or scenario that is not there, audit on a
file it cannot check and on codes that do not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STATEKIT = str(Path(sys.executable).with_name("statekit"))
KNOWN_CODES = "SK101"  # named in the usage error (every code is; one is enough to check)


def _statekit(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STATEKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _phoenix(cwd: Path, *args: str) -> tuple[int, str]:
    """phoenix's exit status and its output, lines joined (rich wraps them at 80 columns)."""
    proc = _statekit(cwd, "phoenix", "app:app", "--duration", "1", *args)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


# -- phoenix -------------------------------------------------------------------------


def test_phoenix_could_not_run_is_styled_not_literal_markup(tmp_path: Path) -> None:
    status, out = _phoenix(tmp_path, "--scenario", "statekit.phoenix:Nope")
    assert status == 2, out
    assert "statekit phoenix: could not run: --scenario 'statekit.phoenix:Nope' is not a" in out, out
    assert "[bold red]" not in out and "[/bold red]" not in out, out


def test_phoenix_error_text_that_looks_like_markup_is_shown_as_written(tmp_path: Path) -> None:
    status, out = _phoenix(tmp_path, "--env", "[bold]NOVALUE")
    assert status == 2, out
    assert "could not run: --env '[bold]NOVALUE' must be KEY=VALUE" in out, out


def test_phoenix_scenario_module_missing_is_one_line_status_2(tmp_path: Path) -> None:
    status, out = _phoenix(tmp_path, "--scenario", "no.such:Scenario")
    assert status == 2, out
    assert "Traceback" not in out, out
    assert "could not run: --scenario 'no.such:Scenario': cannot import 'no.such'" in out, out


def test_phoenix_scenario_in_the_current_directory_is_found(tmp_path: Path) -> None:
    """The instances import the app from the current directory; the scenario comes from
    there too (the console script's sys.path does not have it)."""
    (tmp_path / "myscenario.py").write_text("class NotAScenario:\n    pass\n")
    status, out = _phoenix(tmp_path, "--scenario", "myscenario:NotAScenario")
    assert status == 2, out
    assert "is not a statekit.phoenix.Scenario subclass" in out, out


def test_phoenix_scenario_import_error_inside_it_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "myscenario.py").write_text("import nosuch_dependency_of_the_scenario\n")
    status, out = _phoenix(tmp_path, "--scenario", "myscenario:Scenario")
    assert status != 0, out
    assert "Traceback" in out and 'myscenario.py", line 1' in out, out
    assert "No module named 'nosuch_dependency_of_the_scenario'" in out, out


# -- audit ---------------------------------------------------------------------------


def test_audit_of_a_file_that_does_not_parse_fails(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def (:\n")
    proc = _statekit(tmp_path, "audit", "bad.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "bad.py:1: cannot parse" in proc.stderr, proc.stderr
    assert "0 findings, 1 file not checked" in proc.stderr, proc.stderr


def test_audit_of_a_file_that_cannot_be_read_fails_in_json_too(tmp_path: Path) -> None:
    (tmp_path / "latin1.py").write_bytes(b"name = '\xe9'\n")  # not UTF-8
    (tmp_path / "ok.py").write_text("x = 1\n")
    proc = _statekit(tmp_path, "audit", "--format", "json", ".")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []
    assert "latin1.py: cannot read" in proc.stderr, proc.stderr


def test_audit_of_checked_files_still_passes(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x = 1\n")
    proc = _statekit(tmp_path, "audit", ".")
    assert (proc.returncode, proc.stderr.strip()) == (0, "0 findings"), proc.stdout + proc.stderr


def test_audit_select_of_an_unknown_code_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text('SESSION_TYPE = "filesystem"\n')
    for option in ("--select", "--ignore"):
        proc = _statekit(tmp_path, "audit", option, "SK2,SK9", "app.py")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"{option}: unknown code 'SK9'" in proc.stderr and KNOWN_CODES in proc.stderr, proc.stderr
        assert proc.stdout == "", proc.stdout
    proc = _statekit(tmp_path, "audit", "--select", "SK2", "app.py")  # a prefix of known codes
    assert proc.returncode == 1 and "app.py:1: SK201" in proc.stdout, proc.stdout + proc.stderr


# -- serve ---------------------------------------------------------------------------


def _serve(cwd: Path, app: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _statekit(cwd, "serve", app, "--bind", "127.0.0.1:0", "--pid", "", "--workers", "1", *args)


def test_serve_of_a_missing_module_is_one_line(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "nosuchmod:app")
    assert proc.returncode != 0, proc.stderr
    assert proc.stderr.strip() == ("statekit serve: ConfigError: cannot import 'nosuchmod': "
                                   "No module named 'nosuchmod'"), proc.stderr
    assert proc.stdout == "", proc.stdout


def test_serve_of_a_missing_submodule_or_attribute_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "wsgi_one.py").write_text("def application(environ, start_response):\n    return []\n")
    proc = _serve(tmp_path, "pkg.nosuch:app")
    assert proc.returncode != 0, proc.stderr
    assert proc.stderr.strip() == ("statekit serve: ConfigError: cannot import 'pkg.nosuch': "
                                   "No module named 'pkg.nosuch'"), proc.stderr
    proc = _serve(tmp_path, "wsgi_one:app")
    assert proc.returncode != 0, proc.stderr
    expected = "statekit serve: ConfigError: Failed to find attribute 'app' in 'wsgi_one'."
    assert proc.stderr.strip() == expected, proc.stderr


def test_serve_with_an_explicit_interface_names_the_missing_module_untraced(tmp_path: Path) -> None:
    """No child imports the app first: the worker says it, in one line, and the master stops."""
    proc = _serve(tmp_path, "nosuchmod:app", "--interface", "wsgi")
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "cannot import 'nosuchmod': No module named 'nosuchmod'" in proc.stderr, proc.stderr


def test_serve_keeps_the_traceback_of_an_import_error_inside_the_app(tmp_path: Path) -> None:
    (tmp_path / "needs_dep.py").write_text("import nosuch_dependency_of_the_app\napp = None\n")
    proc = _serve(tmp_path, "needs_dep:app")
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" in proc.stderr and 'needs_dep.py", line 1' in proc.stderr, proc.stderr
    assert "No module named 'nosuch_dependency_of_the_app'" in proc.stderr, proc.stderr
