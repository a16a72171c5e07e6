"""Broadcast, in one process: what the shipped contract does not cover (the
Redis backend's faults and recovery, fork, the command, memory://'s synchronous
delivery, the package's shape).

The contract suite (statekit.testing.contracts.broadcast) runs in
test_broadcast_contract.py; the multi-process acceptance tests (two broadcasters x
four workers, SIGKILL, SIGSTOP, Redis restart) are in test_broadcast_cluster.py.
"""

from __future__ import annotations

import ast
import multiprocessing
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statekit.broadcast
from statekit.broadcast import Broadcaster, SharedValue, load_broadcaster, state_key
from statekit.broadcast import hub as _hub
from statekit.broadcast import scheduler as _scheduler
from statekit.broadcast import values as _values
from statekit.embedded import RedisBinary, RedisSentinel, RedisServer, find_redis_servers
from statekit.errors import BackendUnavailable, ConfigError, InvalidKey
from statekit.pytest_plugin import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    # each test its own prefix: hubs (one per process and backend) outlive a test
    return "t" + str(abs(hash(request.node.nodeid)) % 10**8)


@pytest.fixture
def broadcasters() -> Iterator[list[Broadcaster]]:
    made: list[Broadcaster] = []
    yield made
    for b in made:
        b.stop(5)


def test_version_and_publish_time_are_exported_as_gauges(redis_url: str, prefix: str) -> None:
    from statekit import metrics

    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("gauged", 1)
    sv = SharedValue("gauged", url=redis_url, key_prefix=prefix)
    sv.get()
    gauges = metrics.snapshot()["broadcast_value"][f"{prefix}:gauged"]
    assert gauges["version"] == 1
    assert gauges["updated_at"] == sv.updated_at
    assert metrics.snapshot()["broadcast"][prefix]["publishes"] == 1


def test_two_values_same_name_one_subscriber(redis_url: str, prefix: str) -> None:
    a = SharedValue("x", url=redis_url, key_prefix=prefix)
    c = SharedValue("x", url=redis_url, key_prefix=prefix)
    a.get(), c.get()
    Broadcaster(redis_url, key_prefix=prefix).publish("x", 7)
    wait_for(lambda: a.get() == 7 and c.get() == 7, what="both copies updated")
    assert a._hub is c._hub  # one hub, so one subscriber thread, per backend in a process
    thread = a._hub._thread
    assert thread is not None and thread.is_alive()
    assert thread.name == "statekit-broadcast-subscriber"
    # other tests' hubs may still be alive in this process; this backend has exactly one
    assert sum(1 for h in _hub._hubs.values() if h is a._hub) == 1


def test_max_age_marks_stale(redis_url: str, prefix: str) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("v", 1)
    sv = SharedValue("v", url=redis_url, key_prefix=prefix, max_age=0.05)
    assert sv.get() == 1
    wait_for(lambda: sv.is_stale, what="stale")


def test_invalid_names_and_options(redis_url: str) -> None:
    with pytest.raises(InvalidKey):
        SharedValue("has space", url=redis_url)
    with pytest.raises(ConfigError):
        SharedValue("ok", url=redis_url, max_age=0)
    b = Broadcaster(redis_url)
    with pytest.raises(ConfigError):
        b.every(0)
    b.every(1, name="dup")(lambda: 1)
    with pytest.raises(ConfigError):
        b.every(1, name="dup")(lambda: 2)
    with pytest.raises(ConfigError):
        SharedValue("x", url="s3://bucket")
    with pytest.raises(ConfigError):
        load_broadcaster("no_colon")
    with pytest.raises(ConfigError):
        load_broadcaster("statekit.broadcast:Job")


def test_no_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATEKIT_REDIS_URL", raising=False)
    monkeypatch.delenv("STATEKIT_BROADCAST_URL", raising=False)
    with pytest.raises(ConfigError, match="STATEKIT_BROADCAST_URL"):
        SharedValue("x")


