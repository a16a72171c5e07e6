"""The idle-connection check (review 17, h10): a kept connection idle for more than
``STALE_CHECK_AFTER`` is checked (``can_read``: a ``poll``) before a command is sent on
it only when the command is one the retry rule never sends twice (a write, a script).
An idempotent read skips it: on a connection the server closed while idle it fails as
dropped and is sent once more, on a new connection. Sync and asyncio, against a real
server; the close is a ``CLIENT KILL ID`` of the transport's own connection, waited
for at its socket (bounded), and "idle" is the connection's last use moved back (no
sleep)."""

from __future__ import annotations

import select
import sys
from typing import Any

import pytest
import redis
from test_review17_aio_get_path import _run  # (its URL options: retries=0)

from statekit.redis import call_with_rule, retry_policy
from statekit.redis.aio import AsyncTransport
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis

#: generous: nothing here waits for a timeout
URL_OPTIONS = "?socket_timeout=10&socket_connect_timeout=10"


def _closed_by_server(url: str, client_id: int, sock: Any) -> None:
    """``CLIENT KILL ID client_id`` from another connection, then wait (10 s at
    most) until *sock* has the server's close to read (nothing read here)."""
    with redis.Redis.from_url(url) as admin:
        assert admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1
    readable, _, _ = select.select([sock], [], [], 10)
    assert readable, "the server's close did not reach the socket within 10 s"


