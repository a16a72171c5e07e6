"""A statekit session engine on the standard library's :mod:`sqlite3` (a toy: one
machine, one file), registered by the entry point ``sqlite`` in the group
``statekit.sessions``, so ``SessionStore("sqlite:///path/to/sessions.db")`` finds it.

It implements :class:`statekit.sessions.protocol.SessionEngine` and passes the shipped
contract (:class:`statekit.testing.contracts.sessions.SessionEngineContract`).

**Storage.** Table ``hashes``: one row per session hash (key, expiry); ``fields``: its
fields; ``user_index``: the per-user indexes; ``claims``: the carry-over claims.
**Atomicity.** Each write is one transaction begun with ``BEGIN IMMEDIATE`` (the write
lock first, so "is this session live?" and the write after it see the same data);
each read is one snapshot; WAL mode, so readers never wait for a writer.
**Expiry** is a wall-clock time per row: an expired row reads as absent, a write
meeting it drops it, and every 256th new session purges every expired row.
**Failures.** A :class:`sqlite3.Error` (a missing directory, a lock held past
``timeout``, a full disk) rolls the transaction back and raises
:class:`~statekit.errors.BackendUnavailable`: on a local file a write's outcome is
never unknown, and nothing is retried.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qs, urlsplit

from statekit.errors import BackendUnavailable, ConfigError, SerializationError, SessionError
from statekit.serializers import get_serializer
from statekit.sessions.protocol import DONE, EXISTS, GONE, IndexOp, Result, Status

__all__ = ["SQLiteEngine"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fields (key TEXT, field TEXT, value BLOB NOT NULL,
                                   PRIMARY KEY (key, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_index (user TEXT, member TEXT, score REAL NOT NULL,
                                       expires REAL NOT NULL, PRIMARY KEY (user, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, value BLOB NOT NULL,
                                   expires REAL NOT NULL) WITHOUT ROWID;
"""
#: sessions one revoke_user transaction deletes at most (it holds the write lock meanwhile)
REVOKE_BATCH = 256
#: the exact integer range of an increment, by codec (json: 64 bits signed, as Redis's HINCRBY)
RANGES = {"json": (-(2**63), 2**63 - 1), "msgpack": (-(2**53) + 1, 2**53 - 1)}
_META = ("m:c", "m:s", "m:u", "m:i")


