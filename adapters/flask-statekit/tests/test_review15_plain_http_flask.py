"""Review 15: a Secure session cookie set on a plain-http request is no longer silent.

The session cookie is ``Secure`` outside debug. Served over plain http at a host name
(a VM, a LAN address, a docker-compose service), no client sends it back, so every
request started a new, empty session and nothing was logged. Secure by default
stays; a WARNING (``statekit.sessions``, rate-limited) now names the fix. Through the
test client, and through a real ``statekit serve`` (gunicorn) with ``requests``, which
honours ``Secure``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from test_flask_sessions import make_app
from werkzeug.middleware.proxy_fix import ProxyFix

from statekit.embedded import free_port
from statekit.sessions import session as session_module

pytestmark = pytest.mark.redis

FIX = "STATEKIT_SESSION_COOKIE_SECURE=false"


@pytest.fixture(autouse=True)
def fresh_log_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])  # the warning due, as in a new process




def test_secure_cookie_on_plain_http_at_a_host_name_is_warned_once(
        redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    app = make_app(redis_url)
    browser = app.test_client()
    for _ in range(3):
        r = browser.post("/set/a/1", base_url="http://devbox.test:8015/")
        assert "Secure" in r.headers["Set-Cookie"]
        browser.delete_cookie("session", domain="devbox.test")  # as a client honouring Secure drops it
    (line,) = secure_warnings(caplog)
    assert "Host: devbox.test:8015" in line and FIX in line and "ProxyFix" in line
    # past the interval: one more line, counting the ones not logged
    due = session_module._plain_http_log[0]
    monkeypatch.setattr(time, "monotonic", lambda: due + 1)
    browser.post("/set/a/1", base_url="http://10.0.0.7/")
    assert secure_warnings(caplog)[1].endswith("(2 more since the last such line, not logged)")


@pytest.mark.parametrize("base_url", ["https://devbox.test/", "http://localhost:5000/", "http://127.0.0.1/",
                                      "http://[::1]:8000/"])
def test_no_warning_over_https_or_at_localhost(redis_url: str, caplog: pytest.LogCaptureFixture,
                                               base_url: str) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    r = make_app(redis_url).test_client().post("/set/a/1", base_url=base_url)
    assert "Secure" in r.headers["Set-Cookie"]
    assert secure_warnings(caplog) == []


def test_proxyfix_forwarded_https_counts_as_https(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    app = make_app(redis_url)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
    r = app.test_client().post("/set/a/1", base_url="http://devbox.test/",
                               headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["Set-Cookie"]
    assert secure_warnings(caplog) == []


def test_no_secure_cookie_no_warning(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    app = make_app(redis_url, STATEKIT_SESSION_COOKIE_SECURE=False)
    browser = app.test_client()
    r = browser.post("/set/a/1", base_url="http://devbox.test/")
    assert "Secure" not in r.headers["Set-Cookie"]
    assert browser.get("/get", base_url="http://devbox.test/").json == {"a": "1"}
    assert secure_warnings(caplog) == []


APP = """
    from flask import Flask, session
    from flask_statekit import StateKit

    app = Flask(__name__); app.config["SECRET_KEY"] = "change-me"
    app.config.update(STATEKIT_CACHE_ENABLED=False, STATEKIT_BLOBS_ENABLED=False,
                      STATEKIT_BROADCAST_ENABLED=False)
    StateKit(app)

    @app.get("/")
    def home():
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}
"""


class Served:
    """``statekit serve plain_http_app:app`` (gunicorn, 2 workers); stopped by its PID."""

    def __init__(self, tmp: Path, url: str, **env: str) -> None:
        (tmp / "plain_http_app.py").write_text(textwrap.dedent(APP))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("STATEKIT_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own command line
                [sys.executable, "-m", "statekit", "serve", "plain_http_app:app", "--workers", "2",
                 "--bind", f"127.0.0.1:{self.port}", "--pid", "", "--pre-stop-delay", "0",
                 "--graceful-timeout", "5"],
                cwd=tmp, env={**environ, "PYTHONPATH": str(tmp), "STATEKIT_REDIS_URL": url, **env},
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(self.base + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("statekit serve did not start:\n" + self.output())

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def counts(self, **headers: str) -> list[int]:
        with requests.Session() as client:  # honours Secure: not sent back over http
            return [client.get(self.base + "/", headers=headers, timeout=30).json()["n"] for _ in range(3)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[Any]:
    started: list[Served] = []

    def start(**env: str) -> Served:
        started.append(Served(tmp_path, redis_url, **env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def test_statekit_serve_over_plain_http_warns_naming_the_fix(served: Any) -> None:
    s = served()
    assert s.counts(Host="devbox.test:8015") == [1, 1, 1]  # the session lost on every request...
    s.stop()
    out = s.output()
    lines = [line for line in out.splitlines() if "session cookie marked Secure" in line]
    assert lines, out  # ...and said so: once a worker at most (two workers)
    assert 1 <= len(lines) <= 2 and all(FIX in line and "Host: devbox.test:8015" in line for line in lines)


def test_statekit_serve_forwarded_https_and_the_switch_are_quiet(served: Any) -> None:
    # gunicorn trusts X-Forwarded-Proto from 127.0.0.1 (--forwarded-allow-ips): https
    s = served()
    assert s.counts(Host="devbox.test", **{"X-Forwarded-Proto": "https"}) == [1, 1, 1]  # requests: http
    s.stop()
    assert "session cookie marked Secure" not in s.output()
    s = served(STATEKIT_SESSION_COOKIE_SECURE="false")
    assert s.counts(Host="devbox.test") == [1, 2, 3]
    s.stop()
    assert "session cookie marked Secure" not in s.output()


def secure_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines of warn_secure_cookie_over_http caught."""
    return [m.getMessage() for m in caplog.records if m.name == "statekit.sessions"
            and m.levelno == logging.WARNING and "cookie marked Secure" in m.getMessage()]