def test_env_url_is_used(monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str) -> None:
    monkeypatch.setenv("STATEKIT_REDIS_URL", redis_url)
    monkeypatch.setenv("STATEKIT_KEY_PREFIX", prefix)
    Broadcaster().publish("from_env", "yes")
    assert SharedValue("from_env").get() == "yes"


def test_stop_right_after_start_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop() that comes before the started thread runs its loop still stops it."""
    gate = threading.Event()

    class LateThread(threading.Thread):
        def run(self) -> None:
            gate.wait(10)
            super().run()

    b = Broadcaster("memory://late-start")
    b.every(60, name="late")(lambda: 1)
    monkeypatch.setattr(threading, "Thread", LateThread)
    b.start()
    monkeypatch.undo()
    b.stop(0.01)  # the thread has not begun its loop yet
    gate.set()
    wait_for(lambda: not b.running, timeout=10, what="the scheduler thread ended")


def test_compute_error_and_timeout_keep_last_good_value(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster], caplog: pytest.LogCaptureFixture
) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(b)
    b.publish("bad", "good")
    b.publish("slow", "good")
    gate = threading.Event()
    slow_calls: list[int] = []

    def slow() -> str:
        slow_calls.append(1)
        if len(slow_calls) == 1:  # the first computation hangs past its timeout
            gate.wait(10)
            return "late"
        return "fresh"

    b.every(0.1, name="bad")(lambda: 1 / 0)
    b.every(0.1, name="slow", timeout=0.05)(slow)
    b.every(0.1, name="unencodable")(lambda: object())
    b.start()
    wait_for(lambda: b.counters.get("compute_errors") >= 3 and b.counters.get("timeouts") >= 1,
             what="errors and a timeout counted")
    # a hung computation does not block the next intervals
    wait_for(lambda: (b.retained("slow") or (0, ""))[1] == "fresh", what="next interval computes")
    version = b.retained("slow")[0]  # type: ignore[index]
    gate.set()
    wait_for(lambda: b.counters.get("timeouts") >= 1 and not b.jobs["slow"].timed_out, what="late run ends")
    b.stop(5)
    assert b.retained("bad") == (1, "good")
    assert b.retained("slow")[1] == "fresh"  # type: ignore[index]  # the late result was discarded
    assert b.retained("slow")[0] >= version  # type: ignore[index]
    assert b.retained("unencodable") is None
    assert "ZeroDivisionError" in caplog.text


def _subscribed(sv: SharedValue[Any]) -> _hub.Hub:
    """*sv*'s hub, once its subscriber thread is connected (its first re-read done)."""
    hub = sv._hub
    assert hub is not None
    wait_for(hub.connected.is_set, what="subscriber connected")
    return hub


def test_missed_update_is_picked_up_after_reconnect(redis_url: str, prefix: str) -> None:
    sv = SharedValue("resync", default=0, url=redis_url, key_prefix=prefix)
    assert sv.get() == 0
    hub = _subscribed(sv)
    # a value retained without a message: only a re-read after reconnect can find it
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("resync", 1)
    wait_for(lambda: sv.get() == 1, what="first publish")
    client = b.backend.client
    client.hset(state_key(prefix, "resync"), mapping={"version": 2, "data": b"2"})
    assert sv.get() == 1
    resyncs = hub.counters.get("resyncs")
    client.client_kill_filter(_type="pubsub")
    wait_for(lambda: hub.counters.get("resyncs") > resyncs, what="resync after reconnect")
    wait_for(lambda: sv.get() == 2, what="missed update applied")
    assert sv.version == 2


