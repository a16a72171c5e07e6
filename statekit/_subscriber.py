"""The per-process subscriber behind :class:`statekit.broadcast.SharedValue`.

One :class:`Hub` per process and Redis backend holds every shared value of that
backend and runs ONE daemon thread that pattern-subscribes to all of their channels
(``<prefix>:broadcast:*``). A message carries the whole record (epoch, version,
publish time, encoded value), so fan-out costs no extra round trip.

Failure behaviour: any connection error, timeout or a PING left unanswered closes
the subscription; the thread reconnects with capped exponential backoff (with
jitter) and, every time the server confirms the pattern subscription (first
connect, our reconnects and redis-py's own reconnects alike), re-reads the retained
value of every registered name. An update published while the subscriber was
disconnected is therefore picked up on reconnect, never missed for good. The thread
never dies on an error; it logs, counts and retries.

Fork: :func:`reset_after_fork` runs in a forked child (``os.register_at_fork``) and
forgets every hub: the parent's thread does not exist in the child, and the child
starts its own on first use. Nothing (locks, sockets, values) is shared.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from .backends.redis import translate_errors
from .errors import BackendUnavailable
from .metrics import Counters

if TYPE_CHECKING:
    from .broadcast import SharedValue

__all__ = ["Hub", "Record", "get_hub", "parse_message", "reset_after_fork"]

log = logging.getLogger("statekit.broadcast")

#: seconds without any traffic before the subscriber sends a PING
PING_EVERY = 5.0
#: seconds a PING may stay unanswered before the connection is considered dead
PING_TIMEOUT = 3.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


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
    thread. Created through :func:`get_hub`; not meant to be built directly."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.channel_prefix = f"{prefix}:broadcast:".encode()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.counters = Counters(
            "broadcast_subscriber", prefix, ("messages", "updates", "reconnects", "resyncs", "errors")
        )
        self._values: dict[str, weakref.WeakSet[SharedValue[Any]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- registration and reads -------------------------------------------------
    def register(self, value: SharedValue[Any]) -> None:
        """Add *value* to the hub and start the subscriber thread if needed."""
        with self.lock:
            self._values.setdefault(value.name, weakref.WeakSet()).add(value)
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
        from .broadcast import state_key

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

    def offer(self, name: str, record: Record) -> None:
        """Hand *record* to every registered value called *name* (newer ones win)."""
        with self.lock:
            values = list(self._values.get(name, ()))
            for value in values:
                if value._offer(record):
                    self.counters.incr("updates")

    def resync(self) -> None:
        """Re-read the retained value of every registered name."""
        with self.lock:
            names = [n for n, vs in self._values.items() if len(vs)]
        records = self.read(names)
        self.counters.incr("resyncs")
        for name, record in records.items():
            self.offer(name, record)

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
                last_rx = last_ping = time.monotonic()
                pinged = False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    now = time.monotonic()
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
                self.connected.clear()
                self.counters.incr("reconnects")
                log.warning("broadcast subscriber lost Redis (%s); reconnecting in %.2fs", e, backoff)
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
        self.counters.incr("messages")
        if not channel.startswith(self.channel_prefix):
            return
        name = channel[len(self.channel_prefix):].decode("utf-8", "replace")
        if name not in self._values:
            return
        try:
            record = parse_message(data)
        except ValueError:
            self.counters.incr("errors")
            log.warning("broadcast subscriber ignored a malformed message on %r", channel)
            return
        self.offer(name, record)


_hubs: dict[tuple[str, Any], Hub] = {}
_hubs_lock = threading.Lock()


def get_hub(key: Any, prefix: str, client_factory: Any) -> Hub:
    """This process's hub for backend *key* (a URL, or ``id`` of a ready client)."""
    with _hubs_lock:
        hub = _hubs.get((prefix, key))
        if hub is None:
            hub = _hubs[(prefix, key)] = Hub(client_factory(), prefix)
        return hub


def reset_after_fork() -> None:
    """Forget every hub (runs in a forked child; see the module docstring)."""
    global _hubs_lock
    _hubs_lock = threading.Lock()
    _hubs.clear()
