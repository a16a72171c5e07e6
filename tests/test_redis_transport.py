"""The one Redis transport (statekit.redis.transport), against real servers."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import redis

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.redis import create_client
from statekit.redis.scripts import Script
from statekit.redis.transport import RedisReplyError, Transport

pytestmark = pytest.mark.redis

SOURCE = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
SCRIPT = Script("test", SOURCE, __import__("hashlib").sha1(SOURCE.encode()).hexdigest().encode())
BAD_SOURCE = "return redis.call('NOPE')"
BAD = Script("bad", BAD_SOURCE, __import__("hashlib").sha1(BAD_SOURCE.encode()).hexdigest().encode())


def _transport(url: str, query: str = "socket_timeout=0.5&socket_connect_timeout=0.5&retries=0",
               **kw: object) -> Transport:
    return Transport(create_client(f"{url}?{query}"), what="test", **kw)  # type: ignore[arg-type]


def _in_thread(call: object) -> object:
    out: list[object] = []
    th = threading.Thread(target=lambda: out.append(call()))  # type: ignore[operator]
    th.start()
    th.join(10)
    return out[0]


def test_commands_round_trip_with_raw_replies(redis_url: str) -> None:
    t = _transport(redis_url)
    assert t.direct
    assert t.command(b"SET", "k", b"v\x00\xff") == b"OK"
    assert t.command("GET", "k") == b"v\x00\xff"
    assert t.command("HSET", "h", "a", 1, "b", 2.5) == 2
    assert t.command("HGETALL", "h") in ({b"a": b"1", b"b": b"2.5"}, [b"a", b"1", b"b", b"2.5"])
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        t.command("GET", "h")
    assert t.command("GET", "missing") is None  # still in step after an error reply
    t.close()
    assert t.command("GET", "k") == b"v\x00\xff"  # a new connection after close()


def test_reply_error_hook_maps_command_errors(redis_url: str) -> None:
    t = _transport(redis_url, reply_error=lambda m: ValueError(f"mapped: {m}"))
    t.command("SET", "k", "text")
    with pytest.raises(ValueError, match="mapped: ERR value is not an integer"):
        t.command("INCR", "k")


def test_script_reloads_after_noscript(redis_url: str) -> None:
    t = _transport(redis_url)
    r = redis.Redis.from_url(redis_url)
    r.delete("n")
    r.script_flush()
    assert t.script(SCRIPT, ["n"], ["x"]) == [b"n", b"x", 1]
    assert t.script(SCRIPT, ["n"], ["y"]) == [b"n", b"y", 2]
    r.script_flush()
    assert t.script(SCRIPT, ["n"], [3]) == [b"n", b"3", 3]  # loaded again, run once
    with pytest.raises(RedisReplyError):
        t.script(BAD, [], [])


def test_one_pool_connection_per_thread_given_back_when_the_thread_ends(redis_url: str) -> None:
    t = _transport(redis_url)
    pool = t.client.connection_pool
    mine = t.command("CLIENT", "ID")
    assert t.command("CLIENT", "ID") == mine  # reused by this thread
    ids = {_in_thread(lambda: t.command("CLIENT", "ID")) for _ in range(3)}
    assert mine not in ids
    # each ended thread gave its connection back: the next thread reuses one
    assert len(pool._available_connections) >= 1
    assert _in_thread(lambda: t.command("CLIENT", "ID")) in ids


def test_max_connections_bounds_the_threads_connections(redis_url: str) -> None:
    """``max_connections=2``: one thread keeps a connection of its own (the pool's
    kept share, :func:`~statekit.redis.transport.kept_share`), one is left for the
    rest, which every other thread borrows for each command (waiting for it, as
    statekit's bounded pool waits): a third thread's command works while two threads
    hold on, and the pool never opens more than 2 (the third thread failed with
    ``Too many connections`` when each thread kept one)."""
    t = _transport(redis_url, "max_connections=2&retries=0")
    pool = t.client.connection_pool
    held = threading.Event()
    release = threading.Event()
    replies: list[object] = []

    def hold() -> None:
        replies.append(t.command("PING"))
        held.set()
        release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for th in holders:
        th.start()
        assert held.wait(10)
        held.clear()
    try:
        assert _in_thread(lambda: t.command("PING")) == b"PONG"
        assert len(pool._connections) <= 2
    finally:
        release.set()
        for th in holders:
            th.join(10)
    assert replies == [b"PONG", b"PONG"]
    assert _in_thread(lambda: t.command("PING")) == b"PONG"  # connections given back


def test_client_name_and_credentials_come_from_redis_py(private_redis: RedisServer) -> None:
    with private_redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all")
    host, port = "127.0.0.1", private_redis.port
    t = Transport(create_client(f"redis://app:pw@{host}:{port}/2?client_name=statekit-test"))
    assert t.command("CLIENT", "GETNAME") == b"statekit-test"
    assert t.command("ACL", "WHOAMI") == b"app"
    t.command("SET", "in-db-2", "1")
    with private_redis.client() as admin:
        assert admin.execute_command("SELECT", 2) and admin.get("in-db-2") == b"1"


def test_a_ready_client_is_lent_with_the_rule_and_given_back_unchanged(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    t = Transport(client)
    assert t.command("PING") == b"PONG"
    conn = t._lane().conn
    assert type(conn).__name__ == "StatekitConnection"  # the retry rule applies while lent
    t.close()
    assert type(conn) is redis.Connection and conn in client.connection_pool._available_connections


def test_restart_stale_connection_is_replaced_before_sending(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("SET", "k", "1") == b"OK"
    private_redis.restart()
    time.sleep(0.01)
    # the old connection was closed by the restart: found closed and replaced before
    # anything was sent on it (with retries=0: no error means nothing failed)
    assert t.command("INCR", "k") == 1
    assert t.script(SCRIPT, ["n"], ["a"]) == [b"n", b"a", 1]  # the script cache was empty


def test_killed_server_raises_backend_unavailable(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("PING") == b"PONG"
    private_redis.kill()
    with pytest.raises(BackendUnavailable):
        t.command("PING")
    with pytest.raises(BackendUnavailable):
        t.script(SCRIPT, ["n"], ["a"])
    private_redis.start()
    assert t.command("PING") == b"PONG"


def test_paused_server_times_out_and_the_write_is_not_sent_again(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("INCR", "n") == 1
    with private_redis.client() as c:
        c.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    with pytest.raises(BackendUnavailable, match="outcome is unknown"):
        t.command("INCR", "n")  # times out after 0.5 s; never sent again
    with private_redis.client() as c:
        c.execute_command("CLIENT", "UNPAUSE")
        time.sleep(0.1)
        before = int(c.get("n") or 0)
    assert before in (1, 2)  # at most once (a paused client's command dies with its connection)
    assert t.command("INCR", "n") == before + 1  # a fresh connection, in step


def test_wrong_node_reply_is_backend_unavailable(redis_url: str) -> None:
    t = _transport(redis_url)
    source = "return redis.error_reply(\"READONLY You can't write against a read only replica.\")"
    readonly = Script("ro", source, __import__("hashlib").sha1(source.encode()).hexdigest().encode())
    with pytest.raises(BackendUnavailable, match="cannot write"):
        t.script(readonly, [], [])
    assert t.command("PING") == b"PONG"


def test_fork_gets_a_new_connection_in_the_child(redis_url: str) -> None:
    t = _transport(redis_url)
    parent_id = t.command("CLIENT", "ID")
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its connection id, never touch the parent's
        code = 1
        try:
            os.write(wr, str(t.command("CLIENT", "ID")).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        child_id = int(f.read() or b"-1")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id not in (-1, parent_id)
    assert t.command("CLIENT", "ID") == parent_id  # the parent's connection is intact


def test_unix_socket_client(private_redis: RedisServer) -> None:
    t = Transport(create_client(f"unix://{private_redis.unix_socket}?db=1"))
    assert t.direct
    assert t.command("SET", "u", "1") == b"OK"
    with private_redis.client() as admin:
        admin.execute_command("SELECT", 1)
        assert admin.get("u") == b"1"


def test_sentinel_client_sends_to_the_master(redis_sentinel: Any) -> None:
    t = Transport(create_client(redis_sentinel.url))
    assert t.direct
    assert t.command("SET", "s", "1") == b"OK"
    assert b"role:master" in t.command("INFO", "replication")


@pytest.mark.cluster
def test_cluster_routes_by_slot(redis_cluster_url: str) -> None:
    t = Transport(create_client(redis_cluster_url))
    assert t.cluster and not t.direct
    for i in range(20):  # keys spread over every master
        t.command("SET", f"k{i}", i)
    assert [t.command("GET", f"k{i}") for i in range(20)] == [str(i).encode() for i in range(20)]
    assert t.script(SCRIPT, ["{n}"], ["x"])[2] == 1
    with pytest.raises(RedisReplyError):
        t.command("HGETALL", "k1")


def test_a_transport_for_a_cluster_that_is_away_is_made_without_connecting() -> None:
    from statekit.embedded import free_port

    url = f"redis+cluster://127.0.0.1:{free_port(cluster=True)}?socket_connect_timeout=0.2"
    t = Transport(create_client(url))  # the app starts during a cluster outage
    assert t.cluster
    with pytest.raises(BackendUnavailable):
        t.command("GET", "x")


def test_a_script_refused_unapplied_then_unknown_to_the_new_node_is_loaded_there(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover: EVALSHA refused by the demoted master (nothing applied) is retried,
    and the new master, which never loaded the script, answers NOSCRIPT: load, run once."""
    from statekit.redis import _rule

    t = _transport(redis_url, "socket_timeout=0.5&retries=1")
    admin = redis.Redis.from_url(redis_url)
    admin.delete("n")
    admin.script_flush()
    send, sent = t._send, []

    def demoted_once(args: tuple[object, ...]) -> object:
        sent.append(args[0])
        if len(sent) == 1:
            raise _rule().NotApplied("READONLY You can't write against a read only replica (nothing applied)")
        return send(args)  # type: ignore[arg-type]

    monkeypatch.setattr(t, "_send", demoted_once)
    assert t.script(SCRIPT, ["n"], ["x"]) == [b"n", b"x", 1]
    assert sent == [b"EVALSHA", b"EVALSHA", b"SCRIPT", b"EVALSHA"]
    assert admin.get("n") == b"1"


def test_a_dropped_transport_gives_its_connection_back_at_once(redis_url: str) -> None:
    client = create_client(redis_url)
    pool = client.connection_pool
    t = Transport(client)
    t.command("PING")
    conn = t._lane().conn
    assert conn in pool._in_use_connections
    del t  # no garbage collection needed: no reference cycle holds it
    assert conn in pool._available_connections
