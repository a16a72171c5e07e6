"""Django session engine on :class:`statekit.sessions.SessionStore`.

::

    SESSION_ENGINE = "django_statekit.sessions"
    MIDDLEWARE = ["django_statekit.middleware.SessionOutageMiddleware",   # first
                  "django.contrib.sessions.middleware.SessionMiddleware", ...]

The cookie value (Django's ``session_key``) is the statekit session id signed with
``STATEKIT_SECRET_KEYS`` (default: ``SECRET_KEY`` + ``SECRET_KEY_FALLBACKS``); a
tampered, truncated, foreign or oversized cookie gives a fresh session without any
Redis call. As Django's contract says, any string of 8 characters or more is accepted
as a ``session_key`` (``SessionStore("12345678").session_key`` keeps it); one that
does not verify names no session, like an unknown key in Django's own engines.

``cycle_key()`` (called by ``login()``) rotates the id atomically. The old id no
longer names a session (``exists()`` is false; a request that loads with it is
anonymous, as with Django's own engines: no session fixation); for
``STATEKIT_SESSION_ALIAS_WINDOW`` seconds it is a tombstone through which requests
that loaded the session before the login still save. Saves write only the keys that
changed, so concurrent requests of one session keep each other's
changes; ``request.session.incr(key)`` is an atomic counter. Every key a request read
is compared at its save, so a value changed in place (``session["cart"].append(x)``)
is kept whenever Django saves (another key set, or ``SESSION_SAVE_EVERY_REQUEST``),
as Django's own engines keep it.

Settings: ``SESSION_COOKIE_AGE`` is the idle timeout, counted from the last save as
in Django's own backends (``SessionMiddleware`` saves a modified session); with
``SESSION_SAVE_EVERY_REQUEST`` it slides with every request. ``STATEKIT_SESSION_REFRESH_INTERVAL``
(60 s) bounds how often a request that does not save refreshes the TTL.

**Cookie refresh.** ``SessionMiddleware`` sends the cookie after each save it makes
(a modified session, or every request with ``SESSION_SAVE_EVERY_REQUEST``), so every
such save writes to Redis (one script, as the user asked for a save): the write learns
whether a login in a parallel request rotated the session meanwhile, and then
:class:`~django_statekit.middleware.SessionOutageMiddleware` (required for this) keeps
the pre-login cookie out of the response. A read-only request in flight at a login
therefore never logs the browser out. Without ``SESSION_SAVE_EVERY_REQUEST`` an
unmodified request sends no cookie and writes nothing but a TTL refresh at most once
per refresh interval, as before.

``STATEKIT_SESSION_ABSOLUTE_LIFETIME`` (30 days),
``STATEKIT_SESSION_ALIAS_WINDOW`` (10 s), ``STATEKIT_SESSION_CODEC`` (json),
``STATEKIT_SESSION_OUTAGE_POLICY`` (``raise`` or ``anonymous``),
``STATEKIT_SESSION_NEAR_CACHE`` (off; on or a number of sessions: per-process copies
kept coherent by Redis, see :mod:`statekit.sessions`), ``STATEKIT_SESSION_CARRY_OVER``
(off; the previous ``SESSION_ENGINE``: its users stay logged in after the switch, see
:mod:`django_statekit.carryover`). ``SESSION_SERIALIZER``
is not used: values go through statekit's codec, never pickle.

**Outages.** Loading or saving with Redis unreachable raises
:class:`~statekit.errors.BackendUnavailable` and sets ``request.session.outage``;
:class:`django_statekit.middleware.SessionOutageMiddleware` turns that into a 503 with
``Retry-After`` and no cookie change (but the new key of a login Redis had made, or of
a new session whose first save timed out: see the middleware). With the ``anonymous`` policy the session loads
as empty and read-only instead.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError

from statekit.config import flag, number, parse_url
from statekit.errors import BackendUnavailable, ConfigError
from statekit.lifecycle import outages
from statekit.sessions import Session, Steps, _StoreCore
from statekit.sessions import SessionStore as CoreStore
from statekit.sessions.aio import AsyncSessionStore

from .conf import get_number, get_setting, get_settings

__all__ = ["SessionStore", "get_async_core_store", "get_core_store", "version_token"]


#: the version token the current request's browser sent (set by the middleware)
version_token: ContextVar[str | None] = ContextVar("statekit_session_version_token", default=None)

_MIDDLEWARE = "django_statekit.middleware.SessionOutageMiddleware"


def get_core_store() -> CoreStore:
    """The process's :class:`statekit.sessions.SessionStore` for the current settings."""
    store: CoreStore = _core_store(CoreStore, *_store_settings())
    if store.near_cache and _MIDDLEWARE not in settings.MIDDLEWARE:
        raise ConfigError(f"STATEKIT_SESSION_NEAR_CACHE needs {_MIDDLEWARE!r} in MIDDLEWARE "
                          "(it carries the version token that orders a browser's reads after its writes)")
    return store


