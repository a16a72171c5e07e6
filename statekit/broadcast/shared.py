"""The worker side of broadcast: :class:`SharedValue` and the per-process subscriber.

Public names are re-exported by :mod:`statekit.broadcast`; import them from there.

One :class:`Hub` per process and Redis backend holds every shared value of that
backend and runs ONE daemon thread that pattern-subscribes to all of their channels
(``<prefix>:broadcast:*``). A message carries the whole record (epoch, version,
publish time, encoded value), so fan-out costs no extra round trip.

Failure behaviour: any connection error, timeout or a PING left unanswered closes
the subscription; the thread reconnects with capped exponential backoff (with
jitter) and, every time the server confirms the pattern subscription (first
connect, our reconnects and redis-py's own reconnects alike), re-reads the retained
value of every registered name. An update published while the subscriber was
disconnected is therefore picked up on reconnect, never missed for good. That
re-read is taken even when its version is older than the local copy (Redis came back
from an older snapshot, or failed over to a replica that missed the last publishes),
so workers follow the publishes made after it instead of ignoring them. As a
safety net for messages lost without a disconnect (a Sentinel failover), the thread
also compares the retained versions with its local copies every ``CHECK_EVERY``
seconds (one small pipelined read) and fetches what differs. The thread never dies
on an error; it logs, counts and retries.

Fork: :func:`reset_after_fork` runs in a forked child (``os.register_at_fork``) and
forgets every hub: the parent's thread does not exist in the child, and the child
starts its own on first use. Nothing (locks, sockets, values) is shared.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

from ..config import Settings, parse_url
from ..errors import BackendUnavailable, ConfigError, InvalidKey
from ..metrics import Counters
from ..redis import get_client, translate_errors
from ..serializers import Serializer, get_serializer

__all__ = [
    "Hub",
    "Record",
    "SharedValue",
    "SharedValues",
    "deliver_local",
    "get_hub",
    "parse_message",
    "reset_after_fork",
    "state_key",
]

T = TypeVar("T")

log = logging.getLogger("statekit.broadcast")

#: seconds without any traffic before the subscriber sends a PING
PING_EVERY = 5.0
#: seconds between two checks of the retained versions (see :meth:`Hub.check`)
CHECK_EVERY = 5.0
#: seconds a PING may stay unanswered before the connection is considered dead
PING_TIMEOUT = 3.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_UNLOADED: Any = object()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidKey(f"shared value name {name!r} must be 1-128 chars of letters, digits, _ . : -")
    return name


def state_key(prefix: str, name: str) -> str:
    """The Redis hash that retains the value of *name*."""
    return f"{prefix}:bc:{{{name}}}"


def _channel(prefix: str, name: str) -> str:
    return f"{prefix}:broadcast:{name}"


def _resolve(url: str | None, client: Any, key_prefix: str | None) -> tuple[Any, Any, str]:
    """``(hub key, client factory, prefix)`` from a URL, a ready client or the env."""
    settings = Settings.from_env()
    prefix = key_prefix or settings.key_prefix
    if client is not None:
        return id(client), (lambda: client), prefix
    if url is None:
        url = settings.broadcast_url
        if not url:
            raise ConfigError(
                "no broadcast backend: pass url= or client=, or set STATEKIT_BROADCAST_URL "
                "(or STATEKIT_REDIS_URL)"
            )
    parsed = parse_url(url, kinds=("redis", "memory"))  # fail at construction, not on first get()
    if parsed.kind == "memory":
        from .memory import MemoryClient

        return url, (lambda: MemoryClient(parsed.name)), prefix
    return url, (lambda: get_client(url)), prefix




class Record(NamedTuple):
    """One published state of a shared value, as retained in Redis or received."""

    epoch: bytes
    version: int
    updated_ms: int
    payload: bytes


def parse_message(data: bytes) -> Record:
    """Split a published message ``b"<epoch> <version> <ms> <payload>"``."""
    epoch, version, ms, payload = data.split(b" ", 3)
    return Record(epoch, int(version), int(ms), payload)


class Hub:
    """All shared values of one Redis backend in this process, and their subscriber
    thread. Created through :func:`get_hub`; not meant to be built directly.

    Metrics (:mod:`statekit.metrics`): counters ``broadcast_subscriber`` / prefix
    (messages, updates, reconnects, resyncs, missed, errors) and, per name, gauges
    ``broadcast_value`` / ``<prefix>:<name>``: ``version`` and ``updated_at`` (Unix
    seconds of the publish shown; the age is ``time() - updated_at``)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.channel_prefix = f"{prefix}:broadcast:".encode()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.counters = Counters(
            "broadcast_subscriber", prefix,
            ("messages", "updates", "reconnects", "resyncs", "missed", "errors"),
        )
        self._values: dict[str, weakref.WeakSet[SharedValue[Any]]] = {}
        self._gauges: dict[str, Counters] = {}
        self._names: dict[bytes, str] = {}  # channel -> registered name
        self._refs: dict[str, tuple[weakref.ref[SharedValue[Any]], ...]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- registration and reads -------------------------------------------------
    def register(self, value: SharedValue[Any]) -> None:
        """Add *value* to the hub and start the subscriber thread if needed."""
        with self.lock:
            values = self._values.setdefault(value.name, weakref.WeakSet())
            values.add(value)
            # the message path walks a plain tuple of references (cheaper than
            # iterating the WeakSet); a dead reference in it is skipped
            self._refs[value.name] = tuple(weakref.ref(v) for v in values)
            if getattr(self.client, "in_process", False):  # memory://: publishes deliver directly
                self.connected.set()
                return
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="statekit-broadcast-subscriber", daemon=True
                )
                self._thread.start()

    def read(self, names: Iterable[str]) -> dict[str, Record]:
        """Retained records of *names* (missing names are left out), one round trip.

        :raises BackendUnavailable: Redis did not answer within its timeout.
        """
        names = list(names)
        if not names:
            return {}
        with translate_errors("broadcast read"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(state_key(self.prefix, name), "epoch", "version", "updated_at", "data")
            rows = pipe.execute()
        out: dict[str, Record] = {}
        for name, (epoch, version, ms, data) in zip(names, rows, strict=True):
            if epoch is not None and version is not None and data is not None:
                out[name] = Record(epoch, int(version), int(ms or 0), data)
        return out

    def offer(self, name: str, record: Record, *, retained: bool = False) -> None:
        """Hand *record* to every registered value called *name* (newer ones win).

        :param retained: *record* was read from Redis by the subscriber thread,
            after every message it applied: it is taken even if older than the
            local copy, which only happens when Redis went back in time (a restart
            from an older snapshot, a failover to a lagging replica)."""
        refs = self._refs.get(name)
        if not refs:
            return
        changed = []
        with self.lock:
            for ref in refs:
                value = ref()
                if value is not None and value._offer(record, retained):
                    changed.append(value)
            if changed:
                self.gauge(name, record)
        if changed:
            for value in changed:  # outside the lock: a callback may read other values
                value._notify()
            self.counters.incr("updates", len(changed))  # bookkeeping after delivery

    def gauge(self, name: str, record: Record) -> None:
        """Export the version and publish time now shown for *name* (lock held)."""
        gauges = self._gauges.get(name)
        if gauges is None:
            gauges = self._gauges[name] = Counters("broadcast_value", f"{self.prefix}:{name}")
        gauges.set_gauge("version", record.version)
        gauges.set_gauge("updated_at", record.updated_ms / 1000.0)

    def resync(self) -> None:
        """Re-read the retained value of every registered name and take it (the
        subscriber thread calls this once subscribed, before any message)."""
        records = self.read(self._live_names())
        self.counters.incr("resyncs")
        for name, record in records.items():
            self.offer(name, record, retained=True)

    def check(self) -> None:
        """Compare retained versions with the local copies (a small read) and fetch
        the values that differ: the safety net for a message lost without a
        disconnect (a Sentinel failover leaves the subscription on the demoted
        master, which relays nothing until it has synced with the new one), and
        for a retained version older than the local one (Redis went back in time).
        Called by the subscriber thread, after the messages it applied."""
        names = self._live_names()
        if not names:
            return
        with translate_errors("broadcast check"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(state_key(self.prefix, name), "epoch", "version")
            rows = pipe.execute()
        behind = []
        with self.lock:
            for name, (epoch, version) in zip(names, rows, strict=True):
                if epoch is None or version is None:
                    continue
                if any(v._epoch != epoch or v._version != int(version) for v in self._values.get(name, ())):
                    behind.append(name)
        if behind:
            self.counters.incr("missed")
            for name, record in self.read(behind).items():
                self.offer(name, record, retained=True)

    def _retire_if_idle(self) -> bool:
        """End the thread when every value of this hub is gone (nothing to keep
        current); :meth:`register` starts a new one when needed."""
        with self.lock:
            if any(len(vs) for vs in self._values.values()):
                return False
            self._thread = None
            self.connected.clear()
            return True

    def _live_names(self) -> list[str]:
        with self.lock:
            return [n for n, vs in self._values.items() if len(vs)]

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the subscriber thread (tests; a process normally keeps it to exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread -------------------------------------------------------------
    def _run(self) -> None:
        import redis

        backoff = BACKOFF_MIN
        pattern = self.channel_prefix + b"*"
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                pubsub.psubscribe(pattern)
                last_rx = last_ping = last_check = time.monotonic()
                pinged = False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    now = time.monotonic()
                    if now - last_check > CHECK_EVERY and self.connected.is_set():
                        if self._retire_if_idle():
                            return
                        self.check()
                        last_check = now
                    if msg is None:
                        if pinged and now - last_ping > PING_TIMEOUT:
                            raise redis.ConnectionError("broadcast subscriber: PING not answered")
                        if not pinged and now - last_rx > PING_EVERY:
                            pubsub.ping()
                            last_ping, pinged = now, True
                        continue
                    last_rx, pinged = now, False
                    kind = msg["type"]
                    if kind == "pmessage":
                        self._on_message(msg["channel"], msg["data"])
                    elif kind == "psubscribe":
                        # (re)subscribed: whatever was published meanwhile is retained
                        self.resync()
                        self.connected.set()
                        backoff = BACKOFF_MIN
            except (redis.RedisError, OSError, BackendUnavailable) as e:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self.counters.incr("reconnects")
                if self._retire_if_idle():
                    return
                (log.warning if was_connected else log.debug)(
                    "broadcast subscriber lost Redis (%s); reconnecting in %.2fs", e, backoff
                )
                self._stop.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a bug must not kill the thread
                self.connected.clear()
                self.counters.incr("errors")
                log.exception("broadcast subscriber failed; restarting in %.2fs", BACKOFF_MAX)
                self._stop.wait(BACKOFF_MAX)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        # the update is applied first and counted after: the counter lock is off the
        # publish-to-visible path
        name = self._names.get(channel)
        if name is None:
            if channel.startswith(self.channel_prefix):
                name = channel[len(self.channel_prefix):].decode("utf-8", "replace")
            if name is None or name not in self._values:
                self.counters.incr("messages")
                return
            self._names[channel] = name  # registered names only: bounded
        try:
            record = parse_message(data)
        except ValueError:
            self.counters.incr("errors")
            log.warning("broadcast subscriber ignored a malformed message on %r", channel)
        else:
            self.offer(name, record)
        self.counters.incr("messages")


_hubs: dict[tuple[str, Any], Hub] = {}
_hubs_lock = threading.Lock()


def get_hub(key: Any, prefix: str, client_factory: Any) -> Hub:
    """This process's hub for backend *key* (a URL, or ``id`` of a ready client)."""
    with _hubs_lock:
        hub = _hubs.get((prefix, key))
        if hub is None:
            hub = _hubs[(prefix, key)] = Hub(client_factory(), prefix)
        return hub


def deliver_local(store: Any, channel: bytes, message: bytes) -> None:
    """Deliver a ``memory://`` publish to every hub of *store* in this process."""
    with _hubs_lock:
        hubs = [h for h in _hubs.values() if getattr(h.client, "store", None) is store]
    for hub in hubs:
        hub._on_message(channel, message)


def reset_after_fork() -> None:
    """Forget every hub and unload every value (runs in a forked child; see the
    module docstring)."""
    global _hubs_lock
    _hubs_lock = threading.Lock()
    _hubs.clear()
    for value in list(_values):
        value._reset()


_values: weakref.WeakSet[SharedValue[Any]] = weakref.WeakSet()


class SharedValue(Generic[T]):
    """A value every worker process sees, kept current by one subscriber thread.

    :param name: the value's name (``Broadcaster.every(..., name=)`` publishes it).
    :param default: returned until anything was ever published.
    :param max_age: seconds after which :attr:`is_stale` turns true.
    :param url: Redis URL; ``STATEKIT_BROADCAST_URL`` / ``STATEKIT_REDIS_URL`` by default.
    :param client: a ready redis-py client instead of a URL.
    :param serializer: codec of the published values (JSON by default); must match
        the broadcaster's.

    :meth:`get` is a local attribute read once loaded. The first call (or the first
    use of any property) reads the retained value from Redis, so a worker that starts
    after the last publish shows it at once, and registers the value with the
    process's subscriber. Updates are applied by that thread; readers never block on
    it. If Redis is down on first use, :meth:`get` returns *default* (after the
    client's timeout) and the subscriber fills the value in when Redis is back.
    Thread-safe; after ``fork`` the child starts with an unloaded value and its own
    subscriber.
    """

    __slots__ = (
        "__weakref__", "_callbacks", "_epoch", "_hub", "_hub_key", "_make_client", "_prefix",
        "_serializer", "_updated_at", "_value", "_version", "default", "max_age", "name",
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
        self.name = _check_name(name)
        self.default = default
        if max_age is not None and not max_age > 0:
            raise ConfigError(f"max_age={max_age!r} must be a positive number of seconds")
        self.max_age = max_age
        self._hub_key, self._make_client, self._prefix = _resolve(url, client, key_prefix)
        self._serializer = get_serializer(serializer)
        self._callbacks: list[Callable[[T, int], None]] = []
        self._reset()
        _values.add(self)

    def _reset(self) -> None:
        self._hub: Hub | None = None
        self._epoch = b""
        self._version = 0
        self._updated_at: float | None = None
        self._value = _UNLOADED

    def get(self) -> T:
        """The current value (the local copy; *default* if nothing was published)."""
        value = self._value
        if value is _UNLOADED:
            return self._load()
        return value  # type: ignore[no-any-return]

    def _load(self) -> T:
        hub = get_hub(self._hub_key, self._prefix, self._make_client)
        self._hub = hub
        hub.register(self)
        try:
            record = hub.read([self.name]).get(self.name)
        except BackendUnavailable as e:
            log.warning("shared value %r: retained value not readable (%s); using default", self.name, e)
            hub.counters.incr("errors")
            record = None
        with hub.lock:
            if record is not None and self._offer(record):
                hub.gauge(self.name, record)
            if self._value is _UNLOADED:
                self._value = self.default
        return self._value  # type: ignore[no-any-return]

    def _offer(self, record: Record, retained: bool = False) -> bool:
        """Apply *record* if it is newer, or if it is the *retained* one and differs
        (see :meth:`Hub.offer`); the caller holds the hub lock."""
        if record.epoch == self._epoch and (
                record.version == self._version or (record.version < self._version and not retained)):
            return False
        try:
            value = self._serializer.loads(record.payload)
        except Exception as e:  # SerializationError, or a bad custom codec
            log.warning("shared value %r: version %d not decodable: %s", self.name, record.version, e)
            return False
        self._epoch = record.epoch
        self._version = record.version
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

    def refresh(self) -> T:
        """Read the retained value from Redis now (normally never needed).

        :raises BackendUnavailable: Redis did not answer.
        """
        if self._value is _UNLOADED:
            return self._load()
        hub = self._hub
        assert hub is not None
        record = hub.read([self.name]).get(self.name)
        if record is not None:
            with hub.lock:
                self._offer(record)
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
        self._max_age = max_age
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
