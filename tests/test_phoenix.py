"""``statekit phoenix``: fails on the stateful demo, passes on the migrated one."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statekit import phoenix

ROOT = Path(__file__).resolve().parent.parent


def run_phoenix(
    tmp_path: Path, redis_url: str, s3_url: str, app: str, *extra: str
) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "report.json"
    env = {**os.environ, "STATEKIT_REDIS_URL": redis_url, "STATEKIT_BLOBS_URL": s3_url,
           "DATABASE_URL": f"sqlite:///{tmp_path}/demo.sqlite3", "USERS_COUNT_INTERVAL": "4"}
    proc = subprocess.run(
        [sys.executable, "-m", "statekit", "phoenix", app, "--duration", "5", "--workers", "2",
         "--instances", "2", "--users", "6", "--kill-every", "1", "--reload-every", "2.5",
         "--json", str(report), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_fails_on_the_stateful_app(tmp_path: Path, redis_url: str, s3_url: str) -> None:
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "examples.flask_app.before.app:app")
    assert status == 1, output
    assert report["requests"] > 50 and report["ok"] > 0, output
    # in-process sessions: the next worker does not know the user
    assert report["lost_session_writes"] > 0
    # a local uploads/ folder: the other instance does not have the photo
    assert report["lost_uploads"] > 0
    # a timer per worker: workers show different users counts
    assert report["shared_disagreements"] > 0
    assert report["lost_state"] is True and report["passed"] is False
    assert "FAIL" in output and "lost session writes" in output


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_passes_on_the_migrated_app(tmp_path: Path, redis_url: str, s3_url: str) -> None:
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "examples.flask_app.wsgi:app",
                                         "--broadcaster", "examples.flask_app.jobs:broadcaster")
    assert status == 0, output
    assert report["kills"] >= 2 and report["reloads"] >= 1, output
    assert report["requests"] > 50 and report["session_writes"] > 10 and report["uploads"] > 0, output
    assert report["shared_reads"] > 0
    assert report["lost_session_writes"] == 0
    assert report["lost_uploads"] == 0 and report["corrupted_uploads"] == 0
    assert report["shared_disagreements"] == 0
    # only requests on a killed worker fail: rolling reloads lose none
    assert sum(report["failures"].values()) <= report["in_flight_at_kills"], report["failures"]
    assert "PASS" in output


class HealthOnly(phoenix.Scenario):
    """A custom scenario (loaded by the run below with --scenario)."""

    def step(self) -> None:
        self.client.request("GET", "/healthz")


@pytest.mark.gunicorn
def test_a_custom_scenario_plugs_in(tmp_path: Path, redis_url: str, s3_url: str) -> None:
    status, report, output = run_phoenix(
        tmp_path, redis_url, s3_url, "examples.flask_app.before.app:app",
        "--scenario", "tests.test_phoenix:HealthOnly", "--instances", "1", "--kill-every", "0",
        "--reload-every", "0", "--duration", "2",
    )
    assert status == 0, output
    assert report["requests"] > 0 and report["failures"] == {}
    assert report["session_writes"] == report["uploads"] == report["shared_reads"] == 0
    assert report["kills"] == 0 and report["reloads"] == 0


def test_an_app_that_does_not_start_is_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "STATEKIT_REDIS_URL": "redis://127.0.0.1:1/0",
           "STATEKIT_BLOBS_URL": "memory://phoenix"}
    proc = subprocess.run(
        [sys.executable, "-m", "statekit", "phoenix", "no_such_module_xyz:app", "--duration", "1",
         "--start-timeout", "20", "--instances", "1", "--workers", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not run" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_soak_on_the_migrated_app(
    tmp_path: Path, redis_url: str, s3_url: str
) -> None:
    """60 s, 8 users, a kill every 2 s, a reload every 7 s. Runs with ``--soak`` (see
    conftest.py); the default run has the 5 s version above."""
    status, report, output = run_phoenix(
        tmp_path, redis_url, s3_url, "examples.flask_app.wsgi:app",
        "--broadcaster", "examples.flask_app.jobs:broadcaster", "--duration", "60", "--users", "8",
        "--kill-every", "2", "--reload-every", "7",
    )
    assert status == 0, output
    assert report["lost_session_writes"] == report["lost_uploads"] == report["shared_disagreements"] == 0


class _FakeClient:
    """Answers scripted responses (a pure-logic unit test of the scenario)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.answers.pop(0)


