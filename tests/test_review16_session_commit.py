"""``SessionStore.commit`` / ``AsyncSessionStore.commit``: the end-of-request save an
adapter makes (a logout's destroy and carried data included), public, so a framework
adapter written outside statekit needs no private member of the store. The Flask and
Starlette adapters called ``store._run(store._commit_steps(...))``. On a real Redis,
sync and asyncio."""

from __future__ import annotations

import ast
import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statekit.sessions import AsyncSessionStore, Committed, Session, SessionStore

pytestmark = pytest.mark.redis

KEYS = ["commit-test-key-0123456789abcdef"]
ROOT = Path(__file__).resolve().parent.parent


def _committer(url: str, mode: str) -> tuple[SessionStore, Callable[[Session, bool], Committed]]:
    """The sync store (to set up and check) and the commit under test: the sync
    store's, or an async store's on the same keys, each call on a new loop. The
    session's user is its ``_user_id``."""
    prefix = "cm" + uuid.uuid4().hex[:8]
    sync = SessionStore(url, secret_keys=KEYS, key_prefix=prefix, user_key="_user_id")
    if mode == "sync":
        return sync, lambda session, had_data: sync.commit(session, had_data=had_data)

    def commit(session: Session, had_data: bool) -> Committed:
        async def run() -> Committed:
            async with AsyncSessionStore(url, secret_keys=KEYS, key_prefix=prefix,
                                         user_key="_user_id") as store:
                return await store.commit(session, had_data=had_data)

        return asyncio.run(run())

    return sync, commit


def _opened(store: SessionStore, sid: str) -> Session:
    return store.open(store.sign(sid))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_commit_saves_what_the_request_changed(redis_url: str, mode: str) -> None:
    store, commit = _committer(redis_url, mode)
    try:
        session = store.open(None)
        session["cart"] = ["apple"]
        result = commit(session, False)
        assert isinstance(result, Committed)
        assert result == (True, None) and result.saved and result.carried is None
        assert not session.new and session.send_cookie
        assert _opened(store, session.sid) == {"cart": ["apple"]}
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("revoked", [False, True], ids=["", "revoked-meanwhile"])
def test_commit_of_a_cleared_session_logs_out_and_carries_what_was_set_after(redis_url: str, mode: str,
                                                                            revoked: bool) -> None:
    """Also when the user was revoked meanwhile: what was set after the clear only."""
    store, commit = _committer(redis_url, mode)
    try:
        session = store.create({"_user_id": "ada", "cart": ["apple"]})
        loaded = _opened(store, session.sid)
        had_data = bool(loaded)
        if revoked:
            assert store.revoke_user("ada") == 1
        loaded.clear()
        loaded["flash"] = "logged out"
        saved, carried = commit(loaded, had_data)
        assert loaded.destroyed  # the old id names nothing any more
        assert store.load(session.sid) is None
        assert carried is not None and carried.sid != session.sid
        assert _opened(store, carried.sid) == {"flash": "logged out"}
        assert saved is False  # the destroyed session itself is not stored again
        assert store.list_user_sessions("ada") == []
    finally:
        store.close()


ADAPTERS = [
    "adapters/flask-statekit/flask_statekit/sessions.py",
    "adapters/starlette-statekit/starlette_statekit/sessions.py",
]


@pytest.mark.parametrize("path", ADAPTERS)
def test_the_adapters_commit_through_the_public_method(path: str) -> None:
    """What a third-party adapter can do: no private member of the store."""
    tree = ast.parse((ROOT / path).read_text())
    private: list[Any] = [
        (node.lineno, node.attr) for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("_run", "_commit_steps")
    ]
    commits = [node.lineno for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr == "commit"]
    assert private == [] and commits, (private, commits)
