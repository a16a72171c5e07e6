"""statekit.redis: clients for every Redis URL form, against real servers,
with timeouts and retries by default, and errors translated to BackendUnavailable."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

import statekit.redis as redis_backend
from statekit.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT, parse_url
from statekit.embedded import RedisCluster, RedisSentinel, RedisServer
from statekit.errors import BackendUnavailable, ConfigError, StatekitError
from statekit.redis import (
    create_client,
    get_client,
    is_cluster,
    reply_problem,
    retry_policy,
    translate_errors,
    with_rule,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel completes the
    handshake from the backlog) but never answers: a hung server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


# -- connection defaults ----------------------------------------------------------


def test_client_has_timeouts_and_retry_by_default() -> None:
    client = create_client(f"redis://127.0.0.1:{_closed_port()}/3")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == DEFAULT_CONNECT_TIMEOUT > 0
    assert kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT > 0
    assert kwargs["db"] == 3
    retry = kwargs["retry"]
    assert isinstance(retry, Retry)
    assert retry._retries >= 1
    assert isinstance(retry._backoff, ExponentialBackoff)
    assert redis.ConnectionError in retry._supported_errors
    assert redis.TimeoutError in retry._supported_errors
    assert kwargs["health_check_interval"] > 0


def test_url_options_reach_the_pool() -> None:
    client = create_client(
        f"redis://user:pw@127.0.0.1:{_closed_port()}/1?socket_timeout=0.5&socket_connect_timeout=0.25"
        "&retries=5&retry_backoff_cap=2&client_name=web&max_connections=7"
    )
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.5, 0.25)
    assert (kwargs["username"], kwargs["password"], kwargs["client_name"]) == ("user", "pw", "web")
    assert kwargs["retry"]._retries == 5
    assert kwargs["retry"]._backoff._cap == 2.0
    assert pool.max_connections == 7


def test_overrides_win_over_url_options() -> None:
    client = create_client(f"redis://127.0.0.1:{_closed_port()}?socket_timeout=0.5", socket_timeout=None)
    assert client.connection_pool.connection_kwargs["socket_timeout"] is None


def test_rediss_client_uses_tls_with_url_ssl_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"  # it must be there (test_config_review14)
    ca.write_text("")
    client = create_client(f"rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_ca_certs={ca}")
    pool = client.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)  # following the retry rule
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert pool.connection_kwargs["socket_connect_timeout"] == DEFAULT_CONNECT_TIMEOUT


def test_create_client_accepts_a_parsed_url() -> None:
    client = create_client(parse_url("redis://127.0.0.1:6390/2"))
    assert client.connection_pool.connection_kwargs["port"] == 6390


@pytest.mark.parametrize("url", ["s3://bucket", "memory://", "file:///tmp/x"])
def test_create_client_refuses_other_kinds(url: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used here|not a Redis URL"):
        create_client(url)
    with pytest.raises(ConfigError, match="not a Redis URL"):
        create_client(parse_url(url))


def test_unreachable_port_is_connection_error_then_backend_unavailable() -> None:
    client = create_client(f"redis://127.0.0.1:{_closed_port()}/0")
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(BackendUnavailable, match="Redis unavailable during cache get") as e:
        with translate_errors("cache get"):
            client.get("k")
    assert isinstance(e.value.__cause__, redis.ConnectionError)
    assert isinstance(e.value, StatekitError)


def test_hung_server_times_out_instead_of_blocking(silent_port: int) -> None:
    client = create_client(f"redis://127.0.0.1:{silent_port}/0?socket_timeout=0.2&retries=1")
    with pytest.raises(redis.TimeoutError):
        client.ping()
    with pytest.raises(BackendUnavailable) as e, translate_errors("session load"):
        client.get("k")
    assert isinstance(e.value.__cause__, redis.TimeoutError)


@pytest.mark.parametrize(("message", "problem"), [
    # Redis 6.2 wraps a script's READONLY in a script error (as redis.call or pcall)
    ("ERR Error running script (call to f_219bb33e): @user_script:1: @user_script: 1: "
     "-READONLY You can't write against a read only replica.", "wrong node"),
    ("@user_script: 1: -READONLY You can't write against a read only replica.", "wrong node"),
    # Redis 7+ and Valkey keep the code, with the script named after it
    ("READONLY You can't write against a read only replica. script: 219bb33e, on @user_script:1.",
     "wrong node"),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", "wrong node"),
    ("LOADING Redis is loading the dataset in memory", "not now"),
    ("CLUSTERDOWN The cluster is down", "not now"),
    ("NOAUTH Authentication required.", "authentication"),
    ("WRONGPASS invalid username-password pair or user is disabled.", "authentication"),
    ("ERR Protocol error: unauthenticated multibulk length", "authentication"),
    ("ERR Protocol error: unauthenticated bulk length", "authentication"),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
    ("ERR value is not an integer or out of range", None),
    ("ERR Error running script (call to f_1): @user_script:3: user error READONLY", None),
])
def test_reply_problem_reads_every_lines_wording(message: str, problem: str | None) -> None:
    assert reply_problem(message) == problem


def test_translate_errors_names_authentication() -> None:
    with pytest.raises(BackendUnavailable, match="refused authentication during cache get"), \
            translate_errors("cache get"):
        raise redis.AuthenticationError("invalid username-password pair or user is disabled.")
    with pytest.raises(BackendUnavailable, match="authentication"), translate_errors("session save"):
        raise redis.ResponseError("Protocol error: unauthenticated multibulk length")


def test_retry_policy_never_retries_a_command_whose_outcome_is_unknown() -> None:
    retry = retry_policy(retries=3, cap=0.001)
    attempts: list[int] = []

    def fails(error: Exception) -> Any:
        def call() -> Any:
            attempts.append(1)
            raise error
        return call

    rule = with_rule(redis.Connection)
    assert with_rule(rule) is rule and issubclass(rule, redis.Connection)
    unknown = redis_backend._rule().OutcomeUnknown("sent, no reply")
    for error, tries in [(redis.ConnectionError("refused"), 4), (redis.TimeoutError("connect"), 4),
                         (unknown, 1), (redis.AuthenticationError("WRONGPASS"), 1),
                         (redis_backend._rule().NotApplied("READONLY"), 4)]:
        attempts.clear()
        with pytest.raises(type(error)):
            retry.call_with_retry(fails(error), lambda _e: None)
        assert len(attempts) == tries, error


def test_translate_errors_lets_other_errors_through() -> None:
    with pytest.raises(KeyError), translate_errors("x"):
        raise KeyError("k")
    with pytest.raises(redis.ResponseError), translate_errors("x"):
        raise redis.ResponseError("WRONGTYPE")
    with translate_errors("nothing"):
        pass


# -- real servers, every scheme ---------------------------------------------------


@pytest.mark.redis
def test_redis_url_against_every_line(redis_line_url: str, redis_line_server: RedisServer) -> None:
    client = create_client(redis_line_url)
    assert client.ping() is True
    client.set("k", "v")
    assert client.get("k") == b"v"
    info = client.info("server")
    assert info.get("valkey_version", info["redis_version"]) == redis_line_server.version
    assert not is_cluster(client)


@pytest.mark.redis
def test_db_and_password_from_url(redis_server: RedisServer, redis_url: str) -> None:
    create_client(f"redis://127.0.0.1:{redis_server.port}/5").set("where", "db5")
    with redis_server.client(db=5) as c:
        assert c.get("where") == b"db5"
    with redis_server.client() as c:
        c.execute_command("ACL", "SETUSER", "alice", "on", ">pw1", "~*", "+@all")
    try:
        alice = create_client(f"redis://alice:pw1@127.0.0.1:{redis_server.port}/0")
        assert alice.execute_command("ACL", "WHOAMI") in (b"alice", "alice")
        wrong = create_client(f"redis://alice:nope@127.0.0.1:{redis_server.port}/0")
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        with redis_server.client() as c:
            c.execute_command("ACL", "DELUSER", "alice")


@pytest.mark.redis
def test_unix_socket_url(redis_server: RedisServer, redis_url: str) -> None:
    client = create_client(f"unix://{redis_server.unix_socket}?db=2")
    client.set("via", "unix")
    with redis_server.client(db=2) as c:
        assert c.get("via") == b"unix"
    assert client.connection_pool.connection_kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT


@pytest.mark.redis
def test_get_client_shares_one_client_per_url(redis_url: str) -> None:
    a = get_client(redis_url)
    assert get_client(redis_url) is a
    assert get_client(redis_url, socket_timeout=None) is not a
    assert get_client(redis_url, socket_timeout=None) is get_client(redis_url, socket_timeout=None)
    a.set("shared", 1)
    assert get_client(redis_url).get("shared") == b"1"


@pytest.mark.redis
def test_killed_server_is_backend_unavailable(redis_url: str) -> None:
    server = RedisServer()
    server.start()
    try:
        client = create_client(server.url)
        client.set("k", "v")
        server.kill()
        with pytest.raises(BackendUnavailable), translate_errors("cache set"):
            client.set("k", "w")
        server.start()
        assert client.get("k") is None  # the pool reconnects by itself; data was not persisted
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.cluster
def test_cluster_url(redis_cluster_url: str, redis_cluster: RedisCluster) -> None:
    client = create_client(redis_cluster_url)
    assert is_cluster(client)
    for i in range(30):
        client.set(f"key:{i}", i)
    assert [client.get(f"key:{i}") for i in range(30)] == [str(i).encode() for i in range(30)]
    # keys landed on more than one master: it is a real cluster
    holders = [n for n in redis_cluster.nodes if n.client().dbsize() > 0]
    assert len(holders) > 1
    kwargs: dict[str, Any] = client.get_default_node().redis_connection.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT
    assert kwargs["socket_connect_timeout"] == DEFAULT_CONNECT_TIMEOUT


def _create_redis_node_before_8_2(self: Any, host: str, port: int, **kwargs: Any) -> redis.Redis:
    """redis-py 6.0-8.1's NodesManager.create_redis_node: the node's kwargs go to Redis()."""
    from redis.backoff import NoBackoff

    node_retry = Retry(backoff=NoBackoff(), retries=0, supported_errors=(redis.ConnectionError,))
    return redis.Redis(host=host, port=port, retry=node_retry, **kwargs)


@pytest.mark.redis
@pytest.mark.cluster
@pytest.mark.parametrize("nodes_made", ["installed", "before-8.2"])
def test_cluster_nodes_follow_the_rule(redis_cluster_url: str, nodes_made: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproject allows redis>=6.0: before 8.2 a cluster passed ``connection_class`` to
    ``Redis()``, which refused it, and no cluster client ever connected."""
    import redis.cluster

    if nodes_made == "before-8.2":
        monkeypatch.setattr(redis.cluster.NodesManager, "create_redis_node", _create_redis_node_before_8_2)
    client = create_client(redis_cluster_url)
    for i in range(10):
        client.set(f"key:{i}", i)
    assert [client.get(f"key:{i}") for i in range(10)] == [str(i).encode() for i in range(10)]
    for node in client.get_nodes():
        pool = node.redis_connection.connection_pool
        assert issubclass(pool.connection_class, redis_backend._Rule), node
        assert all(isinstance(c, redis_backend._Rule) for c in pool._available_connections), node


