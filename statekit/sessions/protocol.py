"""The session engine contract: what :class:`~statekit.sessions.SessionStore` needs
from a storage backend.

The store does everything that is not storage (ids, cookies, codecs, timeouts, the
diff of a request's changes, following rotations); an engine keeps *session hashes*
and *user indexes* and makes each operation below atomic.

**Names.** A session is named by its *handle* (``"{abcd}:<40 hex digits>"``: the
id's 4-character tag in braces, then a hash of the id, so no handle reveals a
cookie), a user index by the user id (a string). What the engine stores them under
is its own business.

**A session hash** maps field names to bytes: ``d:<key>`` one session value
(encoded by the store's codec), ``m:c`` created, ``m:s`` last seen, ``m:u`` user
id, ``m:i`` idle timeout override (as the store writes them), ``m:v`` the version,
which the engine itself bumps on every change, and ``m:a`` on a *tombstone alias*
(a rotated-away session: the handle of its successor, nothing else). A hash
without ``m:c`` is not a live session.

**Concurrency.** Every method may be called from many threads (and processes) at
once, and each one is atomic: no reader sees half of a write, and of two writes of
one session neither is lost (``write`` sets and deletes only the fields it names,
so writes of different fields merge). No write brings back a session that was
destroyed, revoked or expired: a write to a hash without ``m:c`` changes nothing
and returns :attr:`Status.GONE`; a write to an alias changes nothing and returns
:attr:`Status.ROTATED` with the successor's handle (the store follows it).

**Failures.** A backend that cannot be reached (or times out, or refuses service)
raises :class:`~statekit.errors.BackendUnavailable`; a write whose outcome is
unknown (sent, no reply) is never sent again by the engine. A ``write`` that
certainly reached no backend (refused before anything was sent) may raise
:class:`NotSent`, a ``BackendUnavailable``: the store then knows a new session's
create was not stored (any other failure of a create counts as maybe stored:
:attr:`Session.maybe_stored <statekit.sessions.Session.maybe_stored>`). Bad input is a
:class:`~statekit.errors.SessionError` (an increment of a value that is no integer).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import BackendUnavailable

__all__ = ["AsyncSessionEngine", "IndexOp", "NotSent", "Result", "SessionEngine", "Status"]


class NotSent(BackendUnavailable):
    """An engine call failed before anything of it reached the backend (the connection
    refused, a pooled socket found closed and the reconnect refused): nothing was
    applied. Raised by the Redis engines' ``write`` and ``rotate``; an engine that
    cannot tell raises a plain :class:`~statekit.errors.BackendUnavailable` (the
    outcome then counts as unknown)."""


class Status(enum.Enum):
    """How an engine operation ended."""

    #: applied
    DONE = "done"
    #: the session does not exist (never stored, destroyed, revoked or expired): nothing changed
    GONE = "gone"
    #: the handle is a tombstone alias: nothing changed; :attr:`Result.handle` names the successor
    ROTATED = "rotated"
    #: a create (or a rotation's new handle) found the handle taken by another session: nothing changed
    EXISTS = "exists"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of :meth:`SessionEngine.write`, :meth:`~SessionEngine.rotate`,
    :meth:`~SessionEngine.incr` and :meth:`~SessionEngine.destroy`."""

    status: Status
    #: with :attr:`Status.ROTATED`: the successor's handle
    handle: str | None = None
    #: with :attr:`Status.DONE` from ``write`` and ``incr``: the session's new ``m:v``
    version: int = 0
    #: with :attr:`Status.DONE` from ``incr``: the new value
    value: int = 0


DONE = Result(Status.DONE)
GONE = Result(Status.GONE)
EXISTS = Result(Status.EXISTS)


@dataclass(frozen=True, slots=True)
class IndexOp:
    """Keep the per-user indexes in step with a write or a rotation, in the same
    atomic operation where the backend allows it.

    Add *member* (a handle) with *score* (the time, seconds) to the index of user
    *add*, dropping that index's entries scored below *cutoff*, and keep that index
    *ttl_ms* longer; remove *old_member* from the index of user *remove*.

    It is made from the user the request loaded. If the session stores another
    user now (``m:u``: another request changed it since), the engine applies
    :meth:`for_stored` of that user instead, atomically with the write (an engine
    with transactions reads ``m:u`` in the write's transaction; the Redis engine's
    scripts refuse and it calls again with that user's index): a session is indexed
    under the user it holds, or a ``revoke_user`` of that user misses it, and a late
    save of the previous user puts it back in theirs. The shipped contract checks
    both.
    """

    member: str
    score: float
    cutoff: float
    ttl_ms: int
    add: str | None = None
    remove: str | None = None
    old_member: str | None = None

    def for_stored(self, stored: str | None, changes_user: bool) -> IndexOp:
        """This operation as the store would have made it had the request loaded
        the user *stored* (the session's ``m:u`` now, ``None`` for none): what an
        engine applies, in the same atomic step, when the two differ. The same
        operation when they do not, so an engine may apply it unconditionally.

        :param changes_user: the write sets or deletes ``m:u`` (the user this
            request gives the session: the index it adds to stays); ``False`` for
            a rotation."""
        add = self.add if changes_user else stored
        moves = self.old_member not in (None, self.member)  # a rotation: the old handle goes
        return dataclasses.replace(self, add=add, remove=stored if stored and (stored != add or moves)
                                   else None)


