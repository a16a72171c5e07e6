"""Review of issue 17's transport: an exception raised between sending a command and
reading its reply (a signal handler's, pytest-timeout's, KeyboardInterrupt) must never
leave that reply for the next command on the same connection to read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from test_redis_helpers import slow_script  # tests/ is on sys.path

from statekit.redis import _Rule, create_client
from statekit.redis import transport as transport_module
from statekit.redis.transport import Transport

pytestmark = pytest.mark.redis

# a reply that comes late (about 0.2 s): still in flight when the next command is sent
SLOW = slow_script(0.2)
SLOW_SOURCE = SLOW.source


class Interrupted(Exception):  # noqa: N818 - what a signal handler raises
    """Raised by a signal handler (or pytest-timeout) at an arbitrary bytecode."""


@pytest.fixture
def interrupt_next_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException | None]]:
    """Arm with ``armed.append(exc)``: the next reply read on a statekit connection
    raises *exc* before reading anything, as a signal handler that runs right after
    the command went out would (a ``None`` first lets one read through)."""
    armed: list[BaseException | None] = []
    real = _Rule.read_response
    # this test's thread only: a thread another test left running (a listener, a
    # subscriber) reads on statekit connections too and must not take the interruption
    mine = threading.get_ident()

    def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        if armed and not self._statekit_setup and threading.get_ident() == mine:
            item = armed.pop(0)
            if item is not None:
                raise item
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_Rule, "read_response", read_response)
    yield armed


def _transport(url: str) -> Transport:
    client = create_client(f"{url}?socket_timeout=2&socket_connect_timeout=1&retries=0")
    return Transport(client, what="test")


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), Interrupted("signal handler")],
                         ids=["KeyboardInterrupt", "Exception"])
def test_a_reply_left_in_flight_by_an_interruption_is_never_read_by_the_next_command(
        redis_url: str, interrupt_next_read: list[BaseException | None], exc: BaseException) -> None:
    r = redis.Redis.from_url(redis_url)
    r.set("bob:profile", b"bob's data")
    r.script_load(SLOW_SOURCE)
    t = _transport(redis_url)
    assert t.command(b"PING") == b"PONG"  # connected
    interrupt_next_read.append(exc)
    with pytest.raises(type(exc)):
        t.script(SLOW, [], [b"alice's data"])
    assert t.command(b"GET", "bob:profile") == b"bob's data"  # not alice's reply
    assert t.command(b"PING") == b"PONG"  # and in step afterwards


def test_an_interrupted_write_is_not_sent_again(redis_url: str,
                                                interrupt_next_read: list[BaseException | None]) -> None:
    r = redis.Redis.from_url(redis_url)
    r.delete("interrupted:n")
    t = _transport(redis_url)
    t.command(b"PING")
    interrupt_next_read.append(Interrupted("signal handler"))
    with pytest.raises(Interrupted):
        t.command(b"INCR", "interrupted:n")
    assert t.command(b"GET", "interrupted:n") == b"1"
    assert int(r.get("interrupted:n") or 0) == 1


def _leak_check(t: Transport, r: Any, armed: list[BaseException | None],
                exc: BaseException | None = None) -> None:
    """bob's GET after alice's interrupted slow script reads bob's data."""
    exc = exc or Interrupted("signal handler")
    r.set("{u}bob", b"bob's data")
    r.script_load(SLOW_SOURCE)
    assert t.command(b"GET", "{u}bob") == b"bob's data"  # connected
    armed.append(exc)
    with pytest.raises(type(exc)):
        t.script(SLOW, ["{u}alice"], [b"alice's data"])
    assert t.command(b"GET", "{u}bob") == b"bob's data"
    assert t.command(b"GET", "{u}bob") == b"bob's data"


def test_interrupted_on_the_instrumented_execute_command_path(
        redis_url: str, interrupt_next_read: list[BaseException | None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = redis.Redis.execute_command
    seen: list[str] = []

    def execute_command(self: Any, *args: Any, **options: Any) -> Any:  # as OpenTelemetry wraps it
        seen.append(str(args[0]))
        return real(self, *args, **options)

    execute_command.__wrapped__ = real  # type: ignore[attr-defined]
    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    _leak_check(_transport(redis_url), redis.Redis.from_url(redis_url), interrupt_next_read)
    assert seen.count("GET") == 3  # the path under test


def test_interrupted_on_sentinel(redis_sentinel: Any,
                                 interrupt_next_read: list[BaseException | None]) -> None:
    client = create_client(redis_sentinel.url)
    t = Transport(client)
    assert t.direct
    _leak_check(t, client, interrupt_next_read)


@pytest.mark.cluster
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), Interrupted("signal handler")],
                         ids=["KeyboardInterrupt", "Exception"])
