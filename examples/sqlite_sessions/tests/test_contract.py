"""The engine passes statekit's shipped session-engine contract, found by its URL
scheme (the entry point this distribution registers), as SessionStore finds it."""

from __future__ import annotations

from pathlib import Path

import pytest
from statekit_sqlite_sessions import SQLiteEngine

from statekit.errors import ConfigError
from statekit.sessions import SessionStore
from statekit.testing.contracts.sessions import SessionEngineContract


class TestSQLiteSessions(SessionEngineContract):
    @pytest.fixture
    def session_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/sessions.db"

    @pytest.fixture
    def unreachable_session_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path}/no-such-directory/sessions.db"


def test_the_scheme_finds_this_engine(tmp_path: Path) -> None:
    store = SessionStore(f"sqlite://{tmp_path}/s.db?timeout=2", secret_keys=["k"])
    try:
        assert isinstance(store.engine, SQLiteEngine)
        assert store.engine.path == f"{tmp_path}/s.db" and store.engine.timeout == 2
    finally:
        store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite://:memory:", "sqlite:///x.db?mode=ro",
                                 "sqlite:///x.db?timeout=soon"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        SessionStore(url, secret_keys=["k"])


def test_the_near_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="near_cache"):
        SessionStore(f"sqlite://{tmp_path}/s.db", secret_keys=["k"], near_cache=10)
