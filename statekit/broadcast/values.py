"""The worker side of broadcast: :class:`SharedValue` (one value, kept current in
this process) and :class:`SharedValues` (every value by name, for templates).

Each value registers with its backend's :class:`~statekit.broadcast.hub.Hub` on
first use; the hub's subscriber applies updates, readers never wait for it. A
forked child starts with every value unloaded (``os.register_at_fork``) and its own
hub.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..config import number
from ..errors import BackendUnavailable, InvalidKey
from ..serializers import Serializer, get_serializer
from .hub import Hub, get_hub, tick
from .protocol import Record, check_name, open_backend

__all__ = ["SharedValue", "SharedValues"]

T = TypeVar("T")

log = logging.getLogger("statekit.broadcast")

_UNLOADED: Any = object()

_values: weakref.WeakSet[SharedValue[Any]] = weakref.WeakSet()


def _max_age(max_age: float | None) -> float | None:
    """*max_age* of a shared value: ``None`` (never stale) or a positive, finite number
    of seconds (``inf`` too is refused, as ``STATEKIT_BROADCAST_MAX_AGE=inf`` is).

    :raises ConfigError: it is not."""
    return None if max_age is None else number(max_age, "max_age", positive=True, text=False, unit="seconds")


class SharedValue(Generic[T]):
    """A value every worker process sees, kept current by one subscriber thread.

    :param name: the value's name (``Broadcaster.every(..., name=)`` publishes it).
    :param default: returned until anything was ever published.
    :param max_age: seconds after which :attr:`is_stale` turns true.
    :param url: the backend's URL (any Redis URL, ``memory://name``, or a scheme a
        package registers); ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL`` by default.
    :param client: a ready redis-py client instead of a URL.
    :param serializer: codec of the published values (JSON by default); must match
        the broadcaster's.

    :meth:`get` is a local attribute read once loaded. The first call (or the first
    use of any property) reads the retained value from the backend, so a worker that starts
    after the last publish shows it at once, and registers the value with the
    process's subscriber. Updates are applied by that thread; readers never block on
    it. If the backend is down on first use, :meth:`get` returns *default* (after
    the client's timeout) and the subscriber fills the value in when it is back.
    Thread-safe; after ``fork`` the child starts with an unloaded value and its own
    subscriber.

    **From async code** (FastAPI, Starlette, Django async views) use it as is:
    :meth:`get` is a plain memory read once loaded. Only the first use reads from
    the backend (a blocking call of up to the client's timeout), so load it before
    serving with ``await value.aget()`` (the read runs in a worker thread), or let
    ``starlette_statekit`` do it in the app's lifespan. ``await value.changed()``
    waits for the next update. The subscriber stays a thread, not a task: updates
    arrive while the event loop is busy, and a read never awaits anything.
    """

    __slots__ = (
        "__weakref__", "_backend", "_callbacks", "_epoch", "_hub", "_hub_key", "_prefix", "_rejected",
        "_serializer", "_since", "_updated_at", "_value", "_version", "_waiters", "default", "max_age",
        "name",
    )

    def __init__(
        self,
        name: str,
        default: T | None = None,
        *,
        max_age: float | None = None,
        url: str | None = None,
        client: Any = None,
        serializer: str | Serializer | None = None,
        key_prefix: str | None = None,
    ) -> None:
        self.name = check_name(name)
        self.default = default
        self.max_age = _max_age(max_age)
        self._hub_key, self._backend, self._prefix = open_backend(url, client, key_prefix)
        self._serializer = get_serializer(serializer)
        self._callbacks: list[Callable[[T, int], None]] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._reset()
        _values.add(self)

    def _reset(self) -> None:
        self._hub: Hub | None = None
        self._epoch = b""
        self._version = 0
        self._since = 0  # the tick() when the copy shown was applied
        self._rejected: tuple[bytes, int] | None = None  # the last (epoch, version) not decodable
        self._updated_at: float | None = None
        self._value = _UNLOADED

    def get(self) -> T:
        """The current value (the local copy; *default* if nothing was published)."""
        value = self._value
        if value is _UNLOADED:
            return self._load()
        return value  # type: ignore[no-any-return]

    def _load(self) -> T:
        hub = get_hub(self._hub_key, self._prefix, self._backend)
        self._hub = hub
        hub.register(self)
        since = tick()
        try:
            record = hub.read([self.name]).get(self.name)
        except BackendUnavailable as e:
            log.warning("shared value %r: retained value not readable (%s); using default", self.name, e)
            hub.counters.incr("errors")
            record = None
        with hub.lock:
            if record is not None and self._offer(record, since):
                hub.gauge(self.name, record)
            if self._value is _UNLOADED:
                self._value = self.default
        return self._value  # type: ignore[no-any-return]

    def _shows(self, epoch: bytes, version: int) -> bool:
        """Whether the copy is current with this epoch and version: it shows it, or
        it could not decode it (fetched again, it would be refused again)."""
        return (self._epoch == epoch and self._version == version) or self._rejected == (epoch, version)

    def _offer(self, record: Record, since: int = 0) -> bool:
        """Apply *record* if it is newer in the same epoch; a published message
        (*since* 0) also from another epoch; a retained one (read from the backend
        in a read that started at :func:`~statekit.broadcast.hub.tick` *since*)
        whatever it is, if that read started after the copy shown was applied (see
        :meth:`Hub.offer`). The caller holds the hub lock."""
        if record.epoch == self._epoch:
            if record.version == self._version or (record.version < self._version and since <= self._since):
                return False
        elif since and since <= self._since:  # another epoch, read before the copy shown came
            return False
        if self._rejected == (record.epoch, record.version):
            return False
        try:
            value = self._serializer.loads(record.payload)
        except Exception as e:  # SerializationError, or a bad custom codec
            # another code version's publish: keep the last good value, say it once
            self._rejected = (record.epoch, record.version)
            log.warning("shared value %r: version %d not decodable: %s", self.name, record.version, e)
            return False
        self._epoch = record.epoch
        self._version = record.version
        self._since = tick()
        self._updated_at = record.updated_ms / 1000.0
        self._value = value
        return True

    def on_change(self, callback: Callable[[T, int], None]) -> Callable[[T, int], None]:
        """Call ``callback(value, version)`` after each update received from now on.

        Updates that arrive while the subscriber reconnects are coalesced: the
        callback then sees the latest version only. Callbacks run in the subscriber
        thread, one after another, and must be quick (they delay every other
        value's updates); an exception is logged and ignored. Usable as a
        decorator. A callback registered before a fork also runs in the child, for
        the child's own updates.
        """
        self._callbacks.append(callback)
        self.get()
        return callback

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self._value, self._version)
            except Exception:
                log.exception("shared value %r: on_change callback failed", self.name)
        for loop, future in list(self._waiters):
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass

    async def aget(self) -> T:
        """:meth:`get` for async code: the first call reads the retained value in a
        worker thread (the event loop never waits on the backend); later calls are
        the same memory read as :meth:`get`."""
        value = self._value
        if value is _UNLOADED:
            return await asyncio.to_thread(self._load)
        return value  # type: ignore[no-any-return]

    async def changed(self, timeout: float | None = None) -> T:
        """Wait for the next update of this value received after the call, and
        return the new value (what :meth:`get` then returns).

        Updates are applied by the subscriber thread, which wakes every waiting
        coroutine on its own event loop; several updates in a row may wake a waiter
        once, with the latest value. Loads the value first if needed (in a worker
        thread): that load is the starting point, so a publish it already shows is
        returned by :meth:`get`, not waited for.

        :param timeout: seconds to wait at most (``None``: no limit).
        :raises asyncio.TimeoutError: nothing was published within *timeout*.

        Cancelled as an update wakes it, it raises the cancellation (Python 3.11's
        ``wait_for`` returned the value then, as if never cancelled).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        self._waiters.append(waiter)
        try:
            await self.aget()  # registered with the hub: the subscriber delivers to it
            if timeout is None:
                await future
            else:
                from ..redis.aio import within

                await within(future, timeout)
        finally:
            self._waiters.remove(waiter)
        return self._value  # type: ignore[no-any-return]

    def refresh(self) -> T:
        """Read the retained value from the backend now (normally never needed).

        :raises BackendUnavailable: the backend did not answer.
        """
        if self._value is _UNLOADED:
            return self._load()
        hub = self._hub
        assert hub is not None
        since = tick()
        record = hub.read([self.name]).get(self.name)
        if record is not None:
            with hub.lock:
                self._offer(record, since)
        return self._value  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        """Version of the local copy: 0 before anything was published, then +1 per
        publish (it starts again at 1 if Redis lost its data, and goes back with
        Redis if Redis comes back from an older snapshot)."""
        self.get()
        return self._version

    @property
    def updated_at(self) -> float | None:
        """Unix time of the publish the local copy comes from (``None``: default)."""
        self.get()
        return self._updated_at

    @property
    def age(self) -> float | None:
        """Seconds since that publish (``None`` while showing the default)."""
        updated = self.updated_at
        return None if updated is None else max(0.0, time.time() - updated)

    @property
    def is_stale(self) -> bool:
        """True while showing the default, or when older than *max_age*."""
        age = self.age
        return age is None or (self.max_age is not None and age > self.max_age)

    def __repr__(self) -> str:
        shown = "<unloaded>" if self._value is _UNLOADED else repr(self._value)
        return f"<SharedValue {self.name!r} v{self._version} {shown}>"


class SharedValues:
    """Every shared value by name, created on first use: what adapters hand to views
    and templates (``{{ shared.users_count }}``).

    ``values["users_count"]`` and ``values.users_count`` return the current value
    (the local copy; *defaults*' entry, else ``None``, until something is
    published); :meth:`value` returns the :class:`SharedValue` itself for
    ``.version``, ``.age`` and ``.is_stale``. The backend is resolved on first use,
    so building this object never fails for an app that does not use broadcast.
    An invalid name raises ``KeyError`` / ``AttributeError`` (templates then show
    their "invalid" marker).

    :param defaults: default value per name.
    :param max_age: ``max_age`` of every value (seconds).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        key_prefix: str | None = None,
        defaults: dict[str, Any] | None = None,
        max_age: float | None = None,
        serializer: str | Serializer | None = None,
    ) -> None:
        self._url = url
        self._client = client
        self._key_prefix = key_prefix
        self._defaults = dict(defaults or {})
        self._max_age = _max_age(max_age)  # refused now, not at each name's first use
        self._serializer = serializer
        self._values: dict[str, SharedValue[Any]] = {}

    def value(self, name: str) -> SharedValue[Any]:
        """The :class:`SharedValue` called *name* (created on first use)."""
        sv = self._values.get(name)
        if sv is None:
            # no lock (none to inherit held across a fork): a racing duplicate is dropped
            sv = self._values.setdefault(name, SharedValue(
                name, self._defaults.get(name), max_age=self._max_age, url=self._url,
                client=self._client, key_prefix=self._key_prefix, serializer=self._serializer,
            ))
        return sv

    def get(self, name: str, default: Any = None) -> Any:
        """The current value of *name*, or *default* while it shows its default."""
        sv = self.value(name)
        value = sv.get()
        return default if sv._version == 0 and default is not None else value

    def __getitem__(self, name: str) -> Any:
        try:
            sv = self.value(name)
        except InvalidKey as e:
            raise KeyError(name) from e
        return sv.get()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._values

    def __repr__(self) -> str:
        return f"<SharedValues {sorted(self._values)}>"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _unload_all() -> None:
    for value in list(_values):
        value._waiters = []  # the parent's event loops: nobody waits on them here
        value._reset()


def _unload_memory() -> None:
    """Unload every value of a ``memory://`` store (called by
    :func:`statekit.backends.memory.reset`): its next read shows what the emptied
    store holds (the default), not the copy an earlier test left."""
    for value in list(_values):
        if isinstance(value._hub_key, str) and value._hub_key.lower().startswith("memory://"):
            value._reset()


os.register_at_fork(after_in_child=_unload_all)
