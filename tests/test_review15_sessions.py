"""Review 15 of sessions' loose ends (core), on real Redis servers.

* ``Session.maybe_stored`` was true after any failed first save of a new session,
  also when the create certainly never reached Redis (the connection refused): the
  adapters' 503 then carried a cookie naming a session that does not exist. Only a
  create sent without a reply (its outcome unknown) may be stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from statekit.embedded import RedisServer, free_port
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import wait_for
from statekit.sessions import SessionStore
from statekit.sessions.aio import AsyncSessionStore
from statekit.sessions.redis import _WRITE

pytestmark = pytest.mark.redis

#: no retries, and timeouts a healthy server answers within on a loaded machine (0.3 s
#: could fire on one); a paused server fails after them, a closed port at once
FAST = "?socket_timeout=2&socket_connect_timeout=2&retries=0"
_SID = "0000" + "A" * 43  # an id no session has


def _first_save_fails(store: SessionStore | AsyncSessionStore, fault: Callable[[], None],
                      warm: bool = False) -> bool:
    """A new session's first save, made after *fault* (*warm*: on a connection made
    before it): its ``maybe_stored`` once the save failed."""
    async def run(store: AsyncSessionStore) -> bool:
        if warm:
            await store.load(_SID)
        s = store.new()
        s["cart"] = "apple"
        fault()
        with pytest.raises(BackendUnavailable):
            await store.save(s)
        await store.engine.aclose()
        return s.maybe_stored and s.new

    if isinstance(store, AsyncSessionStore):
        return asyncio.run(run(store))
    if warm:
        store.load(_SID)
    s = store.new()
    s["cart"] = "apple"
    fault()
    with pytest.raises(BackendUnavailable):
        store.save(s)
    store.close()
    return s.maybe_stored and s.new


@pytest.mark.parametrize("store_class", [SessionStore, AsyncSessionStore])
def test_a_create_refused_before_sending_is_not_maybe_stored(store_class: type) -> None:
    """Nothing listens on the port: the create was never sent, so the session is
    certainly not stored and no cookie may name it."""
    store = store_class(f"redis://127.0.0.1:{free_port()}/0" + FAST, secret_keys=["k"])
    assert _first_save_fails(store, lambda: None) is False


@pytest.mark.parametrize("store_class", [SessionStore, AsyncSessionStore])
def test_a_create_sent_without_a_reply_is_maybe_stored(private_redis: RedisServer, store_class: type) -> None:
    """Redis paused (SIGSTOP) once the script is loaded: the create reached it and
    its reply timed out. It may be stored (and is, once Redis runs again), so the
    adapters' 503 sends its cookie."""
    server = private_redis
    store = store_class(server.url + FAST, secret_keys=["k"])
    with server.client() as r:
        r.script_load(_WRITE.source)  # else the create is an EVALSHA that runs nothing
    try:
        assert _first_save_fails(store, server.pause, warm=True) is True
    finally:
        server.resume()
    with server.client() as r:
        wait_for(lambda: len(r.keys("statekit:session:*")) == 1, timeout=30, what="the paused create to run")
