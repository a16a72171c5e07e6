"""The demo's SQL database: a users table and a log of every users-count query.

``DATABASE_URL`` picks the database: ``sqlite:///absolute/path.sqlite3`` (the default
is ``instance/demo.sqlite3`` next to this file) or ``postgresql://user:pw@host/db``
(needs ``psycopg``). Both the stateful app in ``before/`` and the migrated app use it,
so they count the same users.

Every call of :func:`count_users` writes one row to ``users_count_log`` (when, which
PID, which host): that table shows how many times the cluster asked the database
for the users count — once per interval with statekit's broadcaster, once per worker
per interval with a timer in every worker.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "add_photo", "add_user", "clock", "connect", "count_users", "database_url", "init_db", "joins_per_minute",
    "photos_of", "queries_since", "query_log",
]

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_URL = "sqlite:///" + os.path.join(HERE, "instance", "demo.sqlite3")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS users ("
    " name VARCHAR(64) PRIMARY KEY, joined_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS users_count_log ("
    " at DOUBLE PRECISION NOT NULL, pid INTEGER NOT NULL, host VARCHAR(255) NOT NULL,"
    " result INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS photos ("
    " key VARCHAR(255) PRIMARY KEY, owner VARCHAR(64) NOT NULL, name VARCHAR(255) NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
)


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or DEFAULT_URL


class _Conn:
    """A DB-API connection with one placeholder style (``?``) for both drivers."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cur = self.raw.cursor()
        cur.execute(sql, tuple(params))
        return cur


@contextmanager
def connect(url: str | None = None) -> Iterator[_Conn]:
    """A short-lived connection, committed on success (one per request or job)."""
    url = url or database_url()
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg  # type: ignore[import-not-found]

        raw = psycopg.connect(url, connect_timeout=5)
        conn = _Conn(raw, postgres=True)
    elif url.startswith("sqlite:///"):
        path = url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :]
        if not os.path.isabs(path):
            path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        raw = sqlite3.connect(path, timeout=15)
        conn = _Conn(raw, postgres=False)
    else:
        raise ValueError(f"DATABASE_URL must be sqlite:///path or postgresql://..., not {url!r}")
    try:
        yield conn
        raw.commit()
    finally:
        raw.close()


def init_db(url: str | None = None) -> None:
    """Create the tables (idempotent; safe when several workers start at once)."""
    for attempt in range(100):
        try:
            with connect(url) as conn:
                if not conn.postgres:
                    conn.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            return
        except Exception:  # sqlite "database is locked", a PostgreSQL catalog race: retry
            if attempt == 99:
                raise
            time.sleep(0.05)


def clock(timestamp: float) -> str:
    """``12:34:56 UTC``: the template filter both apps use for times."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(float(timestamp)))


def add_user(conn: _Conn, name: str) -> None:
    conn.execute(
        "INSERT INTO users (name, joined_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (name, time.time()),
    )


def add_photo(conn: _Conn, owner: str, key: str, name: str) -> None:
    conn.execute(
        "INSERT INTO photos (key, owner, name, created_at) VALUES (?, ?, ?, ?)",
        (key, owner, name[:255], time.time()),
    )


def photos_of(conn: _Conn, owner: str, limit: int = 12) -> list[tuple[str, str]]:
    """The newest photos of *owner*: ``(key, name)`` rows."""
    rows = conn.execute(
        "SELECT key, name FROM photos WHERE owner = ? ORDER BY created_at DESC LIMIT ?", (owner, limit)
    ).fetchall()
    return [(str(k), str(n)) for k, n in rows]


def count_users(conn: _Conn) -> int:
    """``SELECT count(*) FROM users``, logged in ``users_count_log``."""
    (n,) = conn.execute("SELECT count(*) FROM users").fetchone()
    conn.execute(
        "INSERT INTO users_count_log (at, pid, host, result) VALUES (?, ?, ?, ?)",
        (time.time(), os.getpid(), socket.gethostname(), int(n)),
    )
    return int(n)


def joins_per_minute(conn: _Conn, limit: int = 5) -> list[tuple[str, int]]:
    """The slow report's query: sign-ups per minute, newest first."""
    rows = conn.execute("SELECT joined_at FROM users ORDER BY joined_at DESC LIMIT 10000").fetchall()
    buckets: dict[str, int] = {}
    for (joined_at,) in rows:
        minute = time.strftime("%H:%M", time.gmtime(float(joined_at)))
        buckets[minute] = buckets.get(minute, 0) + 1
    return sorted(buckets.items(), reverse=True)[:limit]


def queries_since(conn: _Conn, since: float) -> int:
    """How many users-count queries the database answered since *since*."""
    (n,) = conn.execute("SELECT count(*) FROM users_count_log WHERE at >= ?", (since,)).fetchone()
    return int(n)


def query_log(conn: _Conn, since: float = 0.0) -> list[tuple[float, int, str]]:
    """The users-count queries made since *since*: ``(at, pid, host)`` rows."""
    rows = conn.execute(
        "SELECT at, pid, host FROM users_count_log WHERE at >= ? ORDER BY at", (since,)
    ).fetchall()
    return [(float(a), int(p), str(h)) for a, p, h in rows]
