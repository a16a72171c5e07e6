"""``statekit phoenix`` must not say PASS while state was lost (review).

Each hole is shown twice: on phoenix's scenario logic with scripted answers
(deterministic), and by a real run on a tiny app of ``tests/phoenix_apps`` that loses
that state in that way (Flask and Starlette). A correct app that answers 503 during an
outage (even to a write it applied) and serves slow requests still passes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_phoenix import run_phoenix  # tests/ is on sys.path

from statekit import phoenix


class _Response:
    def __init__(self, status: int, data: Any = None) -> None:
        self.status_code = status
        self.data = data
        self.content = b"" if data is None else bytes(str(data), "ascii")

    def json(self) -> Any:
        if self.data is None:
            raise ValueError("not JSON")
        return self.data


class _Client:
    """Answers by (path, base): a list of responses each, the last one repeated. A
    failed request is ``None``, as :meth:`phoenix.Client.request` returns it (a 4xx/5xx
    not in *ok*)."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.answers: dict[tuple[str, str | None], list[Any]] = {}
        self.sent: list[tuple[str, str, str | None]] = []

    def request(self, method: str, path: str, *, base: str | None = None, **kwargs: Any) -> Any:
        self.sent.append((method, path, base))
        queue = self.answers.get((path, base)) or self.answers.get((path, None)) or [None]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        refused = answer is not None and answer.status_code >= 400
        if refused and answer.status_code not in kwargs.get("ok", ()):
            return None
        return answer


def _user(bases: list[str] | None = None) -> tuple[phoenix.DefaultScenario, _Client, phoenix.Ledger]:
    client = _Client(bases or ["http://a", "http://b"])
    ledger = phoenix.Ledger()
    scenario = phoenix.DefaultScenario(0, client, ledger, random.Random(1), "t")  # type: ignore[arg-type]
    scenario.skip = frozenset({"uploads", "shared value"})
    client.answers[("/api/login", None)] = [_Response(200, {"user": "u"})]
    scenario.setup()
    scenario.user = "u"
    client.answers[("/api/session", None)] = [_Response(200, {"ok": True})]
    scenario.write_session()
    return scenario, client, ledger


def test_a_session_read_refused_as_not_logged_in_is_a_lost_session() -> None:
    """A session the worker does not know answered 401/403 (login_required) or a
    redirect to a login page: the acknowledged login and writes are gone. Phoenix
    counted it a failed request and went on (PASS with 'http 401' failures)."""
    for refused in (_Response(401, {"error": "login required"}), _Response(403), _Response(302)):
        scenario, client, ledger = _user()
        client.answers[("/api/session", None)] = [refused]
        assert scenario.check_session()
        assert ledger.lost_session_writes == 2, refused.status_code  # the login and k1
        assert not scenario.logged_in  # logs in again, the run goes on measuring
    # the read does not follow redirects (a login page would answer 200 with HTML)
    assert ("GET", "/api/session", None) in client.sent


def test_verify_reads_every_instance_and_counts_what_it_could_not_read() -> None:
    """After the faults stop, an acknowledged write that no instance answers for (every
    read a 5xx) was not certified: it counts as unverified and the run fails. Phoenix
    read a random instance five times and, none answering, reported nothing."""
    scenario, client, ledger = _user()
    good = _Response(200, {"user": "u", "values": {"k1": "0-1"}})
    client.answers[("/api/session", "http://a")] = [good]
    client.answers[("/api/session", "http://b")] = [_Response(500)]
    scenario.verify_patience = 0.0
    scenario.verify()
    assert {("GET", "/api/session", "http://a"), ("GET", "/api/session", "http://b")} <= set(client.sent)
    assert ledger.lost_session_writes == 0 and ledger.unverified == 1
    assert any("could not be read" in e for e in ledger.examples)


def test_verify_reads_each_upload_on_every_instance() -> None:
    scenario, client, ledger = _user()
    scenario.skip = frozenset({"sessions", "shared value"})
    scenario.uploads = {"x": "0" * 64}
    client.answers[("/api/photos/x", "http://a")] = [_Response(200, "abc")]
    scenario.uploads["x"] = phoenix.hashlib.sha256(b"abc").hexdigest()
    client.answers[("/api/photos/x", "http://b")] = [_Response(500)]
    scenario.verify_patience = 0.0
    scenario.verify()
    assert ledger.unverified == 1 and ledger.lost_uploads == 0
    # an instance that answers 404 once the faults stopped lost it
    scenario.gone.clear()
    ledger.given_up.clear()
    client.answers[("/api/photos/x", "http://b")] = [_Response(404)]
    scenario.verify()
    assert ledger.lost_uploads == 1


def test_same_version_with_different_values_is_a_disagreement() -> None:
    """Two workers showing the same version of the shared value with different values
    (each computing its own): no version ever goes back, so the version check alone
    saw nothing."""
    reads = [(0.0, 0.1, 10.0), (0.2, 0.3, 10.0), (0.4, 0.5, 12.0), (0.6, 0.7, 12.0)]
    values = ["3", "5", "7", "7"]
    assert phoenix.shared_disagreements(reads, grace=1.0) == 0
    assert phoenix.shared_value_conflicts(list(zip([r[2] for r in reads], values, strict=True))) == 1
    assert phoenix.shared_value_conflicts([(1.0, "1"), (1.0, "1"), (2.0, "2")]) == 0