class SQLiteEngine:
    """Sessions in one sqlite file, shared by the threads and processes of one machine.

    :param path: the database file (created with its tables on first use).
    :param key_prefix: keeps stores sharing the file apart.
    :param timeout: seconds to wait for another writer's lock before
        :class:`~statekit.errors.BackendUnavailable`.
    """

    def __init__(self, path: str, key_prefix: str = "statekit", *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._p = key_prefix + ":"
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False
        self._creates = itertools.count(1)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = "statekit", counters: Any = None,
                 **options: Any) -> SQLiteEngine:
        """``sqlite:///abs/path.db`` or ``sqlite://relative/path.db`` (everything after
        ``sqlite://`` up to ``?`` is the file), with ``?timeout=<seconds>``. The store's
        *counters* are not needed; near-cache *options* are refused."""
        if options:
            raise ConfigError(f"the sqlite session engine takes no {', '.join(sorted(options))} "
                              "(the near cache is for Redis)")
        parts = urlsplit(url)
        path = parts.netloc + parts.path
        if parts.scheme != "sqlite" or not path or path == ":memory:":
            raise ConfigError(f"not a sqlite session URL: {url!r} (sqlite:///path/to/sessions.db)")
        query = parse_qs(parts.query)
        try:
            timeout = float(query.pop("timeout", ["5"])[-1])
        except ValueError:
            raise ConfigError(f"{url!r}: timeout must be a number of seconds") from None
        if query:
            raise ConfigError(f"{url!r}: unknown option(s) {', '.join(sorted(query))} (known: timeout)")
        return cls(path, key_prefix, timeout=timeout)

    # -- connections and transactions ---------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite connections are not shared between threads,
        nor kept across a fork)."""
        if self._pid != os.getpid():
            self._pid, self._local, self._conns = os.getpid(), threading.local(), []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("the engine is closed")
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, what: str, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        try:
            conn = self._conn()
            conn.execute(begin)
        except sqlite3.Error as e:
            raise BackendUnavailable(f"sqlite sessions ({self.path}) unavailable during {what}: {e}") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise BackendUnavailable(f"sqlite sessions ({self.path}) failed during {what}: {e}") from e
            raise

    def _head(self, conn: sqlite3.Connection, key: str, now: float) -> dict[str, bytes] | None:
        """The ``m:c``, ``m:a``, ``m:u`` and ``m:v`` of a live hash (``None``: no live
        hash; an expired one is dropped)."""
        row = conn.execute("SELECT expires FROM hashes WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[0] <= now:
            self._drop(conn, key, now)
            return None
        return dict(conn.execute("SELECT field, value FROM fields WHERE key = ? AND field IN "
                                 "('m:c', 'm:a', 'm:u', 'm:v')", (key,)).fetchall())

    @staticmethod
    def _gone(head: dict[str, bytes] | None) -> Result | None:
        """``ROTATED`` for an alias, ``GONE`` for no live session, else ``None``."""
        if head is not None and "m:a" in head:
            return Result(Status.ROTATED, handle=head["m:a"].decode())
        return GONE if head is None or "m:c" not in head else None

    @staticmethod
    def _drop(conn: sqlite3.Connection, key: str, now: float) -> int:
        """Delete hash *key*; 1 if it was live."""
        live: int = conn.execute("DELETE FROM hashes WHERE key = ? AND expires > ?", (key, now)).rowcount
        conn.execute("DELETE FROM hashes WHERE key = ?", (key,))
        conn.execute("DELETE FROM fields WHERE key = ?", (key,))
        return live

    def _bump(self, conn: sqlite3.Connection, key: str, head: dict[str, bytes] | None) -> int:
        version = int(head.get("m:v", b"0")) + 1 if head else 1
        conn.execute("INSERT OR REPLACE INTO fields VALUES (?, 'm:v', ?)", (key, str(version).encode()))
        return version

    def _index(self, conn: sqlite3.Connection, op: IndexOp | None, now: float,
               head: dict[str, bytes] | None, changes_user: bool) -> None:
        """Apply *op*, for the user the session holds (*head*'s ``m:u``): another
        request may have changed it since this one loaded the session, and a session
        is indexed under the user it holds (``IndexOp.for_stored``). Each entry
        expires *ttl_ms* after it was written: no session it names outlives that (a
        session's expiry is at most its lifetime from its last write, which re-adds
        it)."""
        if op is None:
            return
        stored = head.get("m:u") if head else None
        op = op.for_stored(stored.decode() if stored else None, changes_user)
        if op.add:
            user = self._p + op.add
            conn.execute("INSERT OR REPLACE INTO user_index VALUES (?, ?, ?, ?)",
                         (user, op.member, op.score, now + op.ttl_ms / 1000))
            conn.execute("DELETE FROM user_index WHERE user = ? AND score <= ?", (user, op.cutoff))
        if op.remove and op.old_member:
            conn.execute("DELETE FROM user_index WHERE user = ? AND member = ?",
                         (self._p + op.remove, op.old_member))

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM fields WHERE key IN (SELECT key FROM hashes WHERE expires <= ?)", (now,))
        for table in ("hashes", "user_index", "claims"):
            conn.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))  # noqa: S608 - fixed names

    # -- the SessionEngine protocol ------------------------------------------------------

    def load(self, handle: str, min_version: int = 0) -> Mapping[str, bytes]:
        sql = ("SELECT f.field, f.value FROM hashes h JOIN fields f ON f.key = h.key "
               "WHERE h.key = ? AND h.expires > ?")
        with self._tx("session load", "BEGIN") as conn:
            return dict(conn.execute(sql, (self._p + handle, time.time())).fetchall())

    def write(self, handle: str, *, create: bool, sets: Mapping[str, bytes], dels: Sequence[str],
              ttl_ms: int, index: IndexOp | None) -> Result:
        key = self._p + handle
        with self._tx("session save") as conn:
            now = time.time()
            head = self._head(conn, key, now)
            if create:
                if head is not None and head.get("m:c") != sets["m:c"]:
                    return EXISTS  # another session's (a retried create finds its own m:c)
                if next(self._creates) % 256 == 0:
                    self._purge(conn, now)
            elif (gone := self._gone(head)) is not None:
                return gone
            conn.executemany("INSERT OR REPLACE INTO fields VALUES (?, ?, ?)",
                             [(key, f, v) for f, v in sets.items()])
            conn.executemany("DELETE FROM fields WHERE key = ? AND field = ?", [(key, f) for f in dels])
            version = self._bump(conn, key, head)
            conn.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?)", (key, now + ttl_ms / 1000))
            self._index(conn, index, now, head, "m:u" in sets or "m:u" in dels)
            return Result(Status.DONE, version=version)

    def rotate(self, old: str, new: str, alias_ms: int, index: IndexOp | None) -> Result:
        old_key, new_key = self._p + old, self._p + new
        with self._tx("session rotate") as conn:
            now = time.time()
            head = self._head(conn, old_key, now)
            if (gone := self._gone(head)) is not None:
                return gone
            if self._head(conn, new_key, now) is not None:
                return EXISTS
            for table in ("hashes", "fields"):  # the fields and the expiry move
                conn.execute(f"UPDATE {table} SET key = ? WHERE key = ?", (new_key, old_key))  # noqa: S608
            conn.execute("INSERT INTO hashes VALUES (?, ?)", (old_key, now + alias_ms / 1000))
            conn.execute("INSERT INTO fields VALUES (?, 'm:a', ?)", (old_key, new.encode()))
            self._index(conn, index, now, head, False)
            return DONE

    def incr(self, handle: str, field: str, amount: int, codec: str) -> Result:
        if codec not in RANGES:
            raise ConfigError(f"sessions increment json or msgpack values, not {codec!r}")
        serializer = get_serializer(codec)
        low, high = RANGES[codec]
        key = self._p + handle
        with self._tx("session incr") as conn:
            head = self._head(conn, key, time.time())
            if (gone := self._gone(head)) is not None:
                return gone
            row = conn.execute("SELECT value FROM fields WHERE key = ? AND field = ?",
                               (key, field)).fetchone()
            try:
                current = 0 if row is None else serializer.loads(row[0])
            except SerializationError as e:
                raise SessionError(f"cannot increment session key {field[2:]!r}: undecodable") from e
            if type(current) is not int:
                raise SessionError(f"cannot increment session key {field[2:]!r}: not an integer")
            value = current + amount
            if not (low <= current <= high and low <= value <= high):
                raise SessionError(f"cannot increment session key {field[2:]!r}: the result leaves "
                                   f"the exact range of the {codec} codec")
            conn.execute("INSERT OR REPLACE INTO fields VALUES (?, ?, ?)",
                         (key, field, serializer.dumps(value)))
            return Result(Status.DONE, version=self._bump(conn, key, head), value=value)

    def destroy(self, handle: str, user: str | None, check_user: bool = False) -> Result:
        key = self._p + handle
        with self._tx("session destroy") as conn:
            now = time.time()
            head = self._head(conn, key, now) or {}
            if "m:a" in head:  # checked: the store checks the successor, then deletes the alias
                if not check_user:
                    self._drop(conn, key, now)
                return Result(Status.ROTATED, handle=head["m:a"].decode())
            if user:
                conn.execute("DELETE FROM user_index WHERE user = ? AND member = ?", (self._p + user, handle))
            if check_user and (user is None or head.get("m:u") != user.encode()):
                return GONE  # not the user's (another's, or no user's): left as it is
            self._drop(conn, key, now)
            return DONE if "m:c" in head else GONE

    def revoke_user(self, user: str, keep: str) -> int:
        """:data:`REVOKE_BATCH` sessions per transaction, until one finds no other
        session in the index: a session indexed meanwhile is deleted by a later batch."""
        user, total, left = self._p + user, 0, 1
        while left:
            with self._tx("session revoke") as conn:
                now = time.time()
                members = [m for (m,) in conn.execute(
                    "SELECT member FROM user_index WHERE user = ? AND member != ? LIMIT ?",
                    (user, keep, REVOKE_BATCH))]
                for m in members:
                    total += self._drop(conn, self._p + m, now)
                conn.executemany("DELETE FROM user_index WHERE user = ? AND member = ?",
                                 [(user, m) for m in members])
                (left,) = conn.execute("SELECT count(*) FROM user_index WHERE user = ? AND member != ?",
                                       (user, keep)).fetchone()
        return total

    def list_user(self, user: str, since: float) -> list[tuple[str, Mapping[str, bytes]]]:
        sql = ("SELECT i.member, f.field, f.value FROM user_index i "
               "JOIN hashes h ON h.key = ? || i.member AND h.expires > ? "
               "JOIN fields f ON f.key = h.key AND f.field IN (?, ?, ?, ?) "
               "WHERE i.user = ? AND i.score >= ? AND i.expires > ? ORDER BY i.score, i.member")
        now = time.time()
        with self._tx("session list", "BEGIN") as conn:
            rows = conn.execute(sql, (self._p, now, *_META, self._p + user, since, now)).fetchall()
        found: dict[str, dict[str, bytes]] = {}
        for member, field, value in rows:
            found.setdefault(member, {})[field] = value
        return [(m, fields) for m, fields in found.items() if "m:c" in fields]

    def claim(self, name: str, value: bytes, ttl_ms: int) -> bytes | None:
        with self._tx("session claim") as conn:
            now = time.time()
            taken = self._peek(conn, name, now)
            if taken is not None:
                return taken
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (name, value, now + ttl_ms / 1000))
            return None

    def peek(self, name: str) -> bytes | None:
        with self._tx("session claim", "BEGIN") as conn:
            return self._peek(conn, name, time.time())

    @staticmethod
    def _peek(conn: sqlite3.Connection, name: str, now: float) -> bytes | None:
        row = conn.execute("SELECT value FROM claims WHERE name = ? AND expires > ?", (name, now)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            self._closed, conns, self._conns = True, self._conns, []
        for conn in conns:
            conn.close()