class _Response:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.status_code = 200

    def json(self) -> dict[str, Any]:
        return self.data


def test_a_failed_write_that_was_applied_is_not_a_loss() -> None:
    ledger = phoenix.Ledger()
    client = _FakeClient([_Response({"user": "u"}), _Response({}), None])
    scenario = phoenix.DefaultScenario(0, client, ledger, random.Random(1), "t")  # type: ignore[arg-type]
    scenario.setup()
    scenario.user = "u"
    scenario.write_session()  # acknowledged: k1 = 0-1
    scenario.write_session()  # failed (worker killed): k2 may or may not be 0-2
    client.answers.append(_Response({"user": "u", "values": {"k1": "0-1", "k2": "0-2"}}))
    assert scenario.check_session()
    assert ledger.lost_session_writes == 0
    # an acknowledged value that changes is a loss
    client.answers.append(_Response({"user": "u", "values": {"k1": "other", "k2": "0-2"}}))
    scenario.check_session()
    assert ledger.lost_session_writes == 1


def test_shared_disagreements() -> None:
    # (start, end, version): a read starting after a newer one completed (beyond grace) is stale
    reads = [(0.0, 0.1, 10.0), (0.5, 0.6, 20.0), (2.0, 2.1, 10.0), (2.05, 2.2, 20.0)]
    assert phoenix.shared_disagreements(reads, grace=1.0) == 1
    # within the grace a worker may lag
    assert phoenix.shared_disagreements(reads, grace=2.0) == 0
    assert phoenix.shared_disagreements([], grace=1.0) == 0
    # versions only growing: no disagreement
    rising = [(float(i), i + 0.1, float(i)) for i in range(10)]
    assert phoenix.shared_disagreements(rising, grace=0.5) == 0


def test_make_png_is_a_png_and_unique() -> None:
    rng = random.Random(1)
    a, b = phoenix.make_png(rng), phoenix.make_png(rng)
    assert a.startswith(b"\x89PNG\r\n\x1a\n") and a.endswith(b"IEND\xaeB`\x82")
    assert a != b


def test_scenario_loading() -> None:
    assert phoenix._load_scenario("statekit.phoenix:DefaultScenario") is phoenix.DefaultScenario
    with pytest.raises(phoenix.ConfigError):
        phoenix._load_scenario("statekit.phoenix:Ledger")
    with pytest.raises(phoenix.ConfigError):
        phoenix._load_scenario("nocolon")


def test_report_verdict() -> None:
    base: dict[str, Any] = dict(
        app="a", server="statekit", instances=1, workers=1, users=1, duration=1.0, requests=10, ok=10,
        failures={}, kills=0, in_flight_at_kills=0, reloads=0, session_writes=3, lost_session_writes=0,
        uploads=1, lost_uploads=0, corrupted_uploads=0, shared_reads=2, shared_disagreements=0,
        p50_ms=1.0, p99_ms=2.0, examples=[],
    )
    assert phoenix.PhoenixReport(**base).passed
    assert not phoenix.PhoenixReport(**{**base, "lost_uploads": 1}).passed
    assert not phoenix.PhoenixReport(**{**base, "shared_disagreements": 1}).passed
    # failed requests alone are not lost state
    assert phoenix.PhoenixReport(**{**base, "failures": {"connection reset": 3}}).passed
    assert not phoenix.PhoenixReport(**{**base, "ok": 0}).passed