class SessionEngine(Protocol):
    """Storage for :class:`~statekit.sessions.SessionStore` (see the module docstring
    for names, the hash layout, concurrency and failures).

    A backend class also has a constructor the store calls,
    ``from_url(url, *, key_prefix, counters, **options)`` (a classmethod): *url* is
    the ``STATEKIT_SESSION_URL``, *key_prefix* keeps stores sharing a backend apart,
    *counters* is the store's :class:`~statekit.metrics.Counters`; *options*
    (``near_cache``, ``near_max_age``) are passed only when set, and an engine
    without them raises :class:`~statekit.errors.ConfigError`.
    """

    def load(self, handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        """The hash of *handle*, ``{}`` if none. The result must not be changed.
        *min_version* is a hint for engines keeping local copies: a copy older than
        it must not be returned."""
        ...

    def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
              ttl_ms: int, index: IndexOp | None) -> Result:
        """Set the fields *sets*, delete the fields *dels*, bump ``m:v`` and let the
        session expire *ttl_ms* from now; apply *index*. Returns ``DONE`` with the
        new version; ``GONE`` or ``ROTATED`` (see the module docstring) unless
        *create*. With *create* (*sets* holds ``m:c``): ``EXISTS`` if the handle holds
        another session, while a hash with the same ``m:c`` is this create retried
        and is written."""
        ...

    def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        """Move session *old* to the handle *new* (its fields and expiry) and leave
        at *old* a tombstone alias naming *new* that lives *alias_ms*; apply *index*.
        ``GONE``/``ROTATED`` when *old* is not live, ``EXISTS`` when *new* is taken."""
        ...

    def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        """Add *amount* to the integer in *field* (0 when missing), encoded by the
        codec named *codec* (``"json"`` or ``"msgpack"``); bump ``m:v``. ``DONE``
        with the new value and version; ``GONE``/``ROTATED`` as for ``write``.

        :raises SessionError: the value is not an integer, or the result leaves the
            codec's exact range (64 bits signed for json, 2**53 for msgpack)."""
        ...

    def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        """Delete session *handle* and its entry in *user*'s index: ``DONE`` if a
        live session was deleted, ``GONE`` if there was none (its index entry goes
        either way). If *handle* is an alias it is deleted and ``ROTATED`` names its
        successor (the store deletes that too).

        With *check_user* (:meth:`SessionStore.revoke_session
        <statekit.sessions.SessionStore.revoke_session>` given a user id: the store
        passes it only then, as a keyword), delete the session only if its stored
        user (``m:u``) is *user*, checked atomically with the delete; else change
        nothing but the index entry and return ``GONE`` (another user's session, or
        one without a user). An alias is then kept and ``ROTATED`` names its
        successor, whose user is the alias's: the store checks the successor, and
        deletes the alias (without the check) once the successor is deleted."""
        ...

    def revoke_user(self, user: str, keep: str) -> int:
        """Delete every session in *user*'s index but *keep* (a handle, or ``""``),
        including sessions indexed while it runs, and return how many were deleted.
        Need not be one atomic step; must not block other clients of the backend for
        long (a user may have tens of thousands of sessions). The store passes the
        handle *keep*'s rotation aliases lead to when it calls; an engine working in
        several steps should keep what *keep* is rotated to between them too (a login
        on the device being kept: the Redis engine does, standalone and Sentinel)."""
        ...

    def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        """The live sessions in *user*'s index scored *since* or later, oldest first:
        ``(handle, fields)`` with at least ``m:c``, ``m:s``, ``m:u``, ``m:i`` (absent
        ones left out)."""
        ...

    def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        """Set the plain value *name* (not a session) to *value* for *ttl_ms* unless
        it is set: ``None`` if this call set it, else the value already there. Of
        concurrent calls exactly one sets it (the session carry-over's claims)."""
        ...

    def peek(self, name: str) -> bytes | None:
        """The plain value *name* set by :meth:`claim`, or ``None``."""
        ...

    def close(self) -> None:
        """Release connections and threads (the store is not used after)."""
        ...



class AsyncSessionEngine(Protocol):
    """Storage for :class:`~statekit.sessions.aio.AsyncSessionStore`: the methods of
    :class:`SessionEngine`, each a coroutine with the same arguments, result,
    atomicity and failures, and ``aclose()`` instead of ``close()``. Its stored data
    must be what the sync engine of the same URL reads (statekit's Redis engines run
    the same scripts on the same keys).

    Concurrency: many tasks of one event loop may call it at once; it must not block
    the loop (network waits are awaited). A third-party engine with only the sync
    :class:`SessionEngine` needs no async twin: the async store runs its methods in
    worker threads (``asyncio.to_thread``).
    """

    async def load(self, handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        """:meth:`SessionEngine.load`."""
        ...

    async def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
                    ttl_ms: int, index: IndexOp | None) -> Result:
        """:meth:`SessionEngine.write`."""
        ...

    async def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        """:meth:`SessionEngine.rotate`."""
        ...

    async def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        """:meth:`SessionEngine.incr`."""
        ...

    async def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        """:meth:`SessionEngine.destroy`."""
        ...

    async def revoke_user(self, user: str, keep: str) -> int:
        """:meth:`SessionEngine.revoke_user`."""
        ...

    async def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        """:meth:`SessionEngine.list_user`."""
        ...

    async def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        """:meth:`SessionEngine.claim`."""
        ...

    async def peek(self, name: str) -> bytes | None:
        """:meth:`SessionEngine.peek`."""
        ...

    async def aclose(self) -> None:
        """Release the connections of the running event loop."""
        ...
