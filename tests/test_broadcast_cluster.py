"""Broadcast acceptance: real processes.

Two "machines" are two ``statekit broadcast jobs:broadcaster`` processes; workers
are processes holding a SharedValue that append every (version, value) they see to
a file. The compute function records each call (its slot, pid, fencing token) in
Redis itself. Everything runs on loopback with a 0.5 s interval and stops itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from statekit.embedded import RedisServer
from statekit.pytest_plugin import wait_for

pytestmark = [pytest.mark.redis]

INTERVAL = 0.5
LEASE = 1.0

JOBS = textwrap.dedent('''
    import os, time
    import redis
    from statekit.broadcast import Broadcaster, current_run

    URL = os.environ["STATEKIT_REDIS_URL"]
    SLEEP = float(os.environ.get("BC_SLEEP", "0"))
    r = redis.Redis.from_url(URL, socket_timeout=2)
    broadcaster = Broadcaster(URL)
    seq = 0

    INTERVAL = float(os.environ.get("BC_INTERVAL", "{interval}"))
    LEASE = float(os.environ.get("BC_LEASE", "{lease}"))

    @broadcaster.every(INTERVAL, name="counter", lease=LEASE, timeout=30)
    def counter():
        global seq
        run = current_run()
        seq += 1
        r.rpush("calls", f"{{run.slot}} {{os.getpid()}} {{run.token}} {{time.time()!r}}")
        if SLEEP:
            r.set("computing", os.getpid())
            time.sleep(SLEEP)
        return {{"seq": seq, "pid": os.getpid(), "slot": run.slot}}
''').format(interval=INTERVAL, lease=LEASE)

WORKER = textwrap.dedent('''
    import json, os, sys, time
    from statekit.broadcast import SharedValue

    sv = SharedValue("counter", default=None, url=os.environ["STATEKIT_REDIS_URL"])
    last = None
    with open(sys.argv[1], "a") as out:
        while True:
            value, version = sv.get(), sv.version
            if (version, value) != last:
                last = (version, value)
                out.write(json.dumps({"version": version, "value": value, "t": time.time()}) + "\\n")
                out.flush()
            time.sleep(0.005)
''')


class Cluster:
    """Processes this test started (and only those), stopped at the end."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        (tmp / "jobs.py").write_text(JOBS)
        (tmp / "worker.py").write_text(WORKER)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "STATEKIT_REDIS_URL": url,
                    "PYTHONPATH": os.pathsep.join([str(tmp), *sys.path])}
        self.redis = redis.Redis.from_url(url, socket_timeout=5)

    def broadcaster(self, **env: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        with open(self.tmp / f"broadcaster-{n}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "statekit", "broadcast", "jobs:broadcaster"],
                env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
            )
        proc.log = self.tmp / f"broadcaster-{n}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def worker(self) -> Path:
        out = self.tmp / f"worker-{len(self.procs)}.jsonl"
        out.touch()
        self.procs.append(subprocess.Popen(
            [sys.executable, str(self.tmp / "worker.py"), str(out)], env=self.env, cwd=self.tmp,
        ))
        return out

    def calls(self) -> list[tuple[int, int, int, float]]:
        out = []
        for raw in self.redis.lrange("calls", 0, -1):
            slot, pid, token, t = raw.decode().split()
            out.append((int(slot), int(pid), int(token), float(t)))
        return out

    def retained(self) -> tuple[int, Any] | None:
        version, data = self.redis.hmget("statekit:bc:{counter}", "version", "data")
        return None if data is None else (int(version), json.loads(data))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def seen(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return rows


def last_seen(path: Path) -> dict[str, Any] | None:
    rows = seen(path)
    return rows[-1] if rows else None


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, redis_url)
    yield c
    c.stop()


def test_two_broadcasters_four_workers_once_per_interval(cluster: Cluster) -> None:
    workers = [cluster.worker() for _ in range(4)]
    b1, b2 = cluster.broadcaster(), cluster.broadcaster()
    wait_for(lambda: len(cluster.calls()) >= 7, what="seven intervals computed")
    for b in (b1, b2):
        b.terminate()
        assert b.wait(10) == 0
    calls = cluster.calls()
    slots = [c[0] for c in calls]
    assert len(slots) == len(set(slots)), f"a slot was computed twice: {calls}"
    assert slots == sorted(slots)
    # once per interval: no slot between the first and the last was skipped
    assert slots == list(range(slots[0], slots[0] + len(slots))), calls
    retained = cluster.retained()
    assert retained is not None
    version, value = retained
    assert version == len(calls)  # every computation was published once
    for out in workers:
        wait_for(lambda out=out: (last_seen(out) or {}).get("version") == version,
                 what=f"worker {out.name} at version {version}")
        assert last_seen(out)["value"] == value  # type: ignore[index]
        versions = [r["version"] for r in seen(out)]
        assert versions == sorted(versions)


def test_sigkill_leader_another_takes_over(cluster: Cluster) -> None:
    worker = cluster.worker()
    b1, b2 = cluster.broadcaster(), cluster.broadcaster()
    wait_for(lambda: len(cluster.calls()) >= 2, what="two computations")
    leader_pid = cluster.calls()[-1][1]
    leader = b1 if b1.pid == leader_pid else b2
    follower = b2 if leader is b1 else b1
    n_before = len(cluster.calls())
    leader.kill()
    killed_at = time.time()
    leader.wait(5)
    taken = wait_for(
        lambda: [c for c in cluster.calls()[n_before:] if c[1] == follower.pid],
        what="the follower computes",
    )
    calls = cluster.calls()
    slots = [c[0] for c in calls]
    assert len(slots) == len(set(slots)), calls
    assert taken[0][2] > calls[n_before - 1][2]  # a newer fencing token
    delay = taken[0][3] - killed_at
    print(f"takeover {delay:.3f}s after SIGKILL (lease {LEASE}s, interval {INTERVAL}s)")
    retained = wait_for(cluster.retained, what="retained value")
    wait_for(lambda: (cluster.retained() or (0, {}))[1].get("pid") == follower.pid, what="new value")
    version = cluster.retained()[0]  # type: ignore[index]
    wait_for(lambda: (last_seen(worker) or {}).get("version", 0) >= version, what="worker updated")
    assert retained


def test_sigstop_old_leader_publish_is_refused(cluster: Cluster) -> None:
    # each computation sleeps 0.3 s after counting: pause the leader inside it
    b1, b2 = cluster.broadcaster(BC_SLEEP="0.3"), cluster.broadcaster(BC_SLEEP="0.3")
    worker = cluster.worker()
    wait_for(lambda: len(cluster.calls()) >= 2, what="two computations")
    cluster.redis.delete("computing")
    old_pid = int(wait_for(lambda: cluster.redis.get("computing"), what="a computation starts"))
    old = b1 if b1.pid == old_pid else b2
    new = b2 if old is b1 else b1
    os.kill(old.pid, signal.SIGSTOP)
    try:
        stopped_calls = len(cluster.calls())
        paused_slot = cluster.calls()[-1][0]
        wait_for(lambda: (cluster.retained() or (0, {}))[1].get("pid") == new.pid,
                 what="the new leader publishes")
    finally:
        os.kill(old.pid, signal.SIGCONT)
    log = old.log  # type: ignore[attr-defined]
    wait_for(lambda: "publish refused" in log.read_text(), what="the old leader's publish refused")
    assert "StaleToken" in log.read_text()
    time.sleep(2 * INTERVAL)
    calls = cluster.calls()
    slots = [c[0] for c in calls]
    assert len(slots) == len(set(slots)), calls
    # the old leader never computed again, and its paused result never became the value
    assert all(c[1] == new.pid for c in calls[stopped_calls:])
    value = cluster.retained()[1]  # type: ignore[index]
    assert value["pid"] == new.pid and value["slot"] != paused_slot
    assert all(r["value"] is None or r["value"]["slot"] != paused_slot or r["value"]["pid"] != old.pid
               for r in seen(worker))


def test_redis_restart_workers_reconnect_and_late_worker_sees_retained(tmp_path: Path) -> None:
    with RedisServer() as srv:
        cluster = Cluster(tmp_path, srv.url)
        try:
            workers = [cluster.worker() for _ in range(4)]
            b = cluster.broadcaster()
            wait_for(lambda: all((last_seen(w) or {}).get("version", 0) >= 2 for w in workers),
                     what="workers at version 2")
            before = max((last_seen(w) or {})["value"]["seq"] for w in workers)
            srv.restart()
            cluster.redis = redis.Redis.from_url(srv.url, socket_timeout=5)
            wait_for(
                lambda: all(((last_seen(w) or {}).get("value") or {}).get("seq", 0) > before + 1
                            for w in workers),
                what="every worker shows values computed after the restart",
            )
            b.terminate()
            assert b.wait(10) == 0
            retained = cluster.retained()
            assert retained is not None
            version, value = retained
            for w in workers:
                wait_for(lambda w=w: (last_seen(w) or {}).get("version") == version, what="fan-out")
            late = cluster.worker()
            first = wait_for(lambda: seen(late), what="late worker's first get")[0]
            assert first["version"] == version and first["value"] == value
        finally:
            cluster.stop()


@pytest.mark.slow
def test_soak_random_leader_kills(cluster: Cluster) -> None:
    """30 s, interval 0.2 s: every ~1.5 s SIGKILL the leader or SIGTERM a follower and
    start a replacement. No slot is ever computed twice; workers end on the last value.

    Runs with ``--soak`` (see conftest.py); the default run has the short SIGKILL test
    above."""
    env = {"BC_INTERVAL": "0.2", "BC_LEASE": "0.6"}
    workers = [cluster.worker() for _ in range(4)]
    live = [cluster.broadcaster(**env) for _ in range(3)]
    rng = random.Random(6)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.5)
        calls = cluster.calls()
        if not calls:
            continue
        leader = [p for p in live if p.pid == calls[-1][1]]
        if leader and rng.random() < 0.7:
            victim = leader[0]
            victim.kill()
        else:
            victim = rng.choice(live)
            victim.terminate()
        victim.wait(10)
        live.remove(victim)
        live.append(cluster.broadcaster(**env))
    for p in live:
        p.terminate()
        p.wait(10)
    calls = cluster.calls()
    slots = [c[0] for c in calls]
    assert len(calls) > 60
    assert len(slots) == len(set(slots)), "a slot was computed twice"
    version = cluster.retained()[0]  # type: ignore[index]
    for out in workers:
        wait_for(lambda out=out: (last_seen(out) or {}).get("version") == version, what="final fan-out")
