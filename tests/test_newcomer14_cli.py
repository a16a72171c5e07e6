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
