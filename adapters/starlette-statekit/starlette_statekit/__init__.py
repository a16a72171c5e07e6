"""Starlette and FastAPI adapter for statekit.

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from starlette_statekit import StateKit, cache, shared
    from statekit import AsyncCache

    app = FastAPI()
    StateKit(app)          # STATEKIT_REDIS_URL, STATEKIT_BLOBS_URL, ... from the environment

    @app.get("/report")
    async def report(c: Annotated[AsyncCache, Depends(cache)],
                     users: Annotated[int, Depends(shared("users_count", 0))]):
        return {"report": await c.get_or_set("report", build_report, ttl=60), "users": users}

In plain Starlette, reach the same objects from the request: ``get_state(request).cache``,
``blob_store(request)``, ``shared_values(request)["users_count"]``. The reference is
``docs/starlette.md``.

``StateKit(app, **options)`` (or ``StateKit()`` then ``init_app(app)``) wires, for each
capability that is enabled:

* **sessions**: :class:`starlette_statekit.sessions.SessionMiddleware`, server-side
  ``request.session`` in Redis (see that module);
* **cache**: a :class:`statekit.AsyncCache` (``Depends(cache)``);
* **blobs**: a :class:`statekit.AsyncBlobStore` (``Depends(blobs)``, and the helpers of
  :mod:`starlette_statekit.uploads`);
* **broadcast**: a :class:`statekit.broadcast.SharedValues` (``Depends(shared("name"))``);
  with ``broadcaster=`` an :class:`~statekit.broadcast.aio.AsyncBroadcaster` the app's
  lifespan runs it (the lease keeps each job to one computation per interval however
  many workers run it);
* **lifecycle**: :class:`statekit.asgi.LifecycleMiddleware`, outermost: ``/healthz``,
  ``/readyz`` and the drain on SIGTERM (readiness 503, ``Connection: close``,
  in-flight requests finish) before anything else runs, under ``statekit serve`` and
  under plain ``uvicorn app:app`` alike (there the drain lasts
  ``STATEKIT_PRE_STOP_DELAY`` seconds, 2, before uvicorn stops accepting); as the
  lifespan starts it runs the readiness checks once, so the first probe finds their
  clients built.

and a lifespan (wrapped around the app's own) that loads the shared values named in
``STATEKIT_BROADCAST_DEFAULTS`` without blocking the loop, starts the broadcaster, and
on shutdown stops it (releasing its leases) and gives back the connections and
threads of the cache and blob store. Apart from the readiness checks' first run,
nothing connects before the first use, so an app served without its lifespan
(``httpx.ASGITransport`` in tests) works too, but its broadcaster does not run.
Starlette runs the lifespan of the outermost app only: for a sub-app
(``app.mount("/api", sub)``) set up with ``StateKit(sub)``, enter
:func:`mounted_lifespan` in the parent's lifespan (``async with mounted_lifespan(sub)
as state: yield state``): the sub-app's whole lifespan, readiness warm-up and plain
uvicorn's drain on SIGTERM included.

**Settings.** Each ``STATEKIT_*`` setting comes from, in order: a keyword of
``StateKit`` (``redis_url=`` sets ``STATEKIT_REDIS_URL``), the *config* mapping (a
dict, or Starlette's ``Config``), then the environment: the names and meanings of
``docs/settings.md``, as for the Flask and Django adapters. ``StateKit`` raises
:class:`~statekit.errors.ConfigError` at start-up when an enabled capability cannot
work (no Redis URL, blobs switched on by name with ``STATEKIT_BLOBS_ENABLED=1`` but no
``STATEKIT_BLOBS_URL``, a missing extra); switch off what you do not use with
``STATEKIT_<FEATURE>_ENABLED=0`` (``sessions_enabled=False``). Unset, blobs are on
only when a store is configured. ``STATEKIT_SESSION_COOKIE_SECURE`` marks the session
cookie ``Secure`` as in the Flask and Django adapters, but is off when unset (as in
Starlette's own ``SessionMiddleware``); an ``https_only`` in *session_options* wins
over it.

**Outages.** A :class:`~statekit.errors.BackendUnavailable` raised by a handler is
answered ``503`` with a generic page and ``Retry-After`` (nothing about the backend:
that goes to the ``statekit.outage`` log, once per outage); a WebSocket is closed
with 1013, "try again later".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, Response
from starlette.websockets import WebSocket, WebSocketState

from statekit.broadcast import SharedValue, SharedValues
from statekit.config import Settings, flag, number
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import Lifecycle, check_extras, outage_name, outages

__all__ = ["FEATURES", "UNAVAILABLE_PAGE", "StateKit", "StateKitState", "blob_store", "blobs", "cache",
           "get_state", "mounted_lifespan", "shared", "shared_value", "shared_values",
           "unavailable_response"]

#: capabilities, in the order they are wired (the last added middleware is outermost)
FEATURES = ("cache", "sessions", "blobs", "broadcast", "lifecycle")

#: capabilities that need a Redis URL -> the :class:`Settings` field that holds it
_REDIS_FEATURES = {"cache": "cache_url", "sessions": "session_url", "broadcast": "broadcast_url"}

#: the body of every 503 statekit answers for an outage: nothing about the backend
UNAVAILABLE_PAGE = (
    "<!doctype html><title>503 Service Unavailable</title><h1>Service Unavailable</h1>"
    "<p>This service is temporarily unavailable. Please try again in a few seconds.</p>"
)

#: Lifecycle keyword -> (setting, converter)
_LIFECYCLE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "health_path": ("STATEKIT_HEALTH_PATH", str),
    "ready_path": ("STATEKIT_READY_PATH", str),
    "mode": ("STATEKIT_DRAIN_MODE", str),
    "budget": ("STATEKIT_READY_BUDGET", lambda v: number(v, "STATEKIT_READY_BUDGET")),
    "retry_after": ("STATEKIT_RETRY_AFTER", lambda v: int(number(v, "STATEKIT_RETRY_AFTER"))),
}


class StateKitState:
    """What the adapter keeps per app, at ``app.state.statekit``: :attr:`settings`,
    :attr:`features` (enabled), and one attribute per enabled capability (``cache``,
    ``blobs``, ``broadcast``, ``broadcaster``, ``lifecycle``). Reading one that is
    not enabled raises ``AttributeError`` naming what is."""

    def __init__(self, settings: Settings, get: Callable[..., Any]) -> None:
        self.settings = settings
        #: reads a ``STATEKIT_*`` setting (keyword, config, then environment)
        self.get = get
        self.features: list[str] = []
        #: session stores the session middleware opened (from a URL): closed by shutdown
        self.session_stores: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"statekit feature {name!r} is not enabled for this app "
            f"(enabled: {', '.join(self.features) or 'none'})"
        )

    async def startup(self) -> None:
        """Load the shared values with a default (in worker threads) and start the
        broadcaster, if any. Run by the lifespan."""
        values: SharedValues | None = self.__dict__.get("broadcast")
        if values is not None:
            for name in self.__dict__.get("preload", ()):
                await values.value(name).aget()
        broadcaster = self.__dict__.get("broadcaster")
        if broadcaster is not None:
            broadcaster.start()

    async def shutdown(self) -> None:
        """Stop the broadcaster (its leases released) and close the cache, the session
        store the session middleware opened (and its carry-over's old store) and blob
        store (a closed blob store is replaced by a new one, unopened, so a later
        lifespan of the same app, as in tests, finds one). Run by the lifespan; each
        step runs even if one before it raised (raised once all ran)."""
        async with contextlib.AsyncExitStack() as steps:  # run last-pushed first
            for sessions in self.session_stores:  # kept: the middleware holds them for a later lifespan
                steps.push_async_callback(sessions.aclose)
            store = self.__dict__.get("blobs")
            if store is not None:
                self.blobs = self.open_blobs()
                steps.push_async_callback(store.aclose)
            cache = self.__dict__.get("cache")
            if cache is not None:
                steps.push_async_callback(cache.aclose)
            broadcaster = self.__dict__.get("broadcaster")
            if broadcaster is not None:
                steps.push_async_callback(broadcaster.stop)


class StateKit:
    """The Starlette/FastAPI integration (see the module docstring).

    :param app: the app (``Starlette`` or ``FastAPI``), or ``None`` and :meth:`init_app`.
    :param config: a mapping (or Starlette's ``Config``) read for ``STATEKIT_*``
        settings before the environment.
    :param broadcaster: an :class:`~statekit.broadcast.aio.AsyncBroadcaster` the
        lifespan starts and stops (``None``: publish elsewhere, e.g. ``statekit serve
        --broadcaster``).
    :param session_options: keywords for the session middleware.
    :param cache_options: keywords for :class:`statekit.AsyncCache`.
    :param options: settings by their lower-case name without ``STATEKIT_``
        (``redis_url="redis://..."``, ``sessions_enabled=False``).

    Keeps no reference to an app: one object can set up several.
    """

    def __init__(
        self,
        app: Any = None,
        *,
        config: Any = None,
        broadcaster: Any = None,
        session_options: Mapping[str, Any] | None = None,
        cache_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.config: Any = config
        self.broadcaster = broadcaster
        self.session_options = dict(session_options or {})
        self.cache_options = dict(cache_options or {})
        self.options = {f"STATEKIT_{k.upper()}": v for k, v in options.items()}
        if app is not None:
            self.init_app(app)

    def _get(self, key: str, default: Any = None) -> Any:
        if key in self.options:
            return self.options[key]
        config = self.config
        if config is not None:  # a mapping, or Starlette's Config (its get takes default=)
            value = config.get(key) if isinstance(config, Mapping) else config.get(key, default=None)
            if value is not None:
                return value
        return os.environ.get(key, default)

    def settings(self) -> Settings:
        """The :class:`~statekit.config.Settings` these options, the config and the
        environment give."""
        names = ("STATEKIT_REDIS_URL", "STATEKIT_CACHE_URL", "STATEKIT_SESSION_URL", "STATEKIT_BROADCAST_URL",
                 "STATEKIT_BLOBS_URL", "STATEKIT_SECRET_KEYS", "STATEKIT_KEY_PREFIX")
        env: dict[str, str] = {}
        for name in names:
            value = self._get(name)
            if isinstance(value, (list, tuple)):
                value = ",".join(value)
            if value not in (None, ""):
                env[name] = str(value)
        return Settings.from_env(env)

    def init_app(self, app: Any) -> None:
        """Wire the enabled capabilities into *app* (see the module docstring).

        :raises ConfigError: already set up, or an enabled capability cannot work.
        """
        if getattr(app.state, "statekit", None) is not None:
            raise ConfigError("StateKit is already initialised for this app")
        state = StateKitState(self.settings(), self._get)
        enabled = [f for f in FEATURES
                   if flag(self._get(name := f"STATEKIT_{f.upper()}_ENABLED", True), name, default=True)]
        self._check_start(state.settings, enabled, self._get("STATEKIT_BLOBS_ENABLED") not in (None, ""))
        if ("sessions" in enabled and not state.settings.secret_keys
                and not {"secret_key", "store"} & set(self.session_options)):
            raise ConfigError("StateKit: sessions need signing keys: set STATEKIT_SECRET_KEYS (or pass "
                              "secret_keys=), or switch them off: STATEKIT_SESSIONS_ENABLED=0")
        for feature in enabled:
            getattr(self, f"_init_{feature}")(app, state)
            state.features.append(feature)
        app.state.statekit = state
        app.add_exception_handler(BackendUnavailable, _on_backend_unavailable)
        _wrap_lifespan(app, state)

    @staticmethod
    def _check_start(settings: Settings, enabled: list[str], blobs_named: bool) -> None:
        """Raise :class:`~statekit.errors.ConfigError` for an enabled capability that
        cannot work. *blobs_named*: ``STATEKIT_BLOBS_ENABLED`` is set, so blobs on need
        a store (unset, they are on only when one is configured)."""
        missing = [f for f in enabled if f in _REDIS_FEATURES and not getattr(settings, _REDIS_FEATURES[f])]
        if missing:
            raise ConfigError(
                f"StateKit: {', '.join(missing)} enabled but no Redis URL is configured: set "
                "STATEKIT_REDIS_URL, or switch off what you do not use: "
                + ", ".join(f"STATEKIT_{f.upper()}_ENABLED=0" for f in missing)
            )
        for url in {getattr(settings, _REDIS_FEATURES[f]) for f in enabled if f in _REDIS_FEATURES}:
            check_extras(url)
        if "blobs" in enabled and blobs_named and not settings.blobs_url:
            from statekit.blobs import no_blob_store

            raise no_blob_store("STATEKIT_BLOBS_ENABLED=0")
        if settings.blobs_url and "blobs" in enabled:
            check_extras(settings.blobs_url, blobs=True)

    # -- one method per capability -----------------------------------------------
    def _init_cache(self, app: Any, state: StateKitState) -> None:
        from statekit import AsyncCache  # type: ignore[attr-defined]

        options = {"prefix": state.settings.key_prefix, **self.cache_options}
        state.cache = AsyncCache(state.settings.cache_url, **options)  # type: ignore[attr-defined]

    def _init_sessions(self, app: Any, state: StateKitState) -> None:
        from .sessions import SessionMiddleware

        options = dict(self.session_options)
        if "https_only" not in options:  # the app's own https_only wins over the setting
            name = "STATEKIT_SESSION_COOKIE_SECURE"  # as the Flask and Django adapters read it
            options["https_only"] = flag(self._get(name), name, default=False)  # unset: off, as Starlette's
        app.add_middleware(SessionMiddleware, settings=state.settings, on_open=state.session_stores.append,
                           **options)

    def _init_blobs(self, app: Any, state: StateKitState) -> None:
        from .uploads import init_app

        init_app(app, state)

    def _init_broadcast(self, app: Any, state: StateKitState) -> None:
        defaults = self._get("STATEKIT_BROADCAST_DEFAULTS") or {}
        if not isinstance(defaults, Mapping):
            raise ConfigError("STATEKIT_BROADCAST_DEFAULTS must be a mapping of name -> default value")
        max_age = self._get("STATEKIT_BROADCAST_MAX_AGE")
        state.broadcast = SharedValues(  # type: ignore[attr-defined]
            state.settings.broadcast_url, key_prefix=state.settings.key_prefix, defaults=dict(defaults),
            max_age=(number(max_age, "STATEKIT_BROADCAST_MAX_AGE", positive=True)
                     if max_age not in (None, "") else None),
        )
        state.preload = list(defaults)  # type: ignore[attr-defined]
        state.broadcaster = self.broadcaster  # type: ignore[attr-defined]

    def _init_lifecycle(self, app: Any, state: StateKitState) -> None:
        from statekit.asgi import LifecycleMiddleware

        options: dict[str, Any] = {}
        for keyword, (name, convert) in _LIFECYCLE.items():
            raw = self._get(name)
            if raw not in (None, ""):
                try:
                    options[keyword] = convert(raw)
                except ConfigError:
                    raise
                except ValueError:
                    raise ConfigError(f"{name}={raw!r} is not valid") from None
        lifecycle = Lifecycle(state.settings, **options)
        state.lifecycle = lifecycle  # type: ignore[attr-defined]
        app.add_middleware(LifecycleMiddleware, lifecycle=lifecycle)


def _wrap_lifespan(app: Any, state: StateKitState) -> None:
    """Run :meth:`StateKitState.startup` before the app's own lifespan and
    :meth:`~StateKitState.shutdown` after it."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        await state.startup()
        try:
            async with inner(app_) as value:
                yield value
        finally:
            await state.shutdown()

    app.router.lifespan_context = lifespan


@contextlib.asynccontextmanager
async def mounted_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run the lifespan of *app*, a sub-app mounted in another (``app.mount("/api",
    sub)``), as a server runs the outermost app's: Starlette runs that one only. Enter
    it in the parent's lifespan; it yields the sub-app's lifespan state (yield it on
    for the requests to see it)::

        @contextlib.asynccontextmanager
        async def lifespan(parent):
            async with mounted_lifespan(sub) as state:
                yield state

    The whole lifespan runs, through the sub-app's middlewares: with ``StateKit(sub)``,
    the readiness checks' first run and plain uvicorn's drain on SIGTERM
    (:class:`statekit.asgi.LifecycleMiddleware`), the shared values' preload and the
    broadcaster (:meth:`StateKitState.startup`, :meth:`~StateKitState.shutdown`), and
    the sub-app's own lifespan. A startup or shutdown that fails raises its error here.
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    running = asyncio.ensure_future(app(scope, to_app.get, from_app.put))

    async def step(name: str) -> None:
        await to_app.put({"type": f"lifespan.{name}"})
        answer = asyncio.ensure_future(from_app.get())
        await asyncio.wait((answer, running), return_when=asyncio.FIRST_COMPLETED)
        if answer.done() and answer.result()["type"] == f"lifespan.{name}.complete":
            return
        answer.cancel()
        # failed (Starlette raises its error right after saying so), or returned unanswered
        await asyncio.wait((running,), timeout=10)
        if running.done():
            running.result()  # the app's error, raised
        message = answer.result().get("message", "") if answer.done() and not answer.cancelled() else ""
        raise RuntimeError(f"the mounted app's lifespan {name} failed {message}".rstrip())

    try:
        await step("startup")
        try:
            yield state
        finally:
            await step("shutdown")
        await running
    finally:
        running.cancel()  # done by now, unless a step failed


def unavailable_response(retry_after: int = 5) -> Response:
    """The generic 503 (``Retry-After``, never cached)."""
    return HTMLResponse(UNAVAILABLE_PAGE, status_code=503,
                        headers={"Retry-After": str(retry_after), "Cache-Control": "no-store"})


async def _on_backend_unavailable(conn: HTTPConnection, error: Exception) -> Response | None:
    state = get_state(conn)
    outages.down(outage_name(error, state.settings), error)
    deniable = "websocket.http.response" in (conn.scope.get("extensions") or {})
    if isinstance(conn, WebSocket) and not (conn.application_state is WebSocketState.CONNECTING and deniable):
        # no HTTP answer on an accepted WebSocket (a protocol error), nor before the
        # accept without the server's denial-response extension: closed with "try
        # again later", as the session middleware does
        if conn.application_state is not WebSocketState.DISCONNECTED:
            await conn.close(code=1013, reason="try again later")
        return None
    return unavailable_response()


def get_state(where: HTTPConnection | Any) -> StateKitState:
    """The :class:`StateKitState` of an app, or of the app serving a request.

    :raises RuntimeError: ``StateKit`` was not set up for that app."""
    app = where.app if isinstance(where, HTTPConnection) else where
    state: StateKitState | None = getattr(app.state, "statekit", None)
    if state is None:
        raise RuntimeError("StateKit(app) has not been initialised for this app")
    return state


# -- dependencies: async, so FastAPI calls them on the loop (a plain def goes to its threadpool)
async def cache(request: HTTPConnection) -> Any:
    """The app's :class:`statekit.AsyncCache`: ``c: Annotated[AsyncCache, Depends(cache)]``
    (in plain Starlette: ``get_state(request).cache``)."""
    return get_state(request).cache


async def blobs(request: HTTPConnection) -> Any:
    """The app's :class:`statekit.AsyncBlobStore`: ``Depends(blobs)`` (in plain
    Starlette: :func:`blob_store`)."""
    return blob_store(request)


def blob_store(conn: HTTPConnection) -> Any:
    """The :class:`statekit.AsyncBlobStore` of the app serving *conn*.

    :raises ConfigError: no store configured (``STATEKIT_BLOBS_URL``)."""
    store = get_state(conn).blobs
    if store is None:
        raise ConfigError("no blob store: set STATEKIT_BLOBS_URL")
    return store


def shared_values(conn: HTTPConnection) -> SharedValues:
    """The app's :class:`~statekit.broadcast.SharedValues` (every shared value by
    name: ``shared_values(request)["users_count"]``, a memory read once loaded)."""
    values: SharedValues = get_state(conn).broadcast
    return values


def shared(name: str, default: Any = None) -> Callable[[HTTPConnection], Awaitable[Any]]:
    """A dependency giving the current value of the shared value *name* (a memory
    read; *default* while nothing was published; the first use in a process loads it
    in a worker thread): ``n: Annotated[int, Depends(shared("users_count", 0))]``.

    The same *name* and *default* give the same dependency, so a test overrides it as
    written in the route: ``app.dependency_overrides[shared("users_count", 0)] = lambda: 3``
    (an unhashable *default*, a list, gives a new one each time)."""
    try:
        return _shared(name, default)
    except TypeError:  # an unhashable default
        return _shared.__wrapped__(name, default)


@functools.lru_cache(maxsize=1024, typed=True)
def _shared(name: str, default: Any) -> Callable[[HTTPConnection], Awaitable[Any]]:
    async def dependency(request: HTTPConnection) -> Any:
        values = shared_values(request)
        await values.value(name).aget()
        return values.get(name, default)

    dependency.__name__ = f"shared_{name}"
    return dependency


def shared_value(name: str) -> Callable[[HTTPConnection], Awaitable[SharedValue[Any]]]:
    """A dependency giving the :class:`~statekit.broadcast.SharedValue` *name* itself
    (``.version``, ``.age``, ``.is_stale``, ``await .changed()``), loaded. The same
    *name* gives the same dependency (``app.dependency_overrides[shared_value(name)]``)."""
    return _shared_value(name)


@functools.lru_cache(maxsize=1024)
def _shared_value(name: str) -> Callable[[HTTPConnection], Awaitable[SharedValue[Any]]]:
    async def dependency(request: HTTPConnection) -> SharedValue[Any]:
        value = shared_values(request).value(name)
        await value.aget()
        return value

    dependency.__name__ = f"shared_value_{name}"
    return dependency
