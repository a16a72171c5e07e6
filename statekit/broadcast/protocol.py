"""The broadcast backend contract, and how a backend is found from a URL.

A backend keeps, per name, a *lease* (which process computes the job), a *fencing
counter* (a token that grows with every new leader), a *retained record* (the last
published value with its version) and a *channel* its publishes go out on. The
:class:`~statekit.broadcast.Broadcaster` (scheduler) and the
:class:`~statekit.broadcast.SharedValue` (hub) only talk to a backend through
:class:`BroadcastBackend`; a new backend implements it and passes the shipped
contract suite (:mod:`statekit.testing.contracts.broadcast`).

Backends are found by URL scheme (:func:`open_backend`): the built-in table
:data:`BUILTINS`, else an entry point in the group ``statekit.broadcast`` whose
name is the scheme and whose value is ``"module:Class"``. The class is built with
``Class.from_url(url, prefix=...)``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

from ..backends import load_backend
from ..config import Settings, parse_url, url_and_scheme
from ..errors import BackendUnavailable, ConfigError, InvalidKey

__all__ = [
    "BUILTINS",
    "BroadcastBackend",
    "Claim",
    "ClaimStatus",
    "Message",
    "Record",
    "Subscribed",
    "Subscription",
    "SubscriptionRefused",
    "check_name",
    "open_backend",
    "resolve_backend",
    "scheme_of",
]

#: built-in schemes -> ``"module:Class"`` (imported on first use)
BUILTINS = {
    **dict.fromkeys(
        ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"),
        "statekit.broadcast.redis:RedisBackend",
    ),
    "memory": "statekit.broadcast.memory:MemoryBackend",
}

_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def check_name(name: str) -> str:
    """*name* if it is a valid shared value name (1-128 letters, digits, ``_ . : -``).

    :raises InvalidKey: it is not.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidKey(f"shared value name {name!r} must be 1-128 chars of letters, digits, _ . : -")
    return name


class Record(NamedTuple):
    """One published state of a shared value, as retained or received.

    ``epoch`` changes when the backend lost its data (versions then start again at
    1); ``version`` grows by one per publish within an epoch; ``updated_ms`` is the
    publisher's Unix time in milliseconds; ``payload`` the encoded value."""

    epoch: bytes
    version: int
    updated_ms: int
    payload: bytes


class ClaimStatus(enum.Enum):
    """What a :meth:`BroadcastBackend.claim` found."""

    #: another process holds the lease
    HELD = "held"
    #: the caller leads, and the slot was already claimed (computed or skipped)
    LEADER = "leader"
    #: the caller leads and has just claimed the slot: compute it
    COMPUTE = "compute"


@dataclass(frozen=True)
class Claim:
    """The result of a claim: the status, the fencing token (the caller's when it
    leads, the holder's otherwise) and, when held by another, the milliseconds left
    on that lease."""

    status: ClaimStatus
    token: int
    lease_left_ms: int = 0


class Message(NamedTuple):
    """A publish received by a :class:`Subscription`: the value's *name* and record."""

    name: str
    record: Record


class Subscribed(NamedTuple):
    """A :class:`Subscription` is (again) subscribed: publishes made before this
    point may have been missed, and only the retained records have them."""


class SubscriptionRefused(BackendUnavailable):
    """The backend refuses the subscription itself: a Redis ACL without the command
    or the channels, a command renamed or disabled. A change of its configuration
    fixes it, no reconnect does: the hub says so once and, until it is fixed,
    re-reads the retained versions instead."""


class Subscription(Protocol):
    """One subscription to every channel of a backend and prefix.

    Used by one thread at a time (the hub's). :meth:`get` keeps the connection
    alive on its own (a PING when idle) and raises when it is lost; the hub then
    closes it and subscribes again with backoff.

    A subscription that must name its channels (sharded pub/sub has no patterns)
    also has ``watch(names)``: the hub's thread calls it, after the first
    :class:`Subscribed`, with the names registered since its last call, then reads
    their retained values.
    """

    def get(self, timeout: float) -> Message | Subscribed | None:
        """The next event, waiting up to *timeout* seconds (``0``: only what is
        already there); ``None`` if nothing came.

        :raises BackendUnavailable: the connection was lost or stopped answering
            (a redis-py ``ConnectionError`` / ``TimeoutError`` or an ``OSError`` is
            accepted too); :class:`SubscriptionRefused` when the backend refuses
            the subscription."""
        ...

    def close(self) -> None:
        """End the subscription (idempotent, never raises)."""
        ...


