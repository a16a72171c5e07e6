"""Review 15: the Starlette session cookie over plain http.

``https_only`` stays off by default, as in Starlette's own ``SessionMiddleware`` (of
which this is a drop-in; docs/starlette.md shows ``https_only=True`` passed). With it
on, a ``Secure`` session cookie set on a plain-http request (the ASGI scope's
scheme, which the server sets from trusted forwarded headers) to a host other than
localhost is logged (``statekit.sessions``, rate-limited), naming the fix, as in the
Flask and Django adapters: no client sends it back, every request a new session.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import httpx
import pytest
from test_starlette_sessions import make_app

from statekit.sessions import session as session_module

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def fresh_log_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])  # the warning due, as in a new process




def writes(redis_url: str, base_url: str, times: int = 1, **options: object) -> list[str]:
    """The ``Set-Cookie`` headers of *times* writes by a client that keeps no cookie."""
    app = make_app(redis_url, "st" + uuid.uuid4().hex[:10], **options)

    async def main() -> list[str]:
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as c:
            for _ in range(times):
                out.append((await c.post("/set/a/1")).headers["set-cookie"])
                c.cookies.clear()
        return out

    return asyncio.run(main())


def test_https_only_on_plain_http_at_a_host_name_is_warned_once(redis_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    cookies = writes(redis_url, "http://devbox.test:8015", 3, https_only=True)
    assert all("; secure" in c for c in cookies)
    (line,) = secure_warnings(caplog)
    assert "Host: devbox.test:8015" in line and "STATEKIT_SESSION_COOKIE_SECURE=false" in line
    assert "--forwarded-allow-ips" in line


@pytest.mark.parametrize("base_url", ["https://devbox.test", "http://localhost:8000", "http://127.0.0.1",
                                      "http://[::1]:8000"])
def test_no_warning_over_https_or_at_localhost(redis_url: str, caplog: pytest.LogCaptureFixture,
                                               base_url: str) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    assert "; secure" in writes(redis_url, base_url, https_only=True)[0]
    assert secure_warnings(caplog) == []


def test_the_default_is_starlettes_no_secure_and_no_warning(redis_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statekit.sessions")
    assert "secure" not in writes(redis_url, "http://devbox.test")[0]
    assert secure_warnings(caplog) == []


def secure_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines of warn_secure_cookie_over_http caught."""
    return [m.getMessage() for m in caplog.records if m.name == "statekit.sessions"
            and m.levelno == logging.WARNING and "cookie marked Secure" in m.getMessage()]
