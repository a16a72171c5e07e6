"""Review 18 (h1), the Python a session request runs around its Redis calls: at
49db0e6 a Flask write request cost ~1.28M user-space instructions (valgrind, Redis
replies apart), at 03ae461 ~1.35M. The save's engine steps called helpers that had
nothing to do on the usual path: the index arguments of a session with no user
(``_index``), the refusal check of a reply that was no refusal (``_index_again``),
the Cluster-only index update on a standalone Redis (``_index_after``,
``_indexed_apart``); and ``Session.get`` tested membership through the subclass's
``__contains__`` (Flask's: a second Python call per get, marking the session
accessed, which its ``get`` had just done); the asyncio engine's save entered the
near cache's ``_changing`` block with no near cache (the sync engine skips it).
Each is a Python call (or several) per save or get;
behaviour is unchanged (the refusal, Cluster's index update and ``accessed`` are
tested where they happen: test_sessions_review, test_sessions_cluster,
test_flask_sessions).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from statekit.sessions import AsyncSessionStore, SessionStore

KEYS = ["review18-secret"]
#: helpers with nothing to do when a save is accepted on a standalone Redis
IDLE = {"_index_again", "_index_after", "_indexed_apart"}


@contextmanager
def calls_in(path_part: str) -> Iterator[list[str]]:
    """The names of the Python functions called, while the block runs, whose code
    lives in a file whose path holds *path_part*."""
    names: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and path_part in frame.f_code.co_filename:
            names.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        yield names
    finally:
        sys.setprofile(None)


def _loaded(store: SessionStore, user: str | None) -> Any:
    s = store.create({"n": 0}, user_id=user)
    loaded = store.load(s.sid)
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("user", [None, "alice"])
def test_a_plain_save_calls_no_idle_helper(redis_url: str, user: str | None) -> None:
    store = SessionStore(redis_url, secret_keys=KEYS, key_prefix="r18c")
    try:
        s = _loaded(store, user)
        s["n"] = 1
        with calls_in("statekit/sessions/redis.py") as names:
            assert store.save(s)
        assert "_write_call" in names  # (the profile sees the engine)
        assert not IDLE & set(names), names
        # no index arguments without a user; with one, the index is kept as before
        assert ("_index" in names) == (user is not None)
        again = store.load(s.sid)
        assert again is not None and again["n"] == 1 and again.version == 2
        if user is not None:
            assert [i.handle for i in store.list_user_sessions(user)] == [s.handle]
    finally:
        store.close()


@pytest.mark.parametrize("near", [0, 1000])
def test_a_plain_async_save_calls_no_idle_helper(redis_url: str, near: int) -> None:
    """Nor, without a near cache, the near cache's ``_changing`` block around the
    script (a context manager's generator: as the sync engine, which never had it)."""
    async def main() -> list[str]:
        async with AsyncSessionStore(redis_url, secret_keys=KEYS, key_prefix="r18c",
                                     near_cache=near) as store:
            s = await store.create({"n": 0}, user_id="bob")
            loaded = await store.load(s.sid)
            assert loaded is not None
            loaded["n"] = 1
            with calls_in("statekit/sessions/redis.py") as names:
                assert await store.save(loaded)
            again = await store.load(s.sid)
            assert again is not None and again["n"] == 1
            return names

    names = asyncio.run(main())
    assert "_write_call" in names
    assert "_index_again" not in names, names
    assert ("_changing" in names) == bool(near), names


def test_a_refused_save_still_follows_the_stored_user(redis_url: str) -> None:
    """The refusal path the callers now check first: another request changed the
    stored user since this one loaded the session; the save indexes it under that
    user (the engine's ``_index_again``), as before."""
    store = SessionStore(redis_url, secret_keys=KEYS, key_prefix="r18c")
    r = redis.Redis.from_url(redis_url)
    try:
        s = _loaded(store, "alice")
        r.hset(store.engine.key(s.handle), "m:u", "carol")  # a login elsewhere
        s["n"] = 2
        with calls_in("statekit/sessions/redis.py") as names:
            assert store.save(s)
        assert "_index_again" in names
        assert [i.handle for i in store.list_user_sessions("carol")] == [s.handle]
    finally:
        store.close()
        r.close()


def test_a_flask_session_get_is_one_membership_test(redis_url: str) -> None:
    from flask import Flask, session

    from flask_statekit import StateKit

    app = Flask(__name__)
    app.config.update(SECRET_KEY="review18", STATEKIT_SESSION_URL=redis_url, STATEKIT_CACHE_ENABLED=False,
                      STATEKIT_BLOBS_ENABLED=False, STATEKIT_BROADCAST_ENABLED=False,
                      STATEKIT_LIFECYCLE_ENABLED=False, STATEKIT_SESSION_COOKIE_SECURE=False)
    StateKit(app)
    seen: dict[str, Any] = {}

    @app.post("/start")
    def start() -> str:
        session["n"] = 5
        return "ok"

    @app.get("/read")
    def read() -> str:
        s: Any = session
        with calls_in("sessions") as names:
            seen["value"], seen["missing"] = s.get("n"), s.get("absent", "default")
        seen["names"], seen["accessed"] = names, s.accessed
        return "ok"

    client = app.test_client()
    assert client.post("/start").status_code == 200
    response = client.get("/read")
    assert response.status_code == 200
    assert seen["value"] == 5 and seen["missing"] == "default"
    assert seen["accessed"] and response.headers.get("Vary") == "Cookie"
    assert "__contains__" not in seen["names"], seen["names"]
    assert seen["names"].count("get") == 4  # FlaskSession.get and Session.get, twice