@pytest.mark.parametrize("published", [["one"], ["one", "two", "three"]], ids=["lost", "rolled-back"])
def test_periodic_check_takes_what_redis_retains(redis_url: str, prefix: str, published: list[str]) -> None:
    """The retained value changed without a message reaching the subscriber, while
    the subscription stayed up: a message lost in a failover (a newer version), or
    Redis rolled back to an older snapshot (an older one). The periodic check
    compares versions both ways, takes the retained value, then follows the next
    publishes."""
    b = Broadcaster(redis_url, key_prefix=prefix)
    for v in published:
        b.publish("checked", v)
    sv = SharedValue("checked", url=redis_url, key_prefix=prefix)
    assert sv.get() == published[-1]
    hub = _subscribed(sv)
    b.backend.client.hset(state_key(prefix, "checked"), mapping={"version": 2, "data": b'"two"'})
    hub.check()
    assert sv.get() == "two" and sv.version == 2
    assert hub.counters.get("missed") == 1
    hub.check()  # up to date: nothing fetched
    assert hub.counters.get("missed") == 1
    b.publish("checked", "next")
    wait_for(lambda: sv.get() == "next", what="the publish after it")
    assert sv.version == 3


def test_redis_restart_workers_show_next_value(prefix: str) -> None:
    with RedisServer() as srv:
        b = Broadcaster(srv.url, key_prefix=prefix)
        b.publish("n", 1)
        b.publish("n", 2)
        sv = SharedValue("n", url=srv.url, key_prefix=prefix)
        assert sv.get() == 2
        srv.restart()  # data lost: versions start again
        wait_for(lambda: sv._hub is not None and sv._hub.connected.is_set(), what="reconnected")
        assert sv.get() == 2  # the last good value stays while nothing is retained
        b.publish("n", 3)
        wait_for(lambda: sv.get() == 3, what="value after restart")
        assert sv.version == 1
        late = SharedValue("n", url=srv.url, key_prefix=prefix)
        assert late.get() == 3


def test_redis_restart_from_an_older_snapshot_workers_follow_the_new_versions(prefix: str) -> None:
    """Redis comes back with an older snapshot (a crash between two RDB saves, or a
    failover to a replica that missed the last publishes): the retained version is
    lower than the one a worker shows. The worker takes what Redis retains, and the
    next publishes, instead of ignoring them until the version catches up."""
    with RedisServer() as srv:
        b = Broadcaster(srv.url, key_prefix=prefix)
        b.publish("n", "v1")
        b.publish("n", "v2")
        with srv.client() as r:
            r.save()  # the snapshot holds version 2
        b.publish("n", "v3")
        sv = SharedValue("n", url=srv.url, key_prefix=prefix)
        assert sv.get() == "v3" and sv.version == 3
        srv.restart()  # SIGKILL; the restarted server loads the snapshot
        wait_for(lambda: sv.get() == "v2", what="the retained value after the restart")
        b.publish("n", "v3-new")  # version 3 again
        wait_for(lambda: sv.get() == "v3-new", what="a publish after the restart")
        b.publish("n", "v4")
        wait_for(lambda: sv.get() == "v4", what="the next publish")
        assert sv.version == 4


def _child(url: str, prefix: str, conn: Any) -> None:
    sv = [v for v in _values._values if v.name == "forked"][0]
    b = [x for x in _scheduler._broadcasters if x.prefix == prefix][0]
    report = {"unloaded_at_start": sv._value is _values._UNLOADED, "running": b.running,
              "hubs": len(_hub._hubs)}
    report["value"] = sv.get()
    report["own_hub"] = len(_hub._hubs) == 1
    report["child_publish"] = b.publish("from_child", "hi") == 1  # event-driven publish in a worker
    conn.send(report)
    version = conn.recv()
    wait_for(lambda: sv.version == version, what="child update")
    conn.send(sv.get())


def test_forked_child_starts_its_own_subscriber(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters.append(b)
    b.every(3600, name="hourly")(lambda: 1)
    b.publish("forked", "parent")
    sv = SharedValue("forked", url=redis_url, key_prefix=prefix)
    assert sv.get() == "parent"
    b.start()
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(redis_url, prefix, child_conn))
    proc.start()
    try:
        report = parent_conn.recv()
        assert report == {"unloaded_at_start": True, "running": False, "hubs": 0,
                          "value": "parent", "own_hub": True, "child_publish": True}
        version = b.publish("forked", "update")
        parent_conn.send(version)
        assert parent_conn.poll(10)
        assert parent_conn.recv() == "update"
        wait_for(lambda: sv.get() == "update", what="parent update")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0
    assert b.running


