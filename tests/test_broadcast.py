"""Broadcast, in one process: SharedValue, the subscriber, the scripts, the scheduler.

The multi-process acceptance tests (two broadcasters x four workers, SIGKILL,
SIGSTOP, Redis restart) are in test_broadcast_cluster.py.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from statekit.broadcast import Broadcaster, SharedValue, current_run, load_broadcaster, state_key
from statekit.broadcast import shared as _subscriber
from statekit.embedded import RedisBinary, RedisSentinel, RedisServer, find_redis_servers
from statekit.errors import BackendUnavailable, ConfigError, InvalidKey, StaleToken
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


def test_late_worker_sees_retained_value_on_first_get(redis_url: str, prefix: str) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    assert b.publish("users_count", 41) == 1
    assert b.publish("users_count", 42) == 2
    sv = SharedValue("users_count", default=0, url=redis_url, key_prefix=prefix)
    assert sv.get() == 42
    assert sv.version == 2
    assert sv.age is not None and not sv.is_stale


def test_default_until_published(redis_url: str, prefix: str) -> None:
    sv = SharedValue("nothing_yet", default="n/a", max_age=5, url=redis_url, key_prefix=prefix)
    assert sv.get() == "n/a"
    assert sv.version == 0
    assert sv.updated_at is None and sv.age is None
    assert sv.is_stale


def test_publish_fans_out_to_local_copy(redis_url: str, prefix: str) -> None:
    sv = SharedValue("motd", default=None, url=redis_url, key_prefix=prefix)
    assert sv.get() is None
    b = Broadcaster(redis_url, key_prefix=prefix)
    for i in range(1, 6):
        version = b.publish("motd", {"text": f"hello {i}", "n": (i, i)})
        wait_for(lambda v=version: sv.version == v, what=f"version {version}")
        assert sv.get() == {"text": f"hello {i}", "n": (i, i)}


def test_on_change_callbacks_run_after_each_update(redis_url: str, prefix: str) -> None:
    sv = SharedValue("cb", default=0, url=redis_url, key_prefix=prefix)
    got: list[tuple[Any, int]] = []

    @sv.on_change
    def record(value: Any, version: int) -> None:
        got.append((value, version))
        assert sv.get() == value

    sv.on_change(lambda value, version: 1 / 0)  # a failing callback is logged, not fatal
    _subscribed(sv)
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("cb", "a")
    b.publish("cb", "b")
    wait_for(lambda: len(got) == 2, what="two callbacks")
    assert got == [("a", 1), ("b", 2)]


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
    assert sum(1 for h in _subscriber._hubs.values() if h is a._hub) == 1


def test_max_age_marks_stale(redis_url: str, prefix: str) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("v", 1)
    sv = SharedValue("v", url=redis_url, key_prefix=prefix, max_age=0.05)
    assert sv.get() == 1
    wait_for(lambda: sv.is_stale, what="stale")


def test_stale_token_is_refused_and_changes_nothing(redis_url: str, prefix: str) -> None:
    b = Broadcaster(redis_url, key_prefix=prefix)
    b.publish("fenced", "first")
    client = b._client
    client.set(state_key(prefix, "fenced") + ":fence", 5)
    with pytest.raises(StaleToken):
        b.publish("fenced", "stale", token=4)
    assert b.retained("fenced") == (1, "first")
    assert b.publish("fenced", "current", token=5) == 2
    assert b.retained("fenced") == (2, "current")


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


def test_scheduler_computes_each_slot_once_across_two_broadcasters(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    slots: list[tuple[int, int]] = []
    lock = threading.Lock()
    for i in range(2):
        b = Broadcaster(redis_url, key_prefix=prefix)
        broadcasters.append(b)

        def compute(i: int = i) -> int:
            run = current_run()
            assert run is not None
            with lock:
                slots.append((run.slot, i))
                return len(slots)

        b.every(0.2, name="tick", lease=1.0)(compute)
    sv = SharedValue("tick", default=0, url=redis_url, key_prefix=prefix)
    for b in broadcasters:
        b.start()
        b.start()  # idempotent
    wait_for(lambda: len(slots) >= 6, what="six computations")
    for b in broadcasters:
        b.stop(5)
    assert not any(b.running for b in broadcasters)
    seen = [s for s, _ in slots]
    assert len(seen) == len(set(seen)), slots
    assert sum(b.counters.get("computes") for b in broadcasters) == len(slots)
    final = broadcasters[0].retained("tick")
    assert final is not None
    wait_for(lambda: sv.version == final[0], what="final version seen")
    assert sv.get() == final[1]
    assert current_run() is None


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


def test_stop_releases_the_lease_so_another_takes_over(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    who: list[str] = []
    a = Broadcaster(redis_url, key_prefix=prefix)
    c = Broadcaster(redis_url, key_prefix=prefix)
    broadcasters += [a, c]
    a.every(0.1, name="job", lease=30)(lambda: who.append("a") or "a")
    c.every(0.1, name="job", lease=30)(lambda: who.append("c") or "c")
    a.start()
    wait_for(lambda: "a" in who, what="a computes")
    c.start()
    a.stop(5)
    wait_for(lambda: "c" in who, what="c takes over long before the 30 s lease expires")
    assert c.counters.get("leader_acquired") == 1


def test_paused_leader_publish_is_refused(
    redis_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    release = threading.Event()
    started = threading.Event()
    old = Broadcaster(redis_url, key_prefix=prefix)
    new = Broadcaster(redis_url, key_prefix=prefix)

    def slow() -> str:
        started.set()
        release.wait(10)
        return "old"

    old.every(0.1, name="job", lease=0.2, timeout=30)(slow)
    new.every(0.1, name="job", lease=0.2, timeout=30)(lambda: "new")
    old.run_pending()  # claims and starts computing; then "pauses": no renewals
    assert started.wait(5)
    wait_for(lambda: new.run_pending() and new.retained("job") is not None, what="new leader publishes")
    release.set()
    wait_for(lambda: old.counters.get("stale_tokens") == 1, what="old publish refused")
    assert new.retained("job") == (1, "new")
    assert old.counters.get("publishes") == 0


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


def _subscribed(sv: SharedValue[Any]) -> _subscriber.Hub:
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
    client = b._client
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
    b._client.hset(state_key(prefix, "checked"), mapping={"version": 2, "data": b'"two"'})
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


def test_redis_down_on_first_get_returns_default_then_fills_in(prefix: str) -> None:
    with RedisServer() as srv:
        url = srv.url
        srv.kill()
        sv = SharedValue("later", default="d", url=url, key_prefix=prefix)
        assert sv.get() == "d"
        srv.start()
        Broadcaster(url, key_prefix=prefix).publish("later", "v")
        wait_for(lambda: sv.get() == "v", what="filled in after Redis came back")


def _child(url: str, prefix: str, conn: Any) -> None:
    from statekit import broadcast

    sv = [v for v in _subscriber._values if v.name == "forked"][0]
    b = [x for x in broadcast._broadcasters if x.prefix == prefix][0]
    report = {"unloaded_at_start": sv._value is _subscriber._UNLOADED, "running": b.running,
              "hubs": len(_subscriber._hubs)}
    report["value"] = sv.get()
    report["own_hub"] = len(_subscriber._hubs) == 1
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


@pytest.mark.cluster
def test_redis_cluster(redis_cluster_url: str, prefix: str, broadcasters: list[Broadcaster]) -> None:
    b = Broadcaster(redis_cluster_url, key_prefix=prefix)
    broadcasters.append(b)
    for name in ("a", "b", "c", "users_count"):  # names on different slots
        b.publish(name, name)
    values = {n: SharedValue(n, url=redis_cluster_url, key_prefix=prefix) for n in ("a", "b", "c")}
    assert {n: v.get() for n, v in values.items()} == {"a": "a", "b": "b", "c": "c"}
    b.every(0.1, name="users_count")(lambda: 3)
    sv = SharedValue("users_count", url=redis_cluster_url, key_prefix=prefix)
    b.start()
    wait_for(lambda: sv.get() == 3, what="computed value over the cluster")
    for n in ("a", "b", "c"):
        b.publish(n, n * 2)
    wait_for(lambda: all(v.get() == n * 2 for n, v in values.items()), what="fan-out over the cluster")


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
        setup.failover()

        def republish() -> int | None:
            try:
                return b.publish("s", 2)
            except BackendUnavailable:  # refused unapplied by the demoted master
                return None

        assert wait_for(republish, timeout=5, what="publish to the new master") == first + 1
        # by the message, or at the latest by the periodic version check
        wait_for(lambda: sv.get() == 2, timeout=3 * _subscriber.CHECK_EVERY, what="value after failover")
    finally:
        setup.stop()


def test_memory_backend_same_contract_in_one_process(broadcasters: list[Broadcaster]) -> None:
    url = "memory://bc-test"
    b = Broadcaster(url)
    broadcasters.append(b)
    late_publish = b.publish("m", "retained")
    sv = SharedValue("m", default="d", url=url)
    assert (sv.get(), sv.version) == ("retained", late_publish)
    b.publish("m", {"x": (1, 2)})
    assert sv.get() == {"x": (1, 2)}  # delivered synchronously
    b._client.store.set(state_key("statekit", "m") + ":fence", 9)
    with pytest.raises(StaleToken):
        b.publish("m", "stale", token=3)
    assert b.retained("m") == (2, {"x": (1, 2)})
    other = Broadcaster(url)
    broadcasters.append(other)
    slots: list[int] = []
    for x in (b, other):
        x.every(0.1, name="tick")(lambda: slots.append(current_run().slot) or len(slots))  # type: ignore[union-attr]
    tick = SharedValue("tick", default=0, url=url)
    b.start()
    other.start()
    wait_for(lambda: len(slots) >= 3 and tick.get() >= 3, what="computations over memory://")
    b.stop(5)
    other.stop(5)
    assert len(slots) == len(set(slots))


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

    monkeypatch.setattr(_subscriber, "CHECK_EVERY", 0.05)
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


def test_contract_on_each_server_line(
    redis_line_url: str, prefix: str, broadcasters: list[Broadcaster]
) -> None:
    """The scripts and the subscriber on every supported server line (redis 6.2, valkey 8)."""
    b = Broadcaster(redis_line_url, key_prefix=prefix)
    broadcasters.append(b)
    assert b.publish("line", "a") == 1
    sv = SharedValue("line", url=redis_line_url, key_prefix=prefix)
    assert sv.get() == "a"
    b._client.set(state_key(prefix, "line") + ":fence", 2)
    with pytest.raises(StaleToken):
        b.publish("line", "x", token=1)
    assert b.publish("line", "b", token=2) == 2
    wait_for(lambda: sv.get() == "b", what="fan-out")
    b.every(0.1, name="job", lease=1.0)(lambda: current_run().slot)  # type: ignore[union-attr]
    job = SharedValue("job", url=redis_line_url, key_prefix=prefix)
    b.start()
    wait_for(lambda: job.version >= 2, what="two computations")
    b.stop(5)
    assert b._client.get(state_key(prefix, "job") + ":fence") == b"1"  # one leadership
    assert b._client.get(state_key(prefix, "job") + ":lease") is None  # released on stop
