"""The shipped async session-engine contract
(statekit.testing.contracts.sessions.AsyncSessionEngineContract) on statekit's
AsyncRedisEngine, on the URLs test_sessions.py runs the sync contract on: memory://
and redis:// of every server line (with an unreachable one for the outage tests)."""

from __future__ import annotations

import pytest
import test_sessions  # tests/ is on sys.path; a module import: its classes are not collected here

from statekit.testing.contracts.sessions import AsyncSessionEngineContract


class TestAsyncMemoryEngine(AsyncSessionEngineContract, test_sessions.TestMemoryEngine):
    """session_url: test_sessions.TestMemoryEngine's."""


@pytest.mark.redis
class TestAsyncRedisEngine(AsyncSessionEngineContract, test_sessions.TestRedisEngine):
    """session_url and unreachable_session_url: test_sessions.TestRedisEngine's."""