@pytest.mark.sentinel
@pytest.mark.parametrize("binary", find_redis_servers(), ids=lambda b: b.line)
def test_sentinel_failover(binary: RedisBinary, prefix: str) -> None:
    """On every server line: the first publish after the failover reaches the new
    master (a READONLY from the demoted one, wrapped in a script error on Redis 6.2,
    sends the client to the sentinel again), once, and the subscriber follows."""
    setup = RedisSentinel(binary=binary)
    setup.start()
    try:
        with setup.replicas[0].client() as r:  # WAIT may count a replica still syncing (valkey 9)
            wait_for(lambda: r.info("replication").get("master_link_status") == "up", timeout=30,
                     what="the replica synced")
        url = setup.url
        b = Broadcaster(url, key_prefix=prefix)
        first = b.publish("s", 1)
        sv = SharedValue("s", url=url, key_prefix=prefix)
        assert sv.get() == 1
        with setup.master.client() as r:  # the replica has it before we fail over
            assert r.execute_command("WAIT", 1, 5000) == 1
        with setup.replicas[0].client() as r:  # valkey 8.1: WAIT counted it, the data came later
            wait_for(lambda: r.hget(state_key(prefix, "s"), "version") == b"1", timeout=30,
                     what="the replica holds the retained value")
        setup.failover()

        def republish() -> int | None:
            try:
                return b.publish("s", 2)
            except BackendUnavailable:  # refused unapplied by the demoted master
                return None

        assert wait_for(republish, timeout=5, what="publish to the new master") == first + 1
        # by the message, or at the latest by the periodic version check
        wait_for(lambda: sv.get() == 2, timeout=3 * _hub.CHECK_EVERY, what="value after failover")
    finally:
        setup.stop()


def test_cli_reports_bad_targets(capsys: pytest.CaptureFixture[str]) -> None:
    from statekit.cli import main

    assert main(["broadcast", "no.such.module:broadcaster"]) == 1
    assert "cannot import 'no.such.module'" in capsys.readouterr().err
    assert main(["broadcast", "statekit.broadcast:nothing"]) == 1
    assert "has no attribute" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["broadcast", "--help"])
    assert exc.value.code == 0
    assert "module:attribute" in capsys.readouterr().out