@pytest.mark.redis
@pytest.mark.cluster
def test_cluster_down_is_translated() -> None:
    url = f"redis+cluster://127.0.0.1:{_closed_port()},127.0.0.1:{_closed_port()}"
    with pytest.raises(BackendUnavailable), translate_errors("cluster connect"):
        create_client(url).ping()


@pytest.mark.redis
@pytest.mark.sentinel
def test_sentinel_url_follows_failover(redis_sentinel: RedisSentinel) -> None:
    client = create_client(redis_sentinel.url)
    assert not is_cluster(client)
    pool = client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT
    assert pool.connection_kwargs["socket_connect_timeout"] == DEFAULT_CONNECT_TIMEOUT
    assert isinstance(pool.connection_kwargs["retry"], Retry)
    for sentinel in pool.sentinel_manager.sentinels:  # talking to the sentinels is bounded too
        assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT
    client.set("k", "before")
    with redis_sentinel.master.client() as direct:
        assert direct.get("k") == b"before"
        direct.execute_command("WAIT", 1, 5000)  # the replica has it before we fail over
    old = redis_sentinel.master_port()
    new = redis_sentinel.failover()
    assert new != old
    replica_ports = {r.port for r in redis_sentinel.replicas}
    assert new in replica_ports
    with redis_sentinel.master.client() as demoted:
        assert demoted.execute_command("ROLE")[0] == b"slave"
    # The old connection answers READONLY: nothing was applied, so the connection is
    # dropped and the command retried on a new one, which asks the sentinel for the
    # master (redis-py alone reconnects to the same address and fails once)
    client.set("k", "after")
    assert client.get("k") == b"after"
    with redis.Redis(port=new, socket_timeout=5) as promoted:
        assert promoted.get("k") == b"after"


