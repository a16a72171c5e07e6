"""Review 15: the Django session cookie over plain http.

* A project's explicit ``SESSION_COOKIE_SECURE = False`` (an internal app on plain
  http, as Django's own engines serve it) still gave ``Secure`` outside ``DEBUG``:
  every request a new, empty session, silently. An explicit setting
  (``settings.is_overridden``) is honoured now; ``STATEKIT_SESSION_COOKIE_SECURE``,
  when set, still wins.
* A ``Secure`` session cookie set on a plain-http request to a host other than
  localhost is logged (``statekit.sessions``, rate-limited), naming the fix;
  ``request.is_secure()`` decides, so ``SECURE_PROXY_SSL_HEADER`` counts as https.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from test_django_sessions import configure

from statekit.sessions import session as session_module

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def fresh_log_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])  # the warning due, as in a new process


def set_cookie(**request: Any) -> Any:
    """The ``sessionid`` morsel a write's response sets."""
    return Client().get("/sessions/set/a/1", **request).cookies["sessionid"]




@pytest.mark.parametrize(("extra", "secure"), [
    ({}, True),                                    # statekit's default outside DEBUG
    ({"SESSION_COOKIE_SECURE": False}, False),     # the project's explicit word
    ({"SESSION_COOKIE_SECURE": True}, True),
    ({"SESSION_COOKIE_SECURE": False, "STATEKIT_SESSION_COOKIE_SECURE": True}, True),  # statekit's wins
    ({"STATEKIT_SESSION_COOKIE_SECURE": False}, False),
    ({"DEBUG": True}, False),
    ({"DEBUG": True, "SESSION_COOKIE_SECURE": True}, True),
])
def test_session_cookie_secure(django_settings: Any, redis_url: str, extra: dict[str, Any],
                               secure: bool) -> None:
    configure(django_settings, redis_url, **extra)
    assert bool(set_cookie(HTTP_HOST="localhost")["secure"]) is secure


SCRIPT = """
    import sys
    import django
    from django.conf import settings
    settings.configure(
        SECRET_KEY="x", DEBUG=False, SESSION_COOKIE_SECURE=False, ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.sessions", "django_statekit"],
        SESSION_ENGINE="django_statekit.sessions", STATEKIT_REDIS_URL=sys.argv[1],
        MIDDLEWARE=["django_statekit.middleware.SessionOutageMiddleware",
                    "django.contrib.sessions.middleware.SessionMiddleware"],
        ROOT_URLCONF=__name__,
    )
    django.setup()
    from django.http import HttpResponse
    from django.urls import path
    def view(request):
        request.session["n"] = request.session.get("n", 0) + 1
        return HttpResponse("ok")
    urlpatterns = [path("", view)]
    from django.test import Client
    print(Client().get("/").cookies["sessionid"].output())
"""


def test_settings_configure_with_secure_false_gives_no_secure(redis_url: str, tmp_path: Path) -> None:
    """The newcomer's project: settings.configure(SESSION_COOKIE_SECURE=False, DEBUG=False)."""
    (tmp_path / "plain_dj.py").write_text(textwrap.dedent(SCRIPT))
    out = subprocess.run([sys.executable, str(tmp_path / "plain_dj.py"), redis_url],  # noqa: S603
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sessionid=" in out.stdout and "secure" not in out.stdout.lower(), out.stdout
    assert "Secure" not in out.stderr


def test_secure_cookie_on_plain_http_at_a_host_name_is_warned_once(
        django_settings: Any, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    configure(django_settings, redis_url)
    caplog.set_level(logging.WARNING, "statekit.sessions")
    for _ in range(3):
        assert set_cookie(HTTP_HOST="devbox.test:8015")["secure"]
    (line,) = secure_warnings(caplog)
    assert "Host: devbox.test:8015" in line and "STATEKIT_SESSION_COOKIE_SECURE=false" in line
    assert "SECURE_PROXY_SSL_HEADER" in line


@pytest.mark.parametrize("request_", [
    {"HTTP_HOST": "devbox.test", "secure": True},
    {"HTTP_HOST": "localhost:8000"}, {"HTTP_HOST": "127.0.0.1"}, {"HTTP_HOST": "[::1]:8000"},
    {"HTTP_HOST": "devbox.test", "HTTP_X_FORWARDED_PROTO": "https"},  # SECURE_PROXY_SSL_HEADER
])
def test_no_warning_over_https_or_at_localhost(django_settings: Any, redis_url: str,
                                               caplog: pytest.LogCaptureFixture,
                                               request_: dict[str, Any]) -> None:
    configure(django_settings, redis_url, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
    caplog.set_level(logging.WARNING, "statekit.sessions")
    assert set_cookie(**request_)["secure"]
    assert secure_warnings(caplog) == []


def test_explicit_secure_false_no_warning(django_settings: Any, redis_url: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    configure(django_settings, redis_url, SESSION_COOKIE_SECURE=False)
    caplog.set_level(logging.WARNING, "statekit.sessions")
    c = Client(HTTP_HOST="devbox.test")
    c.get("/sessions/set/a/1")
    assert c.get("/sessions/get").json() == {"a": "1"}
    assert secure_warnings(caplog) == []


def secure_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines of warn_secure_cookie_over_http caught."""
    return [m.getMessage() for m in caplog.records if m.name == "statekit.sessions"
            and m.levelno == logging.WARNING and "cookie marked Secure" in m.getMessage()]