def test_subscriber_thread_retires_when_its_values_are_gone(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    monkeypatch.setattr(_hub, "CHECK_EVERY", 0.05)
    sv = SharedValue("gone", url=redis_url, key_prefix=prefix + "r")
    sv.get()
    hub = sv._hub
    assert hub is not None and hub._thread is not None
    thread = hub._thread
    del sv
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
    again = SharedValue("gone", url=redis_url, key_prefix=prefix + "r")  # a new value restarts it
    again.get()
    assert hub._thread is not None and hub._thread.is_alive()




# -- memory:// ------------------------------------------------------------------------


def test_memory_publish_is_seen_before_publish_returns(broadcasters: list[Broadcaster]) -> None:
    """memory:// runs the Redis backend's scripts on the in-process Redis and keeps
    the documented synchronous delivery: publish, then get() shows it at once, on
    every value of the store, and on_change has run."""
    url = "memory://bc-sync"
    b = Broadcaster(url)
    sv = SharedValue("m", default="d", url=url)
    twin = SharedValue("m", url=url)
    seen: list[Any] = []
    twin.on_change(lambda value, version: seen.append(value))
    assert sv.get() == "d"
    assert b.publish("m", {"x": (1, 2)}) == 1
    assert sv.get() == twin.get() == {"x": (1, 2)} and seen == [{"x": (1, 2)}]
    assert b.publish("m", 2) == 2
    assert (sv.get(), sv.version) == (2, 2)
    hub = sv._hub
    assert hub is not None and hub._thread is None  # no subscriber thread on memory://
    assert type(b.backend).__name__ == "MemoryBackend"
    assert b.backend.client.get(state_key("statekit", "m") + ":fence") is None  # type: ignore[attr-defined]


def test_memory_callback_that_publishes_again_does_not_deadlock() -> None:
    url = "memory://bc-reentrant"
    b = Broadcaster(url)
    sv = SharedValue("ping", default=0, url=url)
    echo = SharedValue("pong", default=0, url=url)
    sv.on_change(lambda value, version: b.publish("pong", value * 10))
    b.publish("ping", 4)
    assert echo.get() == 40


def test_memory_callbacks_publishing_across_prefixes_from_two_threads_finish() -> None:
    """Two prefixes (two hubs) of one memory:// store whose callbacks publish to each
    other, from two threads at once: every publish is delivered, none waits for ever."""
    from statekit.pytest_plugin import run_threads

    url = "memory://bc-cross"
    pub = {p: Broadcaster(url, key_prefix=p) for p in ("pa", "pb")}
    x = SharedValue("x", default=0, url=url, key_prefix="pa")
    y = SharedValue("y", default=0, url=url, key_prefix="pb")
    x_echo = SharedValue("echo", default=0, url=url, key_prefix="pb")
    y_echo = SharedValue("echo", default=0, url=url, key_prefix="pa")
    x.on_change(lambda value, version: pub["pb"].publish("echo", value))
    y.on_change(lambda value, version: pub["pa"].publish("echo", value))

    def publish(i: int) -> None:
        for n in range(1, 201):
            pub["pa"].publish("x", n) if i == 0 else pub["pb"].publish("y", n)

    run_threads(publish, 2, timeout=60)
    assert (x.get(), y.get()) == (200, 200)
    assert x_echo.version == y_echo.version == 200


def test_memory_reset_empties_the_store() -> None:
    from statekit.backends import memory

    url = "memory://bc-reset"
    b = Broadcaster(url)
    b.publish("kept", 1)
    assert b.retained("kept") == (1, 1)
    memory.reset()
    assert b.retained("kept") is None
    assert SharedValue("kept", default="gone", url=url).get() == "gone"


# -- the package's shape ----------------------------------------------------------


BROADCAST_MODULES = sorted(
    "statekit.broadcast" + ("" if p.stem == "__init__" else "." + p.stem)
    for p in (Path(statekit.broadcast.__file__).parent).glob("*.py")
)


@pytest.mark.parametrize("module", BROADCAST_MODULES)
def test_each_broadcast_module_imports_alone(module: str) -> None:
    """Each module imports first in a fresh interpreter (an import cycle fails
    there); only the Redis backends (and the asyncio one, built on them) import redis-py."""
    redis_ok = module in ("statekit.broadcast.redis", "statekit.broadcast.memory", "statekit.broadcast.aio")
    code = f"import sys, {module}; assert {redis_ok} or 'redis' not in sys.modules, 'redis-py imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_broadcast_modules_have_no_import_cycle() -> None:
    """The imports between statekit.broadcast's modules (read from their AST) form
    no cycle."""
    package = Path(statekit.broadcast.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        here = "statekit.broadcast" + ("" if path.stem == "__init__" else "." + path.stem)
        base = "statekit.broadcast" if path.stem != "__init__" else here
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    mod = base + ("." + node.module if node.module else "")
                    targets |= {mod} if node.module else {f"{base}.{a.name}" for a in node.names}
                elif node.level == 0 and node.module:
                    targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        edges[here] = {t for t in targets if t.split(".")[:2] == ["statekit", "broadcast"]} - {here}
    assert set(edges) == set(BROADCAST_MODULES)
    for module, targets in edges.items():  # parts import parts, never the package
        assert targets <= set(BROADCAST_MODULES) - {"statekit.broadcast"}, (module, targets)

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])

    for module in edges:
        visit(module, [])


