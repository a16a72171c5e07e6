"""Review 15 of the sync Redis transport (statekit/redis/transport.py), against the
suite's real servers: where a connection's address is read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from statekit.redis import create_client
from statekit.redis import transport as transport_module
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any, Any]]:
    """What the transport reports to redis-py's metrics hook (this thread's commands:
    the name and the server address and port redis-py's metrics carry)."""
    seen: list[tuple[str, Any, Any]] = []

    def record(command_name: str, duration_seconds: float, server_address: Any, server_port: Any,
               *args: Any, **kwargs: Any) -> None:
        seen.append((command_name, server_address, server_port))

    monkeypatch.setattr(transport_module, "METRICS", SimpleNamespace(on=lambda: True, record=record))
    return seen


def test_metrics_name_the_master_a_sentinel_connection_reconnected_to(redis_sentinel: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """After a failover this thread's connection reconnects to the new master (the
    sentinels name it): the commands it sends there are reported to redis-py's
    metrics with the new master's address, as redis-py reports its own (it reads the
    connection's host and port at each command). The address was read once, when the
    connection was first checked out: every command after the failover was reported
    as the old master's (a replica now). A maintenance notification (``MOVING``) that
    moves a connection to another host changes it the same way."""
    seen = _recorded(monkeypatch)
    t = Transport(create_client(redis_sentinel.url), what="test")
    old = redis_sentinel.master_port()
    assert t.command(b"SET", "k", "before") == b"OK"
    assert seen[-1] == ("SET", "127.0.0.1", old)
    with redis_sentinel.master.client() as direct:
        direct.execute_command("WAIT", 1, 5000)
    new = redis_sentinel.failover()
    assert new != old
    assert t.command(b"SET", "k", "after") == b"OK"  # refused unapplied by the old one, sent to the new
    assert t.command(b"GET", "k") == b"after"
    lane = t._here().lane
    assert (lane.conn.host, lane.conn.port) == ("127.0.0.1", new)
    assert seen[-2:] == [("SET", "127.0.0.1", new), ("GET", "127.0.0.1", new)]