def get_async_core_store() -> AsyncSessionStore:
    """The process's :class:`statekit.sessions.aio.AsyncSessionStore` for the current
    settings (the async methods' store: the same Redis, keys and settings as
    :func:`get_core_store`, without the near cache: its loads always ask Redis, and
    its writes reach the sync side's near copies through Redis's invalidations)."""
    store: AsyncSessionStore = _core_store(AsyncSessionStore, *_store_settings(near=False))
    return store


def _store_settings(near: bool = True) -> tuple[Any, ...]:
    s = get_settings()
    return (
        s.require("session_url"), s.secret_keys, s.key_prefix,
        number(settings.SESSION_COOKIE_AGE, "SESSION_COOKIE_AGE"),
        get_number("STATEKIT_SESSION_ABSOLUTE_LIFETIME", 30 * 86400),
        get_number("STATEKIT_SESSION_REFRESH_INTERVAL", 60),
        get_number("STATEKIT_SESSION_ALIAS_WINDOW", 10),
        str(get_setting("STATEKIT_SESSION_CODEC", "json")),
        str(get_setting("STATEKIT_SESSION_OUTAGE_POLICY", "raise")),
        get_setting("STATEKIT_SESSION_NEAR_CACHE", 0) if near else 0,
        get_setting("STATEKIT_SESSION_CARRY_OVER", None),
        flag(get_setting("STATEKIT_SESSION_CARRY_OVER_DELETE", True), "STATEKIT_SESSION_CARRY_OVER_DELETE",
             default=True),
        str(get_setting("STATEKIT_SESSION_CARRY_OVER_CACHE_ALIAS", settings.SESSION_CACHE_ALIAS)),
        flag(get_setting("STATEKIT_SESSION_CARRY_OVER_PICKLE", False), "STATEKIT_SESSION_CARRY_OVER_PICKLE",
             default=False),
    )


def _outage_name() -> str:
    """The session store, as the ``statekit.outage`` log names it (no password)."""
    url = get_settings().session_url
    return f"session store {parse_url(url).redacted()}" if url else "session store"


_S = TypeVar("_S", bound=_StoreCore)


@functools.lru_cache(maxsize=16)
def _core_store(kind: type[_S], url: str, keys: tuple[str, ...], prefix: str, idle: float, absolute: float,
                refresh: float, alias: float, codec: str, policy: str, near: Any,
                carry: str | None, carry_delete: bool, carry_cache: str, carry_pickle: bool) -> _S:
    from django.contrib.auth import SESSION_KEY

    from .carryover import carry_over_for

    store = kind(url, secret_keys=keys, key_prefix=prefix, idle_timeout=idle,
                      absolute_lifetime=absolute, refresh_interval=refresh, alias_window=alias,
                      codec=codec, outage_policy=policy, user_key=SESSION_KEY, near_cache=near)
    store.carry_over = carry_over_for(carry, delete=carry_delete, cache_alias=carry_cache, lifetime=idle,
                                      plain_pickle=carry_pickle)
    return store