def test_a_check_nothing_was_acknowledged_for_is_not_checked() -> None:
    """An app whose logins all fail, or whose shared value never carries a version,
    had nothing checked: that check is reported as not checked, not as passed."""
    ledger = phoenix.Ledger()
    assert set(phoenix.DefaultScenario.unexercised(ledger, frozenset())) == {
        "sessions", "uploads", "shared value"}
    ledger.session_writes, ledger.uploads = 3, 1
    ledger.shared_reads.append((0.0, 0.1, 1.0))
    assert phoenix.DefaultScenario.unexercised(ledger, frozenset()) == {}
    assert phoenix.Scenario.unexercised(phoenix.Ledger(), frozenset()) == {}


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_fails_a_flask_app_that_hides_each_loss(tmp_path: Any, redis_url: str, s3_url: str) -> None:
    """tests/phoenix_apps/flask_stateful.py: 401 for a session its worker does not
    have, 500 for a photo its instance does not have, a per-worker count under one
    version. Phoenix said PASS (its only complaints: failed requests)."""
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "tests.phoenix_apps.flask_stateful:app")
    print(f"flask_stateful: lost sessions={report.get('lost_session_writes')} "
          f"unverified={report.get('unverified')} shared={report.get('shared_disagreements')} "
          f"failures={report.get('failures')}")
    assert status == 1, output
    assert report["lost_session_writes"] > 0, output
    assert report["unverified"] > 0, output
    assert report["shared_disagreements"] > 0, output
    assert report["passed"] is False and "FAIL" in output


@pytest.mark.redis
@pytest.mark.gunicorn
def test_phoenix_fails_an_asgi_app_with_sessions_per_worker(
    tmp_path: Any, redis_url: str, s3_url: str
) -> None:
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "tests.phoenix_apps.asgi_stateful:app")
    assert report["interface"] == "asgi", output
    assert status == 1, output
    assert report["lost_session_writes"] > 0, output
    assert set(report["unchecked"]) == {"uploads", "shared value"}


@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.gunicorn
def test_phoenix_passes_a_correct_app_with_outages_and_slow_requests(
    tmp_path: Any, redis_url: str, s3_url: str
) -> None:
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "tests.phoenix_apps.flask_legal:app",
                                         "--broadcaster", "examples.flask_app.jobs:broadcaster")
    print(f"flask_legal: requests={report.get('requests')} failures={report.get('failures')} "
          f"session writes={report.get('session_writes')} uploads={report.get('uploads')}")
    assert status == 0, output
    assert report["failures"].get("http 503", 0) > 0, output  # the outage was there
    assert report["session_writes"] > 5 and report["uploads"] > 0 and report["shared_reads"] > 0, output
    assert report["unverified"] == 0 and report["unchecked"] == {}


@pytest.mark.redis
@pytest.mark.gunicorn
def test_phoenix_fails_per_worker_sessions_on_one_instance(
    tmp_path: Any, redis_url: str, s3_url: str
) -> None:
    """One instance, no faults: each user's keep-alive connection pinned it to one
    worker, so sessions kept per worker were never read elsewhere (PASS, 0 lost of
    3458). A load balancer spreads requests, not connections: every request gets its own."""
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url, "tests.phoenix_apps.asgi_stateful:app",
                                         "--instances", "1", "--kill-every", "0", "--reload-every", "0")
    assert status == 1, output
    assert report["lost_session_writes"] > 0, output


def test_a_session_answer_that_is_not_an_object_leaves_the_write_unverified() -> None:
    """A read answering JSON that is not an object (a list, a string) raised inside
    verify(): the run counted a scenario error and certified the rest unread."""
    scenario, client, ledger = _user()
    client.answers[("/api/session", None)] = [_Response(200, ["not", "a", "session"])]
    scenario.verify_patience = 0.0
    scenario.verify()
    assert ledger.unverified == 2 and not ledger.failures  # one read per instance


@pytest.mark.redis
@pytest.mark.gunicorn
def test_phoenix_fails_sessions_written_through_late_from_a_near_copy(
    tmp_path: Any, redis_url: str, s3_url: str
) -> None:
    """tests/phoenix_apps/flask_write_behind.py: sessions in a per-worker near copy,
    written to Redis once a second. Checked, not changed: phoenix already failed it."""
    status, report, output = run_phoenix(tmp_path, redis_url, s3_url,
                                         "tests.phoenix_apps.flask_write_behind:app")
    print(f"flask_write_behind: lost sessions={report.get('lost_session_writes')} "
          f"of {report.get('session_writes')}")
    assert status == 1, output
    assert report["lost_session_writes"] > 0, output


def test_an_instance_verify_gave_up_on_is_not_asked_again() -> None:
    """Once an instance failed a read-back for the whole patience, the rest of its
    read-backs are counted unverified without a request: a hung instance cost one
    request timeout (10 s) per acknowledged write, an unbounded verify."""
    scenario, client, ledger = _user()
    scenario.skip = frozenset({"shared value"})
    scenario.uploads = {"x": "0" * 64, "y": "0" * 64}
    client.answers[("/api/session", "http://a")] = [_Response(200, {"user": "u", "values": {"k1": "0-1"}})]
    client.answers[("/api/session", "http://b")] = [_Response(500)]
    scenario.verify_patience = 0.0
    client.bases.reverse()  # b, the failing instance, first
    scenario.verify()
    assert [sent for sent in client.sent if sent[2] == "http://b"] == [("GET", "/api/session", "http://b")]
    # b: its session and both photos; a: both photos (it answers none either)
    assert ledger.unverified == 5