@pytest.mark.redis
@pytest.mark.cluster
def test_cluster_that_lost_a_master_is_backend_unavailable(own_redis_cluster: RedisCluster) -> None:
    cluster = own_redis_cluster
    try:
        client = create_client(cluster.url)
        keys = [f"k{i}" for i in range(30)]
        for key in keys:
            client.set(key, 1)
        cluster.nodes[1].kill()
        survivor = cluster.nodes[0].client()
        for _ in range(200):  # bounded: the survivors notice after cluster-node-timeout
            if survivor.execute_command("CLUSTER INFO")["cluster_state"] == "fail":
                break
            time.sleep(0.05)
        assert survivor.execute_command("CLUSTER INFO")["cluster_state"] == "fail"
        dead = cluster.nodes[1].port
        on_dead = [k for k in keys if client.get_node_from_key(k).port == dead][:1]
        on_live = [k for k in keys if client.get_node_from_key(k).port != dead][:2]
        causes = {}
        for key in on_dead + on_live:
            with pytest.raises(BackendUnavailable) as e, translate_errors("cache get"):
                client.get(key)
            causes[key] = type(e.value.__cause__).__name__
        assert "ClusterDownError" in causes.values(), causes
    finally:
        cluster.stop()


@pytest.mark.redis
def test_write_to_a_replica_is_backend_unavailable(redis_server: RedisServer, redis_url: str) -> None:
    replica = RedisServer(args=["--replicaof", "127.0.0.1", str(redis_server.port)])
    replica.start()
    try:
        client = create_client(replica.url)
        with pytest.raises(BackendUnavailable) as e, translate_errors("session save"):
            client.set("k", "v")
        # the connection was dropped (the next command asks for the master again)
        # and the command retried, as READONLY says nothing was applied; then given up
        assert isinstance(e.value.__cause__, redis.ConnectionError)
        assert isinstance(e.value.__cause__.__cause__, redis.ReadOnlyError)
        assert "read only replica" in str(e.value)
    finally:
        replica.stop()