def _count(obj: Any, name: str, caller: str | None = None) -> list[int]:
    """Count the calls of *obj*'s method *name* (an instance attribute; still run)
    made from a function named *caller* (any: ``None``). Not the ones redis-py
    makes itself: a reconnect's handshake sends its own commands, and the asyncio
    pool checks a connection it lends (``can_read``)."""
    calls: list[int] = []
    real = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        if caller is None or sys._getframe(1).f_code.co_name == caller:
            calls.append(1)
        return real(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


# -- sync ------------------------------------------------------------------------------


def _sync_killed(url: str) -> tuple[Transport, Any, list[int], list[int]]:
    """A transport whose kept connection the server closed while it was idle, with
    the counts of its ``can_read`` and ``send_packed_command`` calls from now on."""
    t = Transport(redis.Redis.from_url(url + URL_OPTIONS), what="test")
    t.command(b"SET", "stale-check", b"v")
    client_id = t.command(b"CLIENT", b"ID")
    lane = t._lane()
    assert lane is not None
    conn = lane.conn
    _closed_by_server(url, client_id, conn._sock)
    lane.last -= 1  # idle for a second: past STALE_CHECK_AFTER
    return t, lane, _count(conn, "can_read", "freshen"), _count(conn, "send_packed_command", "_send_on")


def test_sync_a_read_on_a_connection_closed_while_idle_is_sent_again_unchecked(redis_url: str) -> None:
    """(a), (c): the GET is sent without the check, fails on the closed connection
    and is sent once more, on a new one: the value, two sends, no ``can_read``."""
    t, lane, checks, sends = _sync_killed(redis_url)
    try:
        assert t.command(b"GET", "stale-check") == b"v"
        assert (len(checks), len(sends)) == (0, 2)
    finally:
        t.close()


def test_sync_a_write_on_a_connection_closed_while_idle_is_checked_before_sending(redis_url: str) -> None:
    """(b): the INCR finds the connection closed before sending (one ``can_read``),
    reconnects and is sent once: applied once, no unknown outcome."""
    t, lane, checks, sends = _sync_killed(redis_url)
    try:
        t.command(b"SET", "stale-n", b"1")  # a write: checked, found closed, sent once
        assert (len(checks), len(sends)) == (1, 1)
        assert t.command(b"INCR", "stale-n") == 2
    finally:
        t.close()


def test_sync_a_write_a_moment_after_the_last_command_is_not_checked(redis_url: str) -> None:
    """The check is for a connection idle past STALE_CHECK_AFTER only (unchanged)."""
    t = Transport(redis.Redis.from_url(redis_url + URL_OPTIONS), what="test")
    try:
        t.command(b"SET", "stale-fresh", b"0")
        lane = t._lane()
        assert lane is not None
        checks = _count(lane.conn, "can_read", "freshen")
        lane.last = float("inf")  # (just used, however slow the machine)
        t.command(b"INCR", "stale-fresh")
        assert not checks
        lane.last = 0.0  # long idle
        assert t.command(b"INCR", "stale-fresh") == 2
        assert len(checks) == 1
    finally:
        t.close()


def test_a_read_sent_again_after_a_drop_retries_a_refused_reconnect() -> None:
    """call_with_rule (pure logic): the read's one resend goes through the retry
    policy, so a reconnect refused on the way (a restarting server, found by the
    read instead of by the idle check it skips) is retried with backoff as any
    unsent command; a second unknown outcome is not sent a third time."""
    from statekit.redis import _rule

    rule = _rule()
    attempts: list[str] = []
    script = [rule.OutcomeUnknown("dropped"), redis.ConnectionError("refused"), "value"]

    def do() -> Any:
        attempts.append("try")
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    assert call_with_rule(do, lambda e: None, retry_policy(2, cap=0.01), read=True) == "value"
    assert len(attempts) == 3
    twice = [rule.OutcomeUnknown("dropped"), rule.OutcomeUnknown("dropped again"), "never"]
    script[:] = twice
    attempts.clear()
    with pytest.raises(rule.OutcomeUnknown, match="dropped again"):
        call_with_rule(do, lambda e: None, retry_policy(2, cap=0.01), read=True)
    assert len(attempts) == 2


# -- asyncio ---------------------------------------------------------------------------


async def _client_id(conn: Any) -> int:
    await conn.send_command("CLIENT", "ID")
    return int(await conn.read_response())


def _count_checks(conn: Any) -> list[int]:
    """Count the transport's checks of *conn* (``can_read``, or redis-py 5's
    ``can_read_destructive``, from ``_usable``)."""
    name = "can_read" if hasattr(conn, "can_read") else "can_read_destructive"
    return _count(conn, name, "_usable")


async def _async_killed(url: str, t: AsyncTransport, count: int = 1) -> list[list[int]]:
    """*count* kept idle connections of *t*, each closed by the server and idle past
    STALE_CHECK_AFTER; their ``can_read`` counts."""
    await t.command(b"SET", "stale-check", b"v")
    conns = [t._idle.pop()]
    while len(conns) < count:
        conns.append(await t._checkout())
    counts = []
    for conn in conns:
        _closed_by_server(url, await _client_id(conn), conn._writer.get_extra_info("socket"))
        counts.append(_count_checks(conn))
        await t._put(conn)
        conn._statekit_last -= 1  # idle for a second: past STALE_CHECK_AFTER
    assert len(t._idle) == count
    return counts


def test_async_a_read_on_a_connection_closed_while_idle_is_sent_again_unchecked(redis_url: str) -> None:
    """(a), (c): the GET takes the idle connection unchecked, fails on it and is sent
    once more (``_resend``) on a new one: the value, no ``can_read``."""

    async def body(t: AsyncTransport) -> tuple[Any, int, int]:
        (checks,) = await _async_killed(redis_url, t)
        resends = _count(t, "_resend")
        value = await t.command(b"GET", "stale-check")
        return value, len(checks), len(resends)

    assert _run(redis_url, body) == (b"v", 0, 1)


def test_async_a_write_on_a_connection_closed_while_idle_is_checked_before_sending(redis_url: str) -> None:
    """(b): the SET's connection is checked (one ``can_read``), found closed and
    replaced before sending: applied once, no unknown outcome, no resend."""

    async def body(t: AsyncTransport) -> tuple[Any, int, int, Any]:
        (checks,) = await _async_killed(redis_url, t)
        resends = _count(t, "_resend")
        reply = await t.command(b"SET", "stale-n", b"1")
        return reply, len(checks), len(resends), await t.command(b"INCR", "stale-n")

    assert _run(redis_url, body) == (b"OK", 1, 0, 2)


def test_async_a_read_is_sent_again_on_a_checked_connection(redis_url: str) -> None:
    """Two kept connections closed while idle (a restarted server closes them all):
    the read fails on the first, unchecked, and its one resend takes the second only
    after checking it (found closed: a new connection), so the read succeeds."""

    async def body(t: AsyncTransport) -> tuple[Any, list[int]]:
        counts = await _async_killed(redis_url, t, count=2)
        value = await t.command(b"GET", "stale-check")
        return value, [len(c) for c in counts]

    # the last kept is taken first (unchecked); the other is checked at the resend
    assert _run(redis_url, body) == (b"v", [1, 0])
