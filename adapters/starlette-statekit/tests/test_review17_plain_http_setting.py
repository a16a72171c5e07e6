"""Review 17: ``STATEKIT_SESSION_COOKIE_SECURE`` under ``StateKit(app)``.

The plain-http warning told a Starlette user to set
``STATEKIT_SESSION_COOKIE_SECURE=false``, which only the Flask and Django adapters
read: with it set, the Starlette cookie stayed ``Secure``. Now ``StateKit(app)``
reads it as it reads every setting (a keyword, ``config=``, then the environment),
so one setting marks the cookie for the three adapters; unset, the cookie is not
``Secure``, as in Starlette's own ``SessionMiddleware`` (unchanged). An
``https_only`` the app passes (``session_options``) wins over it: the app's own
word, as before. A value that is not a boolean refuses to start, naming it. The
warning names both ways of turning ``Secure`` off.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.config import Config
from test_review15_plain_http_starlette import secure_warnings
from test_starlette_sessions import KEY, ROUTES

from starlette_statekit import StateKit
from statekit.errors import ConfigError
from statekit.sessions import session as session_module

pytestmark = pytest.mark.redis

NAME = "STATEKIT_SESSION_COOKIE_SECURE"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])  # the warning due, as in a new process
    monkeypatch.delenv(NAME, raising=False)


def kit_app(redis_url: str, **options: Any) -> Starlette:
    """A Starlette app with sessions by ``StateKit(app, **options)`` (nothing else)."""
    app = Starlette(routes=ROUTES)
    app.state.gate = None
    StateKit(app, redis_url=redis_url, secret_keys=[KEY], key_prefix="st" + uuid.uuid4().hex[:10],
             cache_enabled=False, broadcast_enabled=False, blobs_enabled=False, lifecycle_enabled=False,
             **options)
    return app


def set_cookie(app: Starlette, base_url: str = "http://devbox.test:8017") -> str:
    """The ``Set-Cookie`` of one session write."""
    async def main() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as c:
            return (await c.post("/set/a/1")).headers["set-cookie"]

    return asyncio.run(main())


@pytest.mark.parametrize("value", ["true", "1", " On "])
def test_the_environment_variable_marks_the_cookie_secure(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                          value: str) -> None:
    monkeypatch.setenv(NAME, value)
    assert "; secure" in set_cookie(kit_app(redis_url))


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_false_or_empty_leaves_it_off(redis_url: str, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(NAME, value)
    assert "secure" not in set_cookie(kit_app(redis_url))


def test_unset_is_starlettes_default_not_secure(redis_url: str) -> None:
    assert "secure" not in set_cookie(kit_app(redis_url))


def test_a_keyword_and_the_config_set_it_as_any_setting(redis_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert "; secure" in set_cookie(kit_app(redis_url, session_cookie_secure=True))
    assert "; secure" in set_cookie(kit_app(redis_url, config={NAME: "yes"}))
    assert "; secure" in set_cookie(kit_app(redis_url, config=Config(environ={NAME: "true"})))
    monkeypatch.setenv(NAME, "true")
    assert "secure" not in set_cookie(kit_app(redis_url, session_cookie_secure="false"))  # keyword first


@pytest.mark.parametrize(("https_only", "value"), [(True, "false"), (False, "true")])
def test_an_explicit_https_only_wins_over_the_setting(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                      https_only: bool, value: str) -> None:
    monkeypatch.setenv(NAME, value)
    cookie = set_cookie(kit_app(redis_url, session_options={"https_only": https_only}))
    assert ("; secure" in cookie) is https_only, cookie


def test_a_value_that_is_no_boolean_refuses_to_start(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "ture")
    with pytest.raises(ConfigError, match=f"{NAME}='ture' must be true or false"):
        kit_app(redis_url)


def test_the_warning_names_what_turns_it_off_and_that_does(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Secure from the setting: the warning's fix (the setting false) removes Secure
    and the warning. Secure from session_options: the warning names https_only too."""
    caplog.set_level(logging.WARNING, "statekit.sessions")
    monkeypatch.setenv(NAME, "true")
    assert "; secure" in set_cookie(kit_app(redis_url))
    (line,) = secure_warnings(caplog)
    assert f"{NAME}=false" in line and "https_only=False" in line, line
    caplog.clear()
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])
    monkeypatch.setenv(NAME, "false")  # as the warning says
    assert "secure" not in set_cookie(kit_app(redis_url))
    assert secure_warnings(caplog) == []
    monkeypatch.setattr(session_module, "_plain_http_log", [0.0, 0])
    assert "; secure" in set_cookie(kit_app(redis_url, session_options={"https_only": True}))
    (line,) = secure_warnings(caplog)
    assert "https_only=False where the app passes https_only" in line, line
