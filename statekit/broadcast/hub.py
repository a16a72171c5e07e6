"""The hub: every shared value of one backend in this process, and the one thread
that keeps them current.

One :class:`Hub` per process, backend and key prefix holds the local copies
(:class:`~statekit.broadcast.SharedValue`) and runs ONE daemon thread on one
:class:`~statekit.broadcast.protocol.Subscription` to all of their channels.

Failure behaviour: a lost or silent connection (the subscription raises) closes the
subscription; the thread subscribes again with capped exponential backoff (with
jitter) and, every time the backend confirms the subscription (first connect and
every reconnect alike), re-reads the retained value of every registered name. An
update published while the subscriber was away is therefore picked up, never
missed for good. That re-read is taken even when its version is older than the
local copy (Redis came back from an older snapshot, or failed over to a replica
that missed the last publishes), so workers follow the publishes made after it. As
a safety net for messages lost without a disconnect (a Sentinel failover), the
thread also compares the retained versions with its local copies every
``CHECK_EVERY`` seconds (one small read) and fetches what differs. The thread never
dies on an error; it logs, counts and retries, and it ends when every value it held
is gone. A subscription the backend refuses (a Redis ACL without ``PSUBSCRIBE`` or
the broadcast channels, the command renamed away: a
:class:`~statekit.broadcast.protocol.SubscriptionRefused`) is logged once,
as an error naming what to grant, and while it stays refused the thread re-reads the
retained versions every ``BACKOFF_MAX`` seconds instead (:meth:`Hub.check`): shared
values follow the publishes, late by up to that, instead of never.

A :attr:`~statekit.broadcast.protocol.BroadcastBackend.synchronous` backend
(``memory://``) gets no thread: the publish drains the hub's subscription in the
publishing thread before it returns.

Fork: a forked child forgets every hub (``os.register_at_fork``): the parent's
thread does not exist in the child, which starts its own on first use.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..errors import BackendUnavailable
from ..metrics import Counters
from .protocol import BroadcastBackend, Message, Record, Subscription, SubscriptionRefused

__all__ = ["CHECK_EVERY", "Hub", "LocalCopy", "get_hub", "tick"]

log = logging.getLogger("statekit.broadcast")

#: seconds between two checks of the retained versions (see :meth:`Hub.check`)
CHECK_EVERY = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

_ticks = itertools.count(1)


def tick() -> int:
    """A number larger than every one returned before in this process: when a
    retained read started, or a local copy was applied (see :meth:`Hub.offer`)."""
    return next(_ticks)


# one lock for every synchronous hub's deliveries: re-entrant (a callback may
# publish again) and single (two hubs' callbacks publishing to each other from two
# threads cannot deadlock)
_sync_lock = threading.RLock()


class LocalCopy(Protocol):
    """What a hub holds: a local copy of one shared value (a ``SharedValue``)."""

    name: str

    def _offer(self, record: Record, since: int = 0) -> bool:
        """Apply *record* if it is newer, or if it was read from the backend
        (retained) by a read that started at :func:`tick` *since*, after the copy
        shown was applied, and differs; called with the hub's lock held. Returns
        whether it changed."""
        ...

    def _notify(self) -> None:
        """Run the change callbacks (the hub's lock is not held)."""
        ...

    def _shows(self, epoch: bytes, version: int) -> bool:
        """Whether the copy shows this epoch and version."""
        ...


class Hub:
    """All shared values of one backend in this process, and their subscriber
    thread. Created through :func:`get_hub`; not meant to be built directly.

    Metrics (:mod:`statekit.metrics`): counters ``broadcast_subscriber`` / prefix
    (messages, updates, reconnects, resyncs, missed, errors) and, per name, gauges
    ``broadcast_value`` / ``<prefix>:<name>``: ``version`` and ``updated_at`` (Unix
    seconds of the publish shown; the age is ``time() - updated_at``)."""

    def __init__(self, backend: BroadcastBackend) -> None:
        self.backend = backend
        self.prefix = backend.prefix
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.counters = Counters(
            "broadcast_subscriber", self.prefix,
            ("messages", "updates", "reconnects", "resyncs", "missed", "errors"),
        )
        self._values: dict[str, weakref.WeakSet[Any]] = {}
        self._gauges: dict[str, Counters] = {}
        self._refs: dict[str, tuple[weakref.ref[Any], ...]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync: Subscription | None = None  # a synchronous backend's subscription
        self._renamed = False  # names were added since the thread last told its subscription
        self._refusal = ""  # the subscription refusal logged last (said once until subscribed)

    # -- registration and reads -------------------------------------------------
    def register(self, value: LocalCopy) -> None:
        """Add *value* to the hub and start the subscriber if needed."""
        with self.lock:
            values = self._values.setdefault(value.name, weakref.WeakSet())
            values.add(value)
            # the message path walks a plain tuple of references (cheaper than
            # iterating the WeakSet); a dead reference in it is skipped
            self._refs[value.name] = tuple(weakref.ref(v) for v in values)
            self._renamed = True
            if self.backend.synchronous:
                start = self._sync is None
            elif self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="statekit-broadcast-subscriber", daemon=True
                )
                self._thread.start()
                start = False
            else:
                start = False
        if start:
            with _sync_lock:
                if self._sync is None:
                    self._sync = self.backend.subscribe(ready=self.drain)
            self.drain()

    def drain(self) -> None:
        """Handle every event waiting in a synchronous backend's subscription."""
        with _sync_lock:
            subscription = self._sync
            while subscription is not None:
                try:
                    event = subscription.get(0)
                except ValueError as e:
                    self._malformed(e)
                    continue
                if event is None:
                    return
                self._handle(event)

    def _malformed(self, error: ValueError) -> None:
        self.counters.incr("errors")
        log.warning("broadcast subscriber ignored a malformed message: %s", error)

    def read(self, names: Iterable[str]) -> dict[str, Record]:
        """Retained records of *names* (missing names are left out).

        :raises BackendUnavailable: the backend did not answer within its timeout.
        """
        return self.backend.read(names)

    def offer(self, name: str, record: Record, *, since: int = 0) -> None:
        """Hand *record* to every registered value called *name* (newer ones win).

        :param since: *record* was read from the backend by the subscriber, after
            every message it applied, in a read that started at :func:`tick`
            *since*: it is taken even if older than (or of another epoch than) a
            local copy applied before that read started, which only happens when
            the backend went back in time (a restart from an older snapshot, a
            failover to a lagging replica) or lost its data. A copy applied
            meanwhile (a :meth:`SharedValue.refresh
            <statekit.broadcast.SharedValue.refresh>` in another thread) is newer
            than that read and stays."""
        refs = self._refs.get(name)
        if not refs:
            return
        changed = []
        with self.lock:
            for ref in refs:
                value = ref()
                if value is not None and value._offer(record, since):
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
        """Re-read the retained value of every registered name and take it (done
        each time the subscription is confirmed, before any message)."""
        since = tick()
        records = self.read(self._live_names())
        self.counters.incr("resyncs")
        for name, record in records.items():
            self.offer(name, record, since=since)

    def check(self) -> None:
        """Compare retained versions with the local copies (a small read) and fetch
        the values that differ: the safety net for a message lost without a
        disconnect (a Sentinel failover leaves the subscription on the demoted
        master, which relays nothing until it has synced with the new one), and
        for a retained version older than the local one (the backend went back in
        time). Called by the subscriber thread, after the messages it applied."""
        names = self._live_names()
        if not names:
            return
        retained = self.backend.versions(names)
        with self.lock:
            behind = [name for name, (epoch, version) in retained.items()
                      if any(not v._shows(epoch, version) for v in self._values.get(name, ()))]
        if behind:
            self.counters.incr("missed")
            since = tick()
            for name, record in self.read(behind).items():
                self.offer(name, record, since=since)

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
    def _handle(self, event: Message | object) -> None:
        if isinstance(event, Message):
            # applied first, counted after: the counter lock is off the
            # publish-to-visible path
            self.offer(event.name, event.record)
            self.counters.incr("messages")
        else:  # (re)subscribed: whatever was published meanwhile is retained
            self.resync()
            self.connected.set()

    def _watch(self, watch: Callable[[list[str]], object], watched: set[str]) -> set[str]:
        """Tell a subscription that names its channels (sharded pub/sub) about the
        names registered since, then take their retained values (a publish made
        before the subscription was in place is there). Returns the names watched."""
        self._renamed = False
        new = sorted(set(self._live_names()) - watched)
        if new:
            watch(new)
            since = tick()
            for name, record in self.read(new).items():
                self.offer(name, record, since=since)
        return watched | set(new)

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            subscription = None
            try:
                subscription = self.backend.subscribe()
                watch = getattr(subscription, "watch", None)
                watched: set[str] = set()
                self._renamed = True
                last_check = time.monotonic()
                while not self._stop.is_set():
                    if watch is not None and self._renamed and self.connected.is_set():
                        watched = self._watch(watch, watched)
                    try:
                        event = subscription.get(0.5)
                    except ValueError as e:
                        self._malformed(e)
                        continue
                    now = time.monotonic()
                    if now - last_check > CHECK_EVERY and self.connected.is_set():
                        if self._retire_if_idle():
                            return
                        self.check()
                        last_check = now
                    if event is not None:
                        self._handle(event)
                        if not isinstance(event, Message):
                            backoff = BACKOFF_MIN
                        # the backend took the subscription: its confirmation, or a
                        # message (a sharded one's first Subscribed is its own)
                        if self._refusal and (watch is None or isinstance(event, Message)):
                            self._subscribed()
            except SubscriptionRefused as e:  # an operator's change fixes it, no retry does
                self.connected.clear()
                self.counters.incr("errors")
                if self._retire_if_idle():
                    return
                self._refused(e)
            except (BackendUnavailable, OSError) as e:
                was_connected = self.connected.is_set()
                self.connected.clear()
                self.counters.incr("reconnects")
                if self._retire_if_idle():
                    return
                (log.warning if was_connected else log.debug)(
                    "broadcast subscriber lost its backend (%s); reconnecting in %.2fs", e, backoff
                )
                self._stop.wait(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # a bug must not kill the thread
                self.connected.clear()
                self.counters.incr("errors")
                log.exception("broadcast subscriber failed; restarting in %.2fs", BACKOFF_MAX)
                self._stop.wait(BACKOFF_MAX)
            finally:
                if subscription is not None:
                    subscription.close()

    def _subscribed(self) -> None:
        """The backend took the subscription: a refusal said before is over."""
        if self._refusal:
            log.info("broadcast subscriber subscribed: shared values are pushed again")
            self._refusal = ""

    def _refused(self, error: SubscriptionRefused) -> None:
        """The subscription was refused: say so once (per refusal), re-read the
        retained versions instead, and wait ``BACKOFF_MAX`` before asking again."""
        if str(error) != self._refusal:
            self._refusal = str(error)
            log.error("broadcast subscriber refused: %s; until that changes, shared values are re-read "
                      "every %g s instead of pushed", error, BACKOFF_MAX)
        try:
            self.check()
        except (BackendUnavailable, OSError) as e:
            log.debug("broadcast: retained versions not readable (%s)", e)
        self._stop.wait(BACKOFF_MAX)


_hubs: dict[tuple[str, Any], Hub] = {}
_hubs_lock = threading.Lock()


def get_hub(key: Any, prefix: str, backend_factory: Callable[[], BroadcastBackend]) -> Hub:
    """This process's hub for backend *key* (a URL, or ``id`` of a ready client)."""
    with _hubs_lock:
        hub = _hubs.get((prefix, key))
        if hub is None:
            hub = _hubs[(prefix, key)] = Hub(backend_factory())
        return hub


def _forget_hubs() -> None:
    global _hubs_lock, _sync_lock
    _hubs_lock = threading.Lock()
    _sync_lock = threading.RLock()
    _hubs.clear()


os.register_at_fork(after_in_child=_forget_hubs)