def test_no_hand_written_redis_io_in_broadcast() -> None:
    """Broadcast talks to Redis through redis-py (PubSub, Script, the Redis layer's
    transport): no socket, no RESP parsing of its own."""
    package = Path(statekit.broadcast.__file__).parent
    for path in package.glob("*.py"):
        text = path.read_text()
        for needle in ("import socket", "socket.socket", "sendall(", "recv(", "\\r\\n", "hiredis"):
            assert needle not in text, f"{path.name} contains {needle!r}"


def test_unknown_scheme_names_the_known_ones_and_entry_points_add_one(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from statekit import backends
    from statekit.broadcast.memory import MemoryBackend

    with pytest.raises(ConfigError, match="memory://"):
        Broadcaster("toy://x")

    class ToyBackend(MemoryBackend):
        @classmethod
        def from_url(cls, url: str, *, prefix: str) -> ToyBackend:
            return cls("toy-" + url.partition("://")[2], prefix=prefix)

    class EntryPoint:
        name, value = "toy", "tests_toy_backend:ToyBackend"

    toy = types.ModuleType("tests_toy_backend")
    toy.ToyBackend = ToyBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_toy_backend", toy)
    monkeypatch.setattr(backends, "_entry_points", lambda capability: [EntryPoint()])
    b = Broadcaster("toy://x")
    sv = SharedValue("v", url="toy://x")
    b.publish("v", "from a registered backend")
    assert sv.get() == "from a registered backend"
    assert isinstance(b.backend, ToyBackend)


def test_ready_redis_client(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        b = Broadcaster(client=client, key_prefix=prefix)
        assert b.publish("ready", "client") == 1
        assert SharedValue("ready", client=client, key_prefix=prefix).get() == "client"
        assert b.backend.client is client  # type: ignore[attr-defined]
    finally:
        client.close()


def test_publish_whose_outcome_is_unknown_is_not_sent_again(prefix: str) -> None:
    """A publish to a hung Redis times out as BackendUnavailable; it went out, so it
    is not resent: once Redis answers again the value was applied exactly once."""
    with RedisServer() as srv:
        url = srv.url + "?socket_timeout=0.5"
        b = Broadcaster(url, key_prefix=prefix)
        assert b.publish("once", "first") == 1
        srv.pause()
        try:
            with pytest.raises(BackendUnavailable):
                b.publish("once", "second")
        finally:
            srv.resume()
        wait_for(lambda: b.retained("once") is not None and b.retained("once")[0] == 2,  # type: ignore[index]
                 what="the timed-out publish applied by the resumed server")
        assert b.retained("once") == (2, "second")
        assert b.publish("once", "third") == 3  # applied once: not 4


def test_malformed_message_is_counted_and_skipped(redis_url: str, prefix: str) -> None:
    """A message on a broadcast channel that no publish made (another client's
    PUBLISH) is counted as an error and skipped; the next publish still arrives."""
    b = Broadcaster(redis_url, key_prefix=prefix)
    sv = SharedValue("m", default=0, url=redis_url, key_prefix=prefix)
    assert sv.get() == 0
    hub = _subscribed(sv)
    b.backend.client.publish(f"{prefix}:broadcast:m", b"not a record")  # type: ignore[attr-defined]
    wait_for(lambda: hub.counters.get("errors") == 1, what="the malformed message counted")
    b.publish("m", 5)
    wait_for(lambda: sv.get() == 5, what="the next publish")
    assert hub._thread is not None and hub._thread.is_alive()


def test_memory_malformed_message_does_not_reach_the_publisher() -> None:
    url = "memory://bc-malformed"
    b = Broadcaster(url)
    sv = SharedValue("m", default=0, url=url)
    assert sv.get() == 0
    b.backend.client.publish("statekit:broadcast:m", b"junk")  # type: ignore[attr-defined]
    assert b.publish("m", 7) == 1  # the publish drains the junk first, then its own
    assert sv.get() == 7
    assert sv._hub is not None and sv._hub.counters.get("errors") == 1


def _memory_child(conn: Any) -> None:
    b = Broadcaster("memory://forked-while-publishing")
    sv = SharedValue("n", url="memory://forked-while-publishing")
    sv.get()
    b.publish("n", "from the child")
    conn.send(sv.get())


def test_memory_publish_in_a_child_forked_while_a_parent_thread_delivers() -> None:
    """A child forked while another thread of the parent is inside a memory://
    publish (it holds the delivery registry's lock) publishes and delivers: the
    lock is new in the child, as the hub's are."""
    from statekit.broadcast import memory as _memory

    held, release = threading.Event(), threading.Event()

    def deliver() -> None:  # a publish caught by the fork mid-delivery
        with _memory._ready_lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()
    assert held.wait(10)
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_memory_child, args=(child_conn,))
    try:
        proc.start()
        delivered = parent_conn.recv() if parent_conn.poll(20) else "nothing: the child hung"
    finally:
        release.set()
        thread.join(10)
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # only the child this test started
            proc.join(10)
    assert delivered == "from the child"
    assert proc.exitcode == 0


def test_given_url_and_prefix_ignore_another_capabilitys_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broadcaster and a shared value given their URL and prefix do not read the
    environment: a typo in STATEKIT_BLOBS_URL does not stop them (it still fails
    where the environment is read)."""
    monkeypatch.setenv("STATEKIT_BLOBS_URL", "bogus://typo")
    b = Broadcaster("memory://explicit", key_prefix="explicit")
    sv = SharedValue("n", url="memory://explicit", key_prefix="explicit")
    assert b.publish("n", "shown") == 1
    assert sv.get() == "shown"
    with pytest.raises(ConfigError, match="STATEKIT_BLOBS_URL"):
        Broadcaster("memory://explicit")  # the prefix comes from the environment


@pytest.mark.parametrize(("before", "after"), [(1.0, 60.0), (60.0, 1.0)])
def test_a_job_whose_interval_changes_keeps_computing(
    prefix: str, broadcasters: list[Broadcaster], before: float, after: float
) -> None:
    """A deploy that changes a job's interval (every(1) -> every(60)) keeps it
    computing: the claimed slot kept in the backend is not compared across intervals
    (slot 29,9xx,xxx of 60 s lies before slot 1,79x,xxx,xxx of 1 s, so the job
    computed nothing more, for ever)."""
    url = f"memory://{prefix}"
    first = Broadcaster(url, key_prefix=prefix)
    broadcasters.append(first)
    first.every(before, name="job")(lambda: "before")
    first.start()
    wait_for(lambda: first.retained("job") is not None, what="the first deploy computes")
    first.stop(5)  # releases the lease
    deployed = Broadcaster(url, key_prefix=prefix)
    broadcasters.append(deployed)
    deployed.every(after, name="job")(lambda: "after")
    deployed.run_pending(now=time.time() + 2 * max(before, after))  # a later slot of the new interval
    wait_for(lambda: (deployed.retained("job") or (0, None))[1] == "after", what="the new interval computes")
    assert deployed.counters.get("computes") == 1


def test_memory_reset_also_forgets_the_local_copies() -> None:
    """A shared value made before reset() (an app's module-level value, kept from one
    test to the next) shows its default after it, not the last test's value."""
    from statekit.backends import memory

    url = "memory://bc-reset-copies"
    sv = SharedValue("users", default=0, url=url)
    b = Broadcaster(url)
    b.publish("users", 5)
    assert sv.get() == 5
    memory.reset()
    assert sv.get() == 0 and sv.version == 0
    b.publish("users", 7)
    assert sv.get() == 7 and sv.version == 1
