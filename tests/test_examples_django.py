"""examples/django_app: its own Django tests, run in a subprocess (its settings must
not meet the adapter tests' settings in this process), against the private servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statekit import audit

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django_app"


@pytest.mark.redis
@pytest.mark.s3
def test_django_example_tests_pass(tmp_path: Path, redis_url: str, s3_url: str) -> None:
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": s3_url,
           "DJANGO_DATABASE": str(tmp_path / "db.sqlite3"), "DJANGO_SETTINGS_MODULE": "django_demo.settings",
           "PYTHONWARNINGS": "error::DeprecationWarning"}
    proc = subprocess.run([sys.executable, "manage.py", "test", "board", "-v", "2", "--noinput"],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Ran 7 tests" in output and "OK" in output, output


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_passes_on_the_django_example(tmp_path: Path, redis_url: str, s3_url: str) -> None:
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": s3_url,
           "DJANGO_DATABASE": str(tmp_path / "db.sqlite3"), "USERS_COUNT_INTERVAL": "4"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=PROJECT, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "statekit", "phoenix", "django_demo.wsgi:application",
         "--broadcaster", "django_demo.jobs:broadcaster", "--duration", "5", "--users", "6",
         "--kill-every", "1", "--reload-every", "2.5", "--json", str(report)],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    data = json.loads(report.read_text())
    assert data["kills"] >= 2 and data["session_writes"] > 10 and data["uploads"] > 0, output
    assert data["shared_reads"] > 0 and data["passed"] is True


def test_django_example_passes_audit() -> None:
    assert audit.audit_paths([str(PROJECT)]) == []


def test_django_example_settings_use_statekit() -> None:
    found = audit.audit_source((PROJECT / "django_demo" / "settings.py").read_text())
    assert found == []
    text = (PROJECT / "django_demo" / "settings.py").read_text()
    for needle in ('"django_statekit.cache.StatekitCache"', 'SESSION_ENGINE = "django_statekit.sessions"',
                   '"django_statekit.storage.BlobStorage"',
                   'STATEKIT_BROADCASTER = "django_demo.jobs:broadcaster"'):
        assert needle in text