class SessionStore(SessionBase):
    """Django's session API on a Redis hash per session.

    Concurrency: no locks; each save writes only the keys this request changed or
    deleted (last writer wins per key). A save of a session that was flushed,
    revoked or expired meanwhile raises ``UpdateError`` (Django answers 400) instead
    of bringing it back.
    """

    _session_cache: dict[str, Any]

    def __init__(self, session_key: str | None = None) -> None:
        self._core: Session | None = None
        self.outage = False
        #: the key named a session rotated away moments ago (a login in a parallel
        #: request): the middleware keeps SessionMiddleware from deleting its cookie
        self.superseded = False
        #: the key, loaded, named nothing statekit knows: not one it signed, nor (with
        #: a carry-over) a session of the previous engine (another app's cookie of the
        #: same name): the middleware keeps SessionMiddleware from deleting it
        self.foreign_cookie = False
        super().__init__(session_key)

    @property
    def store(self) -> CoreStore:
        return get_core_store()

    @property
    def astore(self) -> AsyncSessionStore:
        """The async methods' store (:func:`get_async_core_store`)."""
        return get_async_core_store()

    def _get_new_session_key(self) -> str:
        return self.store.sign(self.store.new().sid)

    async def _aget_new_session_key(self) -> str:
        # a new random id, signed: no round trip to check it is unused (256 bits)
        return self._get_new_session_key()

    def _data(self) -> dict[str, Any]:
        """This request's session dict (loaded now if not yet)."""
        data: dict[str, Any] = self._get_session()  # type: ignore[attr-defined]
        return data

    async def _adata(self) -> dict[str, Any]:
        """:meth:`_data`, loading with :meth:`aload`."""
        data: dict[str, Any] = await self._aget_session()  # type: ignore[attr-defined]
        return data

    def _sid(self, session_key: str | None = None) -> str | None:
        return self.store.unsign(session_key or self.session_key)

    # Each operation is written once, as steps on a core store (statekit.sessions:
    # the engine calls they need are yielded); the sync method runs them on the
    # sync store, the async one awaits them on the async store. Neither hops threads.

    def load(self) -> dict[str, Any]:
        store = self.store
        return store._run(self._load_steps(store))

    async def aload(self) -> dict[str, Any]:
        """:meth:`load` natively async (no thread hop)."""
        store = self.astore
        return await store._run(self._load_steps(store))

    def _load_steps(self, store: _StoreCore) -> Steps[dict[str, Any]]:
        # Django's contract: any key of 8 characters or more is a valid session_key
        # (SessionBase._validate_session_key); one that does not verify names no
        # session, found without a Redis call, and is dropped as Django's engines drop
        # a key they do not know
        if not self.session_key or (store.carry_over is None
                                    and store.unsign(self.session_key, context="django") is None):
            self.foreign_cookie = bool(self.session_key)
            self._session_key = None
            return {}
        try:
            # with a previous store, a key that is not statekit's is looked up there first
            core = yield from store._open_steps(self.session_key, "django", version_token.get())
        except BackendUnavailable as e:
            self.outage = True
            outages.down(_outage_name(), e)
            raise
        if outages.is_down() and not core.unavailable:  # the store answered
            outages.up(_outage_name())
        expiry = core.get("_session_expiry")
        # set_expiry(datetime) is absolute in Django; the stored idle timeout slides
        # with each TTL refresh, so that date is checked here, at load (Django's age
        # is in whole seconds, negative once the date has passed)
        if core.new or isinstance(expiry, str) and self.get_expiry_age(expiry=expiry) < 0:
            # missing, expired or revoked: a fresh session on its next save
            self.superseded, self.foreign_cookie = core.superseded, core.foreign_cookie
            self._session_key = None
            self._core = None
            return {}
        self._core = core
        if core.send_cookie:  # carried over from the previous store: send its new key
            self._session_key = store.sign(core.sid)
            self.modified = True
        return core

    def _synced(self, store: _StoreCore, data: dict[str, Any]) -> Session:
        """The core session holding this request's data *data* (Django's ``clear()``
        and ``update()`` may have replaced or changed the dict)."""
        core = self._core
        if core is None:
            core = self._core = store.new()
        if data is not core:
            dict.clear(core)
            for k, v in data.items():
                core[k] = v
            core.modified = True
            self._session_cache = core
        return core

    def exists(self, session_key: str) -> bool:
        store = self.store
        return store._run(self._exists_steps(store, session_key))

    async def aexists(self, session_key: str) -> bool:
        """:meth:`exists` natively async."""
        store = self.astore
        return await store._run(self._exists_steps(store, session_key))

    def _exists_steps(self, store: _StoreCore, session_key: str) -> Steps[bool]:
        sid = store.unsign(session_key) if session_key else None
        if sid is None:
            return False
        session, _ = yield from store._load_steps(sid, 0)
        return session is not None

    def create(self) -> None:
        """Store this session's data (empty if none) under a new key now."""
        store = self.store
        store._run(self._create_steps(store))

    async def acreate(self) -> None:
        """:meth:`create` natively async."""
        store = self.astore
        await store._run(self._create_steps(store))

    def _create_steps(self, store: _StoreCore) -> Steps[None]:
        data = self._get_session(no_load=True)  # type: ignore[attr-defined]  # no I/O: no_load
        self._core = None
        yield from self._save_steps(store, data)
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        """Store the changes. A new session is stored even when empty (Django's
        ``save()`` then ``exists()`` contract); an expiry already past (``set_expiry``
        with a date gone or a negative age) ends the session now, as in Django."""
        store = self.store
        store._run(self._save_steps(store, self._data()))

    async def asave(self, must_create: bool = False) -> None:
        """:meth:`save` natively async."""
        store = self.astore
        await store._run(self._save_steps(store, await self._adata()))

    def _save_steps(self, store: _StoreCore, data: dict[str, Any]) -> Steps[None]:
        core = self._synced(store, data)
        if core.unavailable:
            return
        # Django's engines store the whole dict at every save: a value changed in place
        # (``session["cart"].append(x)``) is kept whenever the session is saved (another
        # key set, or SESSION_SAVE_EVERY_REQUEST). So every key this request decoded is
        # compared with what it loaded; only those that differ are written, so a key
        # another request changed meanwhile is not put back
        core.modified = True
        expiry = self.get("_session_expiry")
        age = float(self.get_expiry_age()) if expiry else None
        core.idle_timeout = age
        try:
            if age is not None and age < 0:
                yield from store._destroy_session_steps(core)
                saved = True
            else:
                # SessionMiddleware sends the cookie after every save it makes (the
                # session modified, or SESSION_SAVE_EVERY_REQUEST): always write then, so
                # a request in flight at a login learns of the rotation (its write follows
                # the alias) and the middleware keeps the old cookie out of the response
                saved = yield from store._save_steps(core, True)
        except BackendUnavailable as e:
            self.outage = True
            outages.down(_outage_name(), e)
            raise
        if outages.is_down():
            outages.up(_outage_name())
        if not saved:
            raise UpdateError
        self._session_key = store.sign(core.sid)

    def delete(self, session_key: str | None = None) -> None:
        """Delete this session, or the one *session_key* names.

        :raises BackendUnavailable: the store is unreachable, or this session is the
            read-only one of the ``anonymous`` outage policy (it cannot be deleted).
        """
        store = self.store
        store._run(self._delete_steps(store, session_key))

    async def adelete(self, session_key: str | None = None) -> None:
        """:meth:`delete` natively async."""
        store = self.astore
        await store._run(self._delete_steps(store, session_key))

    def _delete_steps(self, store: _StoreCore, session_key: str | None) -> Steps[None]:
        if session_key is None and self._core is not None:
            if self._core.unavailable:
                raise BackendUnavailable("the session store is unavailable: cannot delete the session")
            yield from store._destroy_session_steps(self._core)
            return
        sid = store.unsign(session_key or self.session_key)
        if sid is not None:
            yield from store._destroy_steps(store._handle(sid), None)

    def clear(self) -> None:
        """Empty the session. Unlike Django's own ``clear()`` this loads it first, so
        the save empties the stored session under its id instead of starting a new
        one beside it (which would leave the old data, a login included, in place).

        :raises BackendUnavailable: the store is unreachable, or the session is the
            read-only one of the ``anonymous`` outage policy.
        """
        self._clear(self._data())

    def _clear(self, data: dict[str, Any]) -> None:
        if isinstance(data, Session) and data.unavailable:
            raise BackendUnavailable("the session store is unavailable: this session is read-only")
        data.clear()
        self.modified = True

    def flush(self) -> None:
        store = self.store
        self.clear()
        store._run(self._flush_steps(store))

    async def aflush(self) -> None:
        """:meth:`flush` natively async (``alogout()`` calls this); Django's own
        ``aflush`` would keep the destroyed session, so the next save failed."""
        store = self.astore
        self._clear(await self._adata())
        await store._run(self._flush_steps(store))

    def _flush_steps(self, store: _StoreCore) -> Steps[None]:
        yield from self._delete_steps(store, None)
        self._session_key = None
        self._core = None
        self._session_cache = {}

    def cycle_key(self) -> None:
        """Rotate the session id (``login()`` calls this): the data moves to a new id
        atomically; the old id no longer loads it (only requests that loaded it before
        still write through it, for ``STATEKIT_SESSION_ALIAS_WINDOW`` seconds)."""
        store = self.store
        store._run(self._cycle_steps(store, self._data()))

    async def acycle_key(self) -> None:
        """:meth:`cycle_key` natively async (``alogin()`` calls this): the same atomic
        rotation."""
        store = self.astore
        await store._run(self._cycle_steps(store, await self._adata()))

    def _cycle_steps(self, store: _StoreCore, data: dict[str, Any]) -> Steps[None]:
        core = self._synced(store, data)
        yield from store._rotate_steps(core)
        self.superseded = False  # a login: its key is sent whatever cookie the request had
        self._session_key = store.sign(core.sid)
        self.modified = True

    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add *amount* to the integer under *key* and return it."""
        store = self.store
        return store._run(self._incr_steps(store, self._data(), key, amount))

    async def aincr(self, key: str, amount: int = 1) -> int:
        """:meth:`incr` natively async."""
        store = self.astore
        return await store._run(self._incr_steps(store, await self._adata(), key, amount))

    def _incr_steps(self, store: _StoreCore, data: dict[str, Any], key: str, amount: int) -> Steps[int]:
        core = self._synced(store, data)
        was_new = core.new
        value = yield from store._incr_steps(core, key, amount)
        if was_new:  # stored just now: the middleware must send the cookie
            self._session_key = store.sign(core.sid)
            self.modified = True
        return value

    @classmethod
    def clear_expired(cls) -> None:
        """Redis expires sessions on its own: nothing to do."""

    @classmethod
    async def aclear_expired(cls) -> None:
        """Redis expires sessions on its own: nothing to do (no thread hop either)."""