@pytest.mark.redis
def test_forked_child_gets_its_own_client(redis_url: str) -> None:
    parent_client = get_client(redis_url)
    parent_client.set("k", "from parent")
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            child_client = get_client(redis_url)
            if child_client is not parent_client and child_client.get("k") == b"from parent":
                child_client.set("k", "from child")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent_client.get("k") == b"from child"  # and the parent's pool still works


@pytest.mark.cluster
def test_a_cluster_that_is_away_at_start_does_not_stop_the_app_starting() -> None:
    """redis-py's RedisCluster fetches the slot map in its constructor; statekit's
    client is created at once and connects on first use: BackendUnavailable until
    the cluster answers, then it works (a worker can boot during a cluster outage)."""
    from statekit.cache import Cache
    from statekit.embedded import free_port
    from statekit.pytest_plugin import wait_for
    from statekit.sessions import SessionStore

    port = free_port(cluster=True)  # its bus port (port + 10000) must exist and be free
    url = f"redis+cluster://127.0.0.1:{port}?socket_connect_timeout=0.2&socket_timeout=0.5"
    client = create_client(url)  # no cluster yet: no error
    assert is_cluster(client)
    store = SessionStore(url, secret_keys=["k"])
    cache = Cache(url, prefix="lazy")
    for _ in range(2):  # and again: each use tries anew
        with pytest.raises(BackendUnavailable):
            client.get("x")
        with pytest.raises(BackendUnavailable):
            store.load("0000" + "a" * 43)
    with pytest.raises(BackendUnavailable):
        cache.set("k", 1)
    node = RedisServer(port=port, args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
    node.start()
    try:
        with node.client() as c:
            c.execute_command("CLUSTER ADDSLOTS", *range(16384))
            wait_for(lambda: c.execute_command("CLUSTER INFO").get("cluster_state") == "ok", timeout=20,
                     what="the one-node cluster")
        client.set("x", b"1")
        assert client.get("x") == b"1"
        session = store.create({"n": 1})
        loaded = store.load(session.sid)
        assert loaded is not None and loaded["n"] == 1
        cache.set("k", 2)
        assert cache.get("k") == 2
    finally:
        client.close()
        node.stop()


def test_rule_classes_are_built_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads reaching the retry rule together share one set of its classes (two
    ``OutcomeUnknown`` classes would let one thread's unknown outcome be retried)."""
    import threading

    monkeypatch.setattr(redis_backend, "_rules", None)
    barrier = threading.Barrier(16)
    seen: list[object] = []

    def build() -> None:
        barrier.wait()
        seen.append(redis_backend._rule())

    threads = [threading.Thread(target=build) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 16
    assert len({id(r) for r in seen}) == 1


# -- call_with_rule: the one retry rule, as the transport applies it --------------------


def _attempts(*outcomes: object) -> tuple[list[int], Any]:
    """A ``do()`` that raises or returns *outcomes* in turn, and its call count."""
    calls: list[int] = []

    def do() -> object:
        calls.append(1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, do


def _unknown(cause: BaseException) -> Exception:
    rule = redis_backend._rule()
    try:
        raise rule.OutcomeUnknown("no reply") from cause
    except rule.OutcomeUnknown as e:
        return e


def test_call_with_rule_never_sends_a_write_again() -> None:
    calls, do = _attempts(_unknown(redis.ConnectionError("reset")), "applied twice")
    dropped: list[Exception] = []
    with pytest.raises(redis.ConnectionError, match="no reply"):
        redis_backend.call_with_rule(do, dropped.append, retry_policy(3))
    assert len(calls) == 1 and len(dropped) == 1


def test_call_with_rule_sends_a_read_once_more_after_a_drop_not_after_a_timeout() -> None:
    calls, do = _attempts(_unknown(redis.ConnectionError("reset")), b"value")
    assert redis_backend.call_with_rule(do, lambda e: None, retry_policy(3), read=True) == b"value"
    assert len(calls) == 2
    calls, do = _attempts(_unknown(redis.TimeoutError("slow")), b"value")
    with pytest.raises(redis.ConnectionError):
        redis_backend.call_with_rule(do, lambda e: None, retry_policy(3), read=True)
    assert len(calls) == 1
    lost = _unknown(redis.ConnectionError("reset"))
    calls, do = _attempts(lost, lost, b"value")  # once only
    with pytest.raises(redis.ConnectionError):
        redis_backend.call_with_rule(do, lambda e: None, retry_policy(3), read=True)
    assert len(calls) == 2


def test_call_with_rule_retries_what_was_not_applied_but_not_authentication() -> None:
    refused = redis.ConnectionError("connection refused")
    calls, do = _attempts(refused, refused, b"OK")
    assert redis_backend.call_with_rule(do, lambda e: None, retry_policy(3, cap=0.001)) == b"OK"
    assert len(calls) == 3
    calls, do = _attempts(redis.AuthenticationError("WRONGPASS"), b"OK")
    with pytest.raises(redis.AuthenticationError):
        redis_backend.call_with_rule(do, lambda e: None, retry_policy(3, cap=0.001))
    assert len(calls) == 1
    calls, do = _attempts(refused, b"OK")  # no retry policy: raised as is
    with pytest.raises(redis.ConnectionError):
        redis_backend.call_with_rule(do, lambda e: None)
    # an error reply is not the rule's business: raised at once, the connection kept
    dropped: list[Exception] = []
    calls, do = _attempts(redis.ResponseError("WRONGTYPE"), b"OK")
    with pytest.raises(redis.ResponseError):
        redis_backend.call_with_rule(do, dropped.append, retry_policy(3))
    assert len(calls) == 1 and dropped == []