def test_interrupted_on_cluster(redis_cluster_url: str, interrupt_next_read: list[BaseException | None],
                                exc: BaseException) -> None:
    client = create_client(redis_cluster_url)
    t = Transport(client)
    assert t.cluster
    _leak_check(t, client, interrupt_next_read, exc)


def test_a_connection_with_a_reply_in_flight_is_not_given_back_to_the_pool_as_is(
        redis_url: str, interrupt_next_read: list[BaseException | None]) -> None:
    client: Any = create_client(f"{redis_url}?socket_timeout=2")
    client.set("bob:profile", b"bob's data")
    client.script_load(SLOW_SOURCE)
    t = Transport(client, what="test")
    t.command(b"PING")
    interrupt_next_read.append(Interrupted("signal handler"))
    with pytest.raises(Interrupted):
        t.script(SLOW, [], [b"alice's data"])
    t.close()  # the connection goes back to the pool: redis-py's own calls take it next
    assert client.get("bob:profile") == b"bob's data"


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), Interrupted("signal handler")],
                         ids=["KeyboardInterrupt", "Exception"])
def test_interrupted_through_the_redis_py_client_of_a_url(
        redis_url: str, interrupt_next_read: list[BaseException | None], exc: BaseException) -> None:
    """redis-py's own calls on a statekit client (pipelines, listings) give the
    connection back to the pool whatever happened: it is dropped at the next checkout."""
    client: Any = create_client(f"{redis_url}?socket_timeout=2&max_connections=1")
    client.set("bob:profile", b"bob's data")
    sha = client.script_load(SLOW_SOURCE)
    interrupt_next_read.append(exc)
    with pytest.raises(type(exc)):
        client.evalsha(sha, 0, b"alice's data")
    assert client.get("bob:profile") == b"bob's data"


def test_a_pipeline_interrupted_after_its_first_reply(
        redis_url: str, interrupt_next_read: list[BaseException | None]) -> None:
    client: Any = create_client(f"{redis_url}?socket_timeout=2&max_connections=1")
    client.set("bob:profile", b"bob's data")
    sha = client.script_load(SLOW_SOURCE)
    pipe = client.pipeline(transaction=False)
    pipe.get("alice:profile")
    pipe.evalsha(sha, 0, b"alice's data")
    interrupt_next_read.extend([None, KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        pipe.execute()
    assert client.get("bob:profile") == b"bob's data"
    t = Transport(client, what="test")
    assert t.command(b"GET", "bob:profile") == b"bob's data"


def test_interrupted_through_the_redis_py_client_of_a_sentinel_url(
        redis_sentinel: Any, interrupt_next_read: list[BaseException | None]) -> None:
    client: Any = create_client(redis_sentinel.url)
    client.set("bob:profile", b"bob's data")
    sha = client.script_load(SLOW_SOURCE)
    interrupt_next_read.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        client.evalsha(sha, 0, b"alice's data")
    assert client.get("bob:profile") == b"bob's data"


def test_interrupted_inside_the_connect_handshake(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt after the handshake's first command went out (HELLO, AUTH):
    redis-py drops the connection (any exception in its handshake does), so the next
    command never reads that reply."""
    r = redis.Redis.from_url(redis_url)
    r.set("bob:profile", b"bob's data")
    t = _transport(redis_url)
    real = _Rule.read_response
    armed = [KeyboardInterrupt()]

    def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        if armed and self._statekit_setup:
            raise armed.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_Rule, "read_response", read_response)
    monkeypatch.setattr(transport_module, "STALE_CHECK_AFTER", 3600.0)  # no idle check to save it
    with pytest.raises(KeyboardInterrupt):
        t.command(b"GET", "bob:profile")
    assert t.command(b"GET", "bob:profile") == b"bob's data"
    assert t.command(b"PING") == b"PONG"
