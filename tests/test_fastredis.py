"""The shared pool-free Redis transport (statekit.redis.fast), against real servers."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.embedded import RedisServer
from statekit.errors import BackendUnavailable
from statekit.pytest_plugin import run_threads, wait_for
from statekit.redis import create_client
from statekit.redis.fast import (
    FastTransport,
    RedisReplyError,
    SharedConnection,
    _FastConnection,
    fast_params,
    make_reader,
    pack_command,
    script_sha,
)

pytestmark = pytest.mark.redis

SOURCE = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
SHA = script_sha(SOURCE)


def _transport(url: str, **kw: object) -> FastTransport:
    return FastTransport(create_client(url + "?socket_timeout=0.5&socket_connect_timeout=0.5&retries=0"),
                         what="test", **kw)  # type: ignore[arg-type]


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_command_round_trip_on_the_fast_path(redis_url: str) -> None:
    t = _transport(redis_url)
    assert t.fast_params is not None
    assert t.command(b"SET", "k", b"v\x00\xff") == b"OK"
    assert t.command("GET", "k") == b"v\x00\xff"
    assert t.command("HSET", "h", "a", 1, "b", 2.5) == 2
    assert t.command("HGETALL", "h") == [b"a", b"1", b"b", b"2.5"]
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        t.command("GET", "h")
    assert t.command("GET", "missing") is None  # the socket is still in step after an error
    t.close()


def test_script_reloads_after_noscript(redis_url: str) -> None:
    t = _transport(redis_url)
    r = redis.Redis.from_url(redis_url)
    r.script_flush()
    assert t.script(SHA, SOURCE, ["n"], ["x"]) == [b"n", b"x", 1]
    assert t.script(SHA, SOURCE, ["n"], ["y"]) == [b"n", b"y", 2]
    r.script_flush()
    assert t.script(SHA, SOURCE, ["n"], [3]) == [b"n", b"3", 3]
    bad = "return redis.call('NOPE')"
    with pytest.raises(RedisReplyError):
        t.script(script_sha(bad), bad, [], [])


def test_redis_py_fallback_gives_the_same_results(redis_url: str) -> None:
    t = _transport(redis_url, fast_path=False)
    assert t.fast_params is None
    redis.Redis.from_url(redis_url).script_flush()
    assert t.script(SHA, SOURCE, ["n"], ["x"]) == [b"n", b"x", 1]
    assert t.command("SET", "k", "v") is True  # redis-py's reply callbacks apply
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        t.command("HGETALL", "k")
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    assert fast_params(decoding) is None  # replies would differ in type


def test_restart_stale_socket_is_replaced_before_sending(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("SET", "k", "1") == b"OK"
    private_redis.restart()
    # the old socket was closed by the restart: found closed and replaced before
    # anything was sent on it (a command sent is never sent again)
    assert t.command("SET", "k", "2") == b"OK"
    assert t.command("GET", "k") == b"2"
    assert t.script(SHA, SOURCE, ["n"], ["a"]) == [b"n", b"a", 1]  # script cache was empty


def test_killed_server_raises_backend_unavailable(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("PING") == b"PONG"
    private_redis.kill()
    with pytest.raises(BackendUnavailable):
        t.command("PING")
    with pytest.raises(BackendUnavailable):
        t.script(SHA, SOURCE, ["n"], ["a"])
    private_redis.start()
    assert t.command("PING") == b"PONG"


def test_paused_server_times_out_with_backend_unavailable(private_redis: RedisServer) -> None:
    t = _transport(private_redis.url)
    assert t.command("PING") == b"PONG"
    with private_redis.client() as c:
        c.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    with pytest.raises(BackendUnavailable):
        t.command("PING")  # times out after 0.5 s; the socket is dropped
    with private_redis.client() as c:
        c.execute_command("CLIENT", "UNPAUSE")
    assert t.command("PING") == b"PONG"  # a fresh socket, in step


def test_one_socket_per_thread(redis_url: str) -> None:
    t = _transport(redis_url)
    mine = t.command("CLIENT", "ID")
    assert t.command("CLIENT", "ID") == mine  # reused by this thread
    ids: list[int] = []
    threads = [threading.Thread(target=lambda: ids.append(t.command("CLIENT", "ID"))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(ids) == 3 and len({mine, *ids}) == 4


def test_fork_gets_a_new_socket_in_the_child(redis_url: str) -> None:
    t = _transport(redis_url)
    parent_id = t.command("CLIENT", "ID")
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its connection id, never touch the parent's socket
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
    assert t.command("CLIENT", "ID") == parent_id  # the parent's socket is intact


@pytest.mark.parametrize("near", [0, 100], ids=["own-socket", "shared-socket"])
def test_session_writes_survive_connections_closed_while_idle(redis_url: str, near: int) -> None:
    """An idle socket the server closed (an idle timeout, CLIENT KILL) is replaced
    before a write is sent on it: no error, and the write applied once."""
    from statekit.sessions import SessionStore

    store = SessionStore(redis_url, secret_keys=["k"], near_cache=near)
    session = store.create({"n": 0})
    assert store.incr(session, "n") == 1
    for expected in (2, 3, 4):
        with redis.Redis.from_url(redis_url) as admin:
            admin.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.01)  # idle: checked before sending
        assert store.incr(session, "n") == expected
    loaded = store.load(session.sid)
    assert loaded is not None and loaded["n"] == 4


def test_session_store_uses_it_and_survives_a_restart(private_redis: RedisServer) -> None:
    from statekit.sessions import SessionStore

    url = private_redis.url + "?socket_timeout=0.5&socket_connect_timeout=0.5&retries=0"
    store = SessionStore(url, secret_keys=["k"])
    assert store.engine.transport.fast_params is not None  # type: ignore[union-attr]
    s = store.create({"a": 1})
    cookie = store.sign(s.sid)
    assert store.open(cookie) == {"a": 1}
    private_redis.restart()  # no persistence: the data is gone, the old socket is stale
    assert store.open(cookie).new  # the stale socket was replaced: a fresh session, no error
    fresh = store.create({"b": 2})
    private_redis.kill()
    with pytest.raises(BackendUnavailable):
        store.open(store.sign(fresh.sid))
    with pytest.raises(BackendUnavailable):
        store.save(store.create({"c": 3}))


def test_cpu_pressure_turns_busy_polling_off_when_cpus_are_oversubscribed(tmp_path: Path) -> None:
    from statekit.redis.fast import _CpuPressure

    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.50 0.40 0.30 1/120 4242\n")  # only the sampler runs
    pressure = _CpuPressure(str(loadavg))
    pressure.cpus = 2
    assert pressure() is False
    loadavg.write_text("5.00 4.00 3.00 9/120 4242\n")  # 8 others runnable on 2 CPUs
    for _ in range(5):
        pressure.next = 0.0  # skip the 20 ms sampling interval
        pressure()
    assert pressure.busy is True
    loadavg.write_text("0.50 0.40 0.30 1/120 4242\n")
    for _ in range(10):
        pressure.next = 0.0
        pressure()
    assert pressure.busy is False


def test_cpu_pressure_is_never_busy_without_proc_loadavg(tmp_path: Path) -> None:
    from statekit.redis.fast import _CpuPressure

    pressure = _CpuPressure(str(tmp_path / "missing"))
    assert pressure() is False
    assert pressure.next == float("inf")


# -- SharedConnection: one socket for all threads, pipelined ---------------------------


class _Patient(SharedConnection):
    RECHECK = 5.0  # a lost hand-off shows as a recheck (and a 5 s stall), not as 50 ms


def _shared(url: str, cls: type[SharedConnection] = _Patient, timeout: float = 2) -> SharedConnection:
    client = create_client(url + f"?socket_timeout={timeout}&socket_connect_timeout=0.5&retries=0")
    params = fast_params(client)
    assert params is not None
    return cls(_FastConnection(params, make_reader))


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # the test inspects it
            out.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def test_shared_connection_hands_every_thread_its_own_reply(redis_url: str) -> None:
    """8 threads x 300 commands on one socket, replies of mixed sizes (some span
    several reads): each thread gets exactly the replies to its own commands."""
    conn = _shared(redis_url)
    mine = conn.call(pack_command(("CLIENT", "ID")))
    wrong: list[str] = []
    ids: set[object] = set()

    def run(i: int) -> None:
        for j in range(300):
            payload = f"{i}:{j}:" + "x" * ((i * 7919 + j * 104729) % 70000)
            if conn.call(pack_command(("ECHO", payload))) != payload.encode():
                wrong.append(f"{i}:{j}")
            ids.add(conn.call(pack_command(("CLIENT", "ID"))))

    run_threads(run, 8)
    assert not wrong
    assert ids == {mine}  # all on one connection
    assert not conn._queue and conn.broken is None
    assert conn.rechecks == 0  # every waiting thread was woken by a hand-off


def _blpop_then_ping(conn: SharedConnection, redis_url: str) -> tuple[list[object], list[object]]:
    """A BLPOP in flight on *conn* (its thread leads, blocked), a PING sent behind
    it, then the BLPOP served: what each thread got (a reply or an exception)."""
    key = f"q-{os.getpid()}-{threading.get_ident()}"
    blpop, got_pop = _in_thread(lambda: conn.call(pack_command(("BLPOP", key, 5))))
    wait_for(lambda: len(conn._queue) == 1, 10, "the BLPOP in flight")
    ping, got_ping = _in_thread(lambda: conn.call(pack_command(("PING",))))
    wait_for(lambda: len(conn._queue) == 2, 10, "the PING sent behind it")
    with redis.Redis.from_url(redis_url) as r:
        r.rpush(key, key.encode())
    blpop.join(10)
    ping.join(10)
    assert not blpop.is_alive() and not ping.is_alive()
    return got_pop, got_ping


def test_shared_connection_sends_while_another_thread_waits(redis_url: str) -> None:
    """A thread does not wait for another thread's round trip before sending (as a
    lock around the whole call would make it): a blocked BLPOP and a PING are in
    flight together, and each gets its own reply when the BLPOP is served."""
    got_pop, got_ping = _blpop_then_ping(_shared(redis_url), redis_url)
    assert len(got_pop) == 1 and isinstance(got_pop[0], list) and got_pop[0][0] == got_pop[0][1]
    assert got_ping == [b"PONG"]


def test_shared_connection_wakes_a_thread_that_was_slow_to_start_waiting(redis_url: str) -> None:
    """The lead is handed over even when the leader finishes between a thread's
    failed try for the read lock and its going to sleep (no hand-off can reach it
    then): it must find the read lock free instead of sleeping until a re-check."""
    gate = threading.Event()

    class SlowToSleep(_Patient):
        def _sleep(self, me: Any) -> None:
            gate.wait(10)  # the leader finishes meanwhile
            super()._sleep(me)

    conn = _shared(redis_url, SlowToSleep, timeout=10)
    k1, k2 = (f"q{i}-{os.getpid()}-{threading.get_ident()}" for i in (1, 2))
    first, got_first = _in_thread(lambda: conn.call(pack_command(("BLPOP", k1, 10))))
    wait_for(lambda: len(conn._queue) == 1, 10, "the first BLPOP in flight (its thread leads)")
    second, got_second = _in_thread(lambda: conn.call(pack_command(("BLPOP", k2, 10))))
    wait_for(lambda: len(conn._queue) == 2, 10, "the second BLPOP sent")
    with redis.Redis.from_url(redis_url) as r:
        r.rpush(k1, b"a")
        first.join(10)  # the leader is done and has passed the lead: nobody to wake yet
        gate.set()
        r.rpush(k2, b"b")
    second.join(10)
    assert got_first == [[k1.encode(), b"a"]] and got_second == [[k2.encode(), b"b"]]
    assert conn.rechecks == 0


class _InterruptOnce:
    """A socket whose next ``sendall`` raises ``KeyboardInterrupt`` (as a signal
    handler's exception would, between queueing a command and sending it)."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.armed = sock, True

    def sendall(self, data: bytes) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt("simulated")
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_shared_connection_interrupted_send_never_misroutes_a_reply(redis_url: str) -> None:
    """A command queued but not sent (interrupted) would shift every later reply to
    the wrong thread: another user's session. The connection is failed instead."""
    conn = _shared(redis_url)
    conn.conn.sock = _InterruptOnce(conn.conn.sock)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        conn.call(pack_command(("ECHO", "ghost")))
    assert conn.broken is not None
    with pytest.raises(ConnectionResetError):  # not "ghost"'s slot: refused, callers reopen
        conn.call(pack_command(("ECHO", "alice")))


def test_shared_connection_interrupted_hand_out_leaves_nobody_waiting(redis_url: str) -> None:
    """An interrupt in the leader while it hands out another thread's reply fails
    the connection; the other thread still finishes (it used to spin for ever)."""
    conn = _shared(redis_url)

    class InterruptSecondPop(deque):  # type: ignore[type-arg]
        pops = 0

        def popleft(self) -> Any:
            w = super().popleft()
            InterruptSecondPop.pops += 1
            if InterruptSecondPop.pops == 2:
                raise KeyboardInterrupt("simulated")
            return w

    conn._queue = InterruptSecondPop()
    got_leader, got_other = _blpop_then_ping(conn, redis_url)  # both threads finish
    assert isinstance(got_leader[0], KeyboardInterrupt)
    assert got_other == [b"PONG"]  # its reply was handed over before the interrupt
    assert conn.broken is not None


def test_shared_connection_skips_a_waiter_interrupted_while_sleeping(redis_url: str) -> None:
    """The lead goes to the oldest waiter whose thread still waits: handing it to
    one that was interrupted would leave the next one asleep until a re-check."""

    class InterruptH(_Patient):
        def _sleep(self, me: Any) -> None:
            if threading.current_thread().name == "H":
                raise KeyboardInterrupt("simulated")
            super()._sleep(me)

    conn = _shared(redis_url, InterruptH, timeout=10)
    k1, k2 = (f"q{i}-{os.getpid()}-{threading.get_ident()}" for i in (1, 2))
    leader, got_leader = _in_thread(lambda: conn.call(pack_command(("BLPOP", k1, 10))))
    wait_for(lambda: len(conn._queue) == 1, 10, "the leader's BLPOP in flight")
    h = threading.Thread(target=lambda: pytest.raises(KeyboardInterrupt, conn.call,
                                                       pack_command(("BLPOP", k2, 10))), name="H")
    h.start()
    h.join(10)
    tail, got_tail = _in_thread(lambda: conn.call(pack_command(("PING",))))
    wait_for(lambda: len(conn._queue) == 3, 10, "the PING behind the interrupted BLPOP")
    with redis.Redis.from_url(redis_url) as r:
        r.rpush(k1, b"a")
        leader.join(10)
        r.rpush(k2, b"b")  # the interrupted command's reply comes first, then PONG
    tail.join(10)
    assert got_leader == [[k1.encode(), b"a"]] and got_tail == [b"PONG"]
    assert conn.rechecks == 0 and conn.broken is None


def test_shared_connection_failure_fails_every_command_in_flight(redis_url: str) -> None:
    conn = _shared(redis_url)
    cid = conn.call(pack_command(("CLIENT", "ID")))
    key = f"q-{os.getpid()}-{threading.get_ident()}"
    calls = [_in_thread(lambda: conn.call(pack_command(("BLPOP", key, 5)))) for _ in range(3)]
    wait_for(lambda: len(conn._queue) == 3, 10, "three commands in flight")
    with redis.Redis.from_url(redis_url) as r:
        r.execute_command("CLIENT", "KILL", "ID", cid)
    for th, out in calls:
        th.join(10)
        assert len(out) == 1 and isinstance(out[0], OSError), out
    assert isinstance(conn.broken, OSError)
    with pytest.raises(ConnectionResetError):  # never reused: callers open a new one
        conn.call(pack_command(("PING",)))


def test_shared_connection_timeout_fails_the_waiters(private_redis: RedisServer) -> None:
    client = create_client(private_redis.url + "?socket_timeout=0.3&socket_connect_timeout=0.5&retries=0")
    params = fast_params(client)
    assert params is not None
    conn = SharedConnection(_FastConnection(params, make_reader))
    assert conn.call(pack_command(("PING",))) == b"PONG"
    with private_redis.client() as c:
        c.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    calls = [_in_thread(lambda: conn.call(pack_command(("PING",)))) for _ in range(3)]
    for th, out in calls:
        th.join(10)
        assert len(out) == 1 and isinstance(out[0], OSError), out
    assert conn.broken is not None


def test_an_interrupted_call_never_leaves_its_reply_for_the_next(redis_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a socket error (a signal handler's, a time limit)
    between sending a command and reading its reply: the thread's socket is dropped,
    so its next command does not read the interrupted command's reply."""
    t = _transport(redis_url)
    assert t.command("SET", "a", "value-of-a") == b"OK"
    real = _FastConnection.read_reply

    def interrupted(self: _FastConnection) -> Any:
        monkeypatch.setattr(_FastConnection, "read_reply", real)
        raise KeyboardInterrupt("simulated")

    monkeypatch.setattr(_FastConnection, "read_reply", interrupted)
    with pytest.raises(KeyboardInterrupt):
        t.command("GET", "a")
    assert t.command("GET", "b") is None  # not b"value-of-a"
