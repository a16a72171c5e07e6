"""Server-side sessions for asyncio apps: :class:`AsyncSessionStore`.

::

    store = AsyncSessionStore("redis://127.0.0.1:6379/0", secret_keys=["s3cret"])
    session = await store.open(request.cookies.get("session"))   # one Redis round trip
    session["cart"] = ["apple"]
    await store.save(session)                                     # changed keys only
    response.set_cookie("session", store.sign(session.sid), httponly=True, samesite="lax")

**One implementation.** The async store is :class:`~statekit.sessions.SessionStore`
with awaits: both run the same steps (:class:`statekit.sessions._StoreCore`: ids,
signing, codecs, timeouts, the per-key diff, following rotations, the carry-over)
and differ only in how an engine call is made. The Redis engine
(:class:`~statekit.sessions.redis.AsyncRedisEngine`) runs the same Lua scripts on
the same keys through redis-py's asyncio client, so a session saved by a sync
worker is opened by an async one and back, and concurrent saves of different keys
from either side all survive (the per-key merge is in the script). Everything in
the module docstring of :mod:`statekit.sessions` (concurrency, cookies, rotation,
outages, Cluster, the near cache with its version token) holds here too. The near
cache is the sync engine's own machinery (one invalidation listener thread per
store); a load served from it awaits nothing.

The session objects are the same :class:`~statekit.sessions.Session` dicts. Their
``rotate()``, ``incr()`` and ``destroy()`` shortcuts are sync-only and raise
``TypeError`` here: call ``await store.rotate(session)`` and so on.

**Engines.** ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``redis+cluster://`` and ``memory://`` (fakeredis's asyncio client on the very
in-process server the sync ``memory://`` engine uses). A third-party engine
registered for another scheme (entry point group ``statekit.sessions``) that
implements only the sync :class:`~statekit.sessions.protocol.SessionEngine` works
too: each of its calls runs in a worker thread (``asyncio.to_thread``), so it never
blocks the loop, at the cost of a thread hop per call. A native async engine
implements :class:`~statekit.sessions.protocol.AsyncSessionEngine` (pass it as
``engine=``). A carry-over's previous store (:mod:`statekit.sessions.carryover`) is
sync and is read in a worker thread the same way.

**Event loops.** The Redis engine keeps one client per running loop; close the
store on each loop that used it (``await store.aclose()``, or ``async with``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from ..backends import load_backend
from . import _T, ENGINES, Call, Committed, Session, SessionInfo, Steps, _StoreCore

__all__ = ["AsyncSessionStore"]


class AsyncSessionStore(_StoreCore):
    """Create, load, save, rotate and destroy server-side sessions from coroutines:
    the API of :class:`~statekit.sessions.SessionStore` (same arguments, same
    stored format), each Redis call awaited.

    :param engine: a ready :class:`~statekit.sessions.protocol.AsyncSessionEngine`,
        or a sync :class:`~statekit.sessions.protocol.SessionEngine` (its calls then
        run in worker threads).

    Concurrency: many tasks may use one store at once (the engine bounds the
    connections). Failures as in the sync store: ``BackendUnavailable`` when Redis
    cannot be reached, and nothing is half-written.
    """

    @functools.cached_property
    def threaded(self) -> bool:
        """Whether the engine is sync (a third-party one): its calls then run in worker
        threads."""
        return not inspect.iscoroutinefunction(getattr(type(self.engine), "load", None))

    def _client_engine(self, client: Any, options: dict[str, Any]) -> Any:
        from .redis import AsyncRedisEngine

        return AsyncRedisEngine(client, self.key_prefix, counters=self.counters, **options)

    def _url_engine(self, url: str, scheme: str, options: dict[str, Any]) -> Any:
        if scheme in ENGINES:
            from .redis import AsyncRedisEngine

            cls: Any = AsyncRedisEngine
        else:
            cls = load_backend("sessions", scheme, ENGINES)
        return cls.from_url(url, key_prefix=self.key_prefix, counters=self.counters, **options)

    _awaits = True

    def _call(self, op: Call) -> Awaitable[Any]:
        """The awaitable of one call (the engine's own coroutine, awaited by
        :meth:`_drive` with no wrapper); blocking calls (a sync engine's, a previous
        store's) in a worker thread."""
        target, args, kwargs = op
        if not isinstance(target, str):
            return asyncio.to_thread(target, *args, **kwargs)
        if self.threaded:
            return asyncio.to_thread(getattr(self.engine, target), *args, **kwargs)
        return getattr(self.engine, target)(*args, **kwargs)  # type: ignore[no-any-return]

    def _run(self, steps: Steps[_T]) -> Coroutine[Any, Any, _T]:
        """Run *steps*, awaiting each engine call they ask for (the coroutine of
        :meth:`_drive`, awaited by the caller)."""
        return self._drive(steps)

    async def aclose(self) -> None:
        """Release the engine's connections on this event loop, and the
        :attr:`carry_over`'s old store (a sync client: closed in a worker thread)."""
        try:
            if self.threaded:
                await asyncio.to_thread(self.engine.close)
            else:
                await self.engine.aclose()
        finally:
            if self.carry_over is not None:
                await asyncio.to_thread(self.carry_over.close)

    async def __aenter__(self) -> AsyncSessionStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create(self, data: Mapping[str, Any] | None = None, *, user_id: str | None = None) -> Session:
        """:meth:`SessionStore.create <statekit.sessions.SessionStore.create>`, awaited."""
        return await self._run(self._create_steps(data, user_id))

    async def open(self, cookie: str | bytes | None, *, context: str | Callable[[], str] = "",
                   version_token: str | None = None) -> Session:
        """The session a request's cookie names, or a fresh one (see
        :meth:`SessionStore.open <statekit.sessions.SessionStore.open>`).

        :raises BackendUnavailable: Redis unreachable (with ``outage_policy="raise"``).
        """
        return await self._run(self._open_steps(cookie, context, version_token))

    async def load(self, sid: str, *, min_version: int = 0) -> Session | None:
        """Session *sid* (an unsigned id), or ``None`` if it does not exist, ended or
        was rotated away (:meth:`SessionStore.load <statekit.sessions.SessionStore.load>`)."""
        session, _ = await self._run(self._load_steps(sid, min_version))
        return session

    async def save(self, session: Session, *, force: bool = False) -> bool:
        """Store what this request changed, in one atomic write of the changed keys
        only; ``False`` if the session ended meanwhile (:meth:`SessionStore.save
        <statekit.sessions.SessionStore.save>`).

        :raises BackendUnavailable: Redis unreachable, or the reply lost (then
            calling ``save`` again is safe, as with the sync store).
        """
        return await self._run(self._save_steps(session, force))

    async def commit(self, session: Session, *, had_data: bool) -> Committed:
        """The save an adapter makes at the end of each request, a logout's destroy
        and carried session included (:meth:`SessionStore.commit
        <statekit.sessions.SessionStore.commit>`), awaited."""
        return await self._run(self._commit_steps(session, had_data))

    async def rotate(self, session: Session) -> Session:
        """Give *session* a new id (on login); the old one becomes a tombstone alias
        (:meth:`SessionStore.rotate <statekit.sessions.SessionStore.rotate>`)."""
        return await self._run(self._rotate_steps(session))

    async def destroy(self, session: Session) -> None:
        """Delete *session* now (logout); concurrent saves of it then return ``False``."""
        await self._run(self._destroy_session_steps(session))

    async def destroy_id(self, sid: str) -> None:
        """Delete the session with id *sid* (an unsigned id), if it exists."""
        await self._run(self._destroy_steps(self._handle(sid), None))

    async def incr(self, session: Session, key: str, amount: int = 1) -> int:
        """Atomically add *amount* to the integer under *key* and return it
        (:meth:`SessionStore.incr <statekit.sessions.SessionStore.incr>`)."""
        return await self._run(self._incr_steps(session, key, amount))

    async def list_user_sessions(self, user_id: str) -> list[SessionInfo]:
        """The live sessions of *user_id*, least recently seen first."""
        return await self._run(self._list_steps(user_id))

    async def revoke_user(self, user_id: str, except_session: Session | str | None = None) -> int:
        """Log *user_id* out everywhere but *except_session*; how many sessions were
        deleted (:meth:`SessionStore.revoke_user <statekit.sessions.SessionStore.revoke_user>`)."""
        return await self._run(self._revoke_steps(user_id, except_session))

    async def revoke_session(self, handle: str, user_id: str | None = None) -> bool:
        """Delete the session named by *handle* (from :meth:`list_user_sessions`) if
        *user_id* holds it; whether a session was deleted (:meth:`SessionStore.revoke_session
        <statekit.sessions.SessionStore.revoke_session>`: another user's session is left
        as it is, ``False``)::

            @app.post("/devices/sign-out")
            async def sign_out(request: Request):
                handle = (await request.form())["handle"]
                store = get_session_store(request)
                if not await store.revoke_session(handle, request.session["_user_id"]):
                    raise HTTPException(404)"""
        return await self._run(self._revoke_session_steps(handle, user_id))
