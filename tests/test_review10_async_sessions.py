"""Review (issues 17/18) of AsyncSessionStore's call path (8a32b10: the engine's own
coroutine awaited by ``_drive``, no wrapper): an engine's exception reaches the caller
with its type, a cancellation propagates (never an anonymous or fresh session), a call
that raises before returning an awaitable is handled like one that raises when awaited,
and the store keeps working afterwards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_broadcast_async import until  # tests/ is on sys.path

from statekit.errors import BackendUnavailable
from statekit.sessions.aio import AsyncSessionStore

pytestmark = pytest.mark.redis


class _Faulty:
    """The store's real engine, with one method made to hang, raise when awaited, or
    raise when called (before any awaitable exists)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.mode = ""
        self.started = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "raise-on-call":
            raise BackendUnavailable("refused before an awaitable")
        return self._load(*args, **kwargs)

    async def _load(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "hang":
            self.started.set()
            await asyncio.Event().wait()
        if self.mode == "raise":
            raise BackendUnavailable("refused when awaited")
        return await self._engine.load(*args, **kwargs)


def test_engine_errors_and_cancellation_reach_the_caller(redis_url: str) -> None:
    async def body() -> list[str]:
        store = AsyncSessionStore(redis_url, secret_keys=["k"], key_prefix="review10-async")
        faulty = _Faulty(store.engine)
        try:
            session = await store.create({"n": 1})
            cookie = store.sign(session.sid)
            store.engine = faulty
            assert not store.threaded  # the engine's coroutines are awaited directly
            seen = []
            for mode in ("raise", "raise-on-call"):
                faulty.mode = mode
                with pytest.raises(BackendUnavailable) as info:
                    await store.open(cookie)
                seen.append(str(info.value))
            faulty.mode = "hang"
            task = asyncio.ensure_future(store.open(cookie))
            await until(faulty.started.is_set, "the engine's load to hang")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            seen.append("cancelled" if task.cancelled() else "not cancelled")
            faulty.mode = ""
            again = await store.open(cookie)
            seen.append(f"n={again['n']} new={again.new}")
            return seen
        finally:
            store.engine = faulty._engine
            await store.aclose()

    seen = asyncio.run(body())
    assert seen == ["refused when awaited", "refused before an awaitable", "cancelled", "n=1 new=False"]


def test_anonymous_policy_still_turns_an_outage_into_an_unavailable_session(redis_url: str) -> None:
    async def body() -> tuple[bool, bool]:
        store = AsyncSessionStore(redis_url, secret_keys=["k"], key_prefix="review10-async",
                                  outage_policy="anonymous")
        faulty = _Faulty(store.engine)
        try:
            cookie = store.sign((await store.create({"n": 1})).sid)
            store.engine = faulty
            faulty.mode = "raise-on-call"
            session = await store.open(cookie)
            return session.unavailable, session.new
        finally:
            store.engine = faulty._engine
            await store.aclose()

    assert asyncio.run(body()) == (True, False)