class BroadcastBackend(Protocol):
    """Leases, fencing, retained values and fan-out for one key *prefix*.

    **Concurrency.** Every method may be called from any thread and from several
    processes at once. :meth:`claim`, :meth:`renew`, :meth:`release` and
    :meth:`publish` are atomic: two processes never both lead a job, and a slot is
    claimed (so computed) at most once while the backend keeps its data.

    **Failures.** A backend that cannot be reached, times out or refuses service
    raises :class:`~statekit.errors.BackendUnavailable`; a write whose outcome is
    unknown is never sent again (the caller decides). Nothing else is raised for an
    outage. If the backend loses its data, leases start over, :meth:`publish` starts
    a new epoch, and a fencing counter starts again above every token issued before
    the loss (Redis: at the server's time in microseconds), so a leader paused across
    the loss publishes with a stale token and is refused.
    """

    #: ``True`` when :meth:`publish` delivers to this process's subscriptions of the
    #: same store before returning (``memory://``): the hub then runs no thread and
    #: drains its subscription when told to (see :meth:`subscribe`).
    synchronous: ClassVar[bool]
    prefix: str

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> BroadcastBackend:
        """The backend for *url*; validates the URL, connects lazily.

        :raises ConfigError: a bad URL, or a missing extra."""
        ...

    def claim(self, name: str, owner: str, lease_ms: int, slot: int) -> Claim:
        """Take *name*'s lease for *owner* if it is free (a new fencing token), or
        renew it if *owner* holds it; then claim *slot* unless it or a later one was
        claimed (``slot=-1``: the lease only). The scheduler passes the time the slot
        starts, in ms since the epoch; a backend only compares the numbers. A slot
        claimed (:attr:`ClaimStatus.COMPUTE`) gets a new fencing token even when
        *owner* already held the lease: an earlier slot's computation then publishes
        with a stale token and is refused."""
        ...

    def renew(self, name: str, owner: str, token: int, lease_ms: int) -> bool:
        """Extend the lease if *owner* still holds it with *token*; ``False`` if not."""
        ...

    def release(self, name: str, owner: str, token: int) -> bool:
        """Drop the lease if *owner* still holds it with *token*; ``False`` if not."""
        ...

    def publish(self, name: str, payload: bytes, *, token: int | None, now_ms: int) -> int:
        """Retain *payload* as *name*'s value, bump its version and send it to every
        subscription, atomically; returns the new version.

        :param token: a fencing token; the publish is refused unless it is the
            current one (``None``: unfenced).
        :raises StaleToken: *token* is not the current one; nothing changed."""
        ...

    def read(self, names: Iterable[str]) -> dict[str, Record]:
        """The retained records of *names* (names never published are left out)."""
        ...

    def versions(self, names: Iterable[str]) -> dict[str, tuple[bytes, int]]:
        """``(epoch, version)`` retained for *names*: a cheaper :meth:`read`."""
        ...

    def subscribe(self, ready: Callable[[], object] | None = None) -> Subscription:
        """A new subscription to every publish of this prefix. Its first event is
        :class:`Subscribed` once the backend confirmed it.

        :param ready: for a :attr:`synchronous` backend, called in the publishing
            thread after each publish to the same store, when events wait in the
            subscription; other backends never call it."""
        ...

    def close(self) -> None:
        """Release what this backend object holds (not a shared client)."""
        ...


def resolve_backend(url: str | None, client: Any, key_prefix: str | None) -> tuple[str | None, str]:
    """``(url, prefix)`` from a URL, a ready client (the URL is then ``None``) or the
    environment (``STATEKIT_BROADCAST_URL``, else ``STATEKIT_REDIS_URL``); a URL of a
    built-in scheme is validated.

    :raises ConfigError: no URL, or a bad URL.
    """
    # the environment only for what the caller left out: another capability's bad
    # setting (STATEKIT_BLOBS_URL) must not break a broadcaster given its URL and prefix
    settings = None if key_prefix and (url is not None or client is not None) else Settings.from_env()
    prefix = key_prefix or (settings.key_prefix if settings is not None else "statekit")
    if client is not None:
        return None, prefix
    if url is None:
        assert settings is not None
        url = settings.broadcast_url
        if not url:
            raise ConfigError(
                "no broadcast backend: pass url= or client=, or set STATEKIT_BROADCAST_URL "
                "(or STATEKIT_REDIS_URL)"
            )
    url, scheme = url_and_scheme(url)  # as pasted from an env file: passed on stripped
    if scheme in BUILTINS or not scheme:
        parse_url(url, kinds=("redis", "memory"))
    return url, prefix


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case (``""`` when it has none), spaces around it
    ignored (:func:`statekit.config.url_and_scheme`)."""
    return url_and_scheme(url)[1]


def open_backend(
    url: str | None, client: Any, key_prefix: str | None
) -> tuple[Any, Callable[[], BroadcastBackend], str]:
    """``(hub key, backend factory, prefix)`` from a URL, a ready redis-py client or
    the environment (:func:`resolve_backend`).

    The URL is validated and its backend class found now, so a bad URL fails when
    the object that uses it is built; the backend is built on first use.

    :raises ConfigError: no URL, a bad URL, an unknown scheme or a missing extra.
    """
    found, prefix = resolve_backend(url, client, key_prefix)
    if found is None:
        redis_backend = load_backend("broadcast", "redis", BUILTINS)
        return id(client), (lambda: redis_backend(client, prefix=prefix)), prefix
    cls = load_backend("broadcast", scheme_of(found), BUILTINS)
    return found, (lambda: cls.from_url(found, prefix=prefix)), prefix
