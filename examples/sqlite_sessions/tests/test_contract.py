"""The engine passes statekit's shipped session-engine contract, found by its URL
scheme (the entry point this distribution registers), as SessionStore finds it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from statekit_sqlite_sessions import SQLiteEngine

from statekit.errors import BackendUnavailable, ConfigError
from statekit.pytest_plugin import wait_for
from statekit.sessions import SessionStore
from statekit.sessions.protocol import Status
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


def test_a_write_waiting_past_the_timeout_is_unavailable_and_changes_nothing(tmp_path: Path) -> None:
    """Another writer holds the lock longer than ``?timeout``: the save raises
    BackendUnavailable, nothing is half-written, and the next save goes through."""
    store = SessionStore(f"sqlite://{tmp_path}/s.db?timeout=0.05", secret_keys=["k"])
    try:
        session = store.create({"a": 1})
        other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        session["a"] = 2
        session["b"] = 3
        with pytest.raises(BackendUnavailable):
            store.save(session)
        other.execute("ROLLBACK")
        other.close()
        assert store.load(session.sid) == {"a": 1}
        assert store.save(session) and store.load(session.sid) == {"a": 2, "b": 3}
    finally:
        store.close()


def test_an_expired_session_reads_as_absent_and_is_not_written_back(tmp_path: Path) -> None:
    engine = SQLiteEngine(str(tmp_path / "s.db"))
    try:
        sets = {"m:c": b"1.0", "m:s": b"1.0", "d:a": b"1"}
        first = engine.write("{abcd}:x", create=True, sets=sets, dels=[], ttl_ms=50, index=None)
        assert first.status is Status.DONE
        wait_for(lambda: not engine.load("{abcd}:x"), what="the session to expire")
        late = engine.write("{abcd}:x", create=False, sets={"d:a": b"2"}, dels=[], ttl_ms=60_000, index=None)
        assert late.status is Status.GONE and engine.load("{abcd}:x") == {}
    finally:
        engine.close()
