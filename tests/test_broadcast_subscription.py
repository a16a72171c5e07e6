"""The Redis broadcast subscription's reads: straight from the connection
(``read_response(timeout=)``, redis-py 8) and through ``PubSub.parse_response``
(older redis-py, ``memory://``) give the same events, on every server line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from statekit.broadcast import Broadcaster, SharedValue
from statekit.broadcast import redis as bredis
from statekit.broadcast.memory import MemoryBackend
from statekit.broadcast.protocol import Message, Record, Subscribed
from statekit.pytest_plugin import wait_for
from statekit.redis import get_client


@pytest.fixture(params=[True, False], ids=["direct", "parse_response"])
def subscription(request: pytest.FixtureRequest, redis_line_url: str) -> Iterator[bredis.RedisSubscription]:
    prefix = f"sub{request.param:d}"
    sub = bredis.RedisSubscription(get_client(redis_line_url), prefix)
    assert sub.timed_reads  # a redis-py 8 connection of statekit's client
    sub.timed_reads = request.param
    yield sub
    sub.close()


def _next(sub: bredis.RedisSubscription) -> Any:
    """The next event that is not ``None`` (a timeout or a PONG)."""
    def event() -> list[Any]:
        got = sub.get(0.2)
        return [] if got is None else [got]  # Subscribed() is an empty tuple: falsy

    return wait_for(event, timeout=10, what="a subscription event")[0]


def test_events_in_order(subscription: bredis.RedisSubscription, redis_line_url: str) -> None:
    """Subscribed, then each publish as a Message with its name and record; nothing
    within the timeout is ``None``."""
    prefix = subscription._prefix.decode().split(":")[0]
    assert isinstance(_next(subscription), Subscribed)
    assert subscription.get(0.05) is None
    client = get_client(redis_line_url)
    client.publish(f"{prefix}:broadcast:users", b"e1 1 1700000000000 42")
    client.publish(f"{prefix}:broadcast:other", b"e1 7 1700000000001 \"x y\"")
    first, second = _next(subscription), _next(subscription)
    assert first == Message("users", Record(b"e1", 1, 1700000000000, b"42"))
    assert second == Message("other", Record(b"e1", 7, 1700000000001, b'"x y"'))


def test_each_message_is_counted_in_redis_py_metrics(
    subscription: bredis.RedisSubscription, redis_line_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's pub/sub metrics hook sees each message received, with its channel
    (what ``get_message`` records), on both reads; subscribe confirmations are not
    messages."""
    recorded: list[tuple[Any, Any]] = []

    def record(direction: Any, channel: Any) -> None:
        recorded.append((direction, channel))

    monkeypatch.setattr(bredis, "_record_received", record)
    prefix = subscription._prefix.decode().split(":")[0]
    assert isinstance(_next(subscription), Subscribed)
    get_client(redis_line_url).publish(f"{prefix}:broadcast:m", b"e1 1 1 1")
    assert isinstance(_next(subscription), Message)
    assert recorded == [(bredis._RECEIVE, f"{prefix}:broadcast:m")]


def test_idle_ping_is_answered(
    subscription: bredis.RedisSubscription, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle subscription PINGs; the PONG is read (not an event) and clears the
    wait, so no 'did not answer' error follows."""
    monkeypatch.setattr(bredis, "PING_EVERY", 0.05)
    monkeypatch.setattr(bredis, "PING_TIMEOUT", 0.5)
    assert isinstance(_next(subscription), Subscribed)
    wait_for(lambda: subscription.get(0.05) is None and subscription._pinged, what="a PING sent")
    wait_for(lambda: subscription.get(0.05) is None and not subscription._pinged, what="its PONG read")
    for _ in range(10):  # keeps pinging and reading the answers for > PING_TIMEOUT
        assert subscription.get(0.1) is None


def test_memory_subscription_reads_through_pubsub() -> None:
    """fakeredis's connection (``memory://``) has reads of its own: parse_response."""
    sub = MemoryBackend("bc-sub-reads", prefix="p").subscribe()
    try:
        assert not sub.timed_reads
        assert isinstance(_next(sub), Subscribed)
        assert sub.get(0) is None
    finally:
        sub.close()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "parse_response"])
def test_killed_subscriber_connection_recovers(
    direct: bool, redis_line_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The server drops the subscriber's connection: the hub subscribes again and a
    later publish is shown (with the direct read the drop raises and the hub
    reconnects; through parse_response redis-py reconnects itself)."""
    real = bredis._timed_reads
    monkeypatch.setattr(bredis, "_timed_reads", lambda conn: direct and real(conn))
    prefix = f"kill{direct:d}{abs(hash(request.node.nodeid)) % 10**6}"
    b = Broadcaster(redis_line_url, key_prefix=prefix)
    sv = SharedValue("k", default=0, url=redis_line_url, key_prefix=prefix)
    assert sv.get() == 0
    hub = sv._hub
    assert hub is not None
    wait_for(hub.connected.is_set, what="subscriber connected")
    resyncs = hub.counters.get("resyncs")
    client = get_client(redis_line_url)
    assert client.client_kill_filter(_type="pubsub") >= 1
    wait_for(lambda: hub.counters.get("resyncs") > resyncs, what="subscribed again")
    b.publish("k", 5)
    wait_for(lambda: sv.get() == 5, what="the publish after the drop")
    hub.stop()
